//! Message templates: handlebars, strict mode, all compiled at startup. MessageML templates
//! (`symphony/…`) escape what they interpolate; WhatsApp text templates (`whatsapp/…`) do not.

use std::path::Path;

use handlebars::Handlebars;
use quick_xml::events::Event;
use serde::Serialize;

/// Every template the bot needs, by name (the file is `<name>.hbs` under the templates folder),
/// with the copy shipped in `templates/` compiled into the binary as the default.
const TEMPLATES: &[(&str, &str)] = &[
    ("symphony/contact_joined", include_str!("../../templates/symphony/contact_joined.hbs")),
    ("symphony/contact_left", include_str!("../../templates/symphony/contact_left.hbs")),
    ("symphony/contact_removed", include_str!("../../templates/symphony/contact_removed.hbs")),
    ("symphony/contacts_invited", include_str!("../../templates/symphony/contacts_invited.hbs")),
    ("symphony/create_form", include_str!("../../templates/symphony/create_form.hbs")),
    ("symphony/delivery_failed", include_str!("../../templates/symphony/delivery_failed.hbs")),
    ("symphony/create_started", include_str!("../../templates/symphony/create_started.hbs")),
    ("symphony/effect_failed", include_str!("../../templates/symphony/effect_failed.hbs")),
    ("symphony/group_failed", include_str!("../../templates/symphony/group_failed.hbs")),
    ("symphony/group_ready", include_str!("../../templates/symphony/group_ready.hbs")),
    ("symphony/group_suspended", include_str!("../../templates/symphony/group_suspended.hbs")),
    ("symphony/help", include_str!("../../templates/symphony/help.hbs")),
    ("symphony/event_failed", include_str!("../../templates/symphony/event_failed.hbs")),
    ("symphony/info", include_str!("../../templates/symphony/info.hbs")),
    ("symphony/intruder_removed", include_str!("../../templates/symphony/intruder_removed.hbs")),
    ("symphony/join_rejected", include_str!("../../templates/symphony/join_rejected.hbs")),
    ("symphony/not_relayed", include_str!("../../templates/symphony/not_relayed.hbs")),
    ("symphony/relayed", include_str!("../../templates/symphony/relayed.hbs")),
    ("symphony/refused", include_str!("../../templates/symphony/refused.hbs")),
    ("symphony/standard_ready", include_str!("../../templates/symphony/standard_ready.hbs")),
    ("symphony/usage", include_str!("../../templates/symphony/usage.hbs")),
    ("whatsapp/advisor_added", include_str!("../../templates/whatsapp/advisor_added.hbs")),
    ("whatsapp/advisor_removed", include_str!("../../templates/whatsapp/advisor_removed.hbs")),
    ("whatsapp/closed", include_str!("../../templates/whatsapp/closed.hbs")),
    ("whatsapp/contact_added", include_str!("../../templates/whatsapp/contact_added.hbs")),
    ("whatsapp/contact_removed", include_str!("../../templates/whatsapp/contact_removed.hbs")),
    ("whatsapp/description", include_str!("../../templates/whatsapp/description.hbs")),
    ("whatsapp/joined", include_str!("../../templates/whatsapp/joined.hbs")),
    ("whatsapp/owner_demoted", include_str!("../../templates/whatsapp/owner_demoted.hbs")),
    ("whatsapp/owner_promoted", include_str!("../../templates/whatsapp/owner_promoted.hbs")),
    ("whatsapp/file_shared", include_str!("../../templates/whatsapp/file_shared.hbs")),
    ("whatsapp/relayed", include_str!("../../templates/whatsapp/relayed.hbs")),
    ("whatsapp/renamed", include_str!("../../templates/whatsapp/renamed.hbs")),
];

/// Sample data for every template, as the bot passes it (see `templates/README.md`):
/// `check-config` renders each template with it, and a template without an entry here fails a
/// unit test. User text carries `&`, `<`, `$` and `#`, so the escaping is exercised too.
const SAMPLE_DATA: &[(&str, &str)] = &[
    (
        "symphony/contact_joined",
        r#"{"phone": "+447911123456", "who": "Dana <Reyes> (+44 7911 123456)"}"#,
    ),
    (
        "symphony/contact_left",
        r#"{"phone": "+447911123456", "who": "Dana Reyes (+44 7911 123456)"}"#,
    ),
    ("symphony/contact_removed", r#"{"phone": "+447911123456", "who": "+447911123456"}"#),
    ("symphony/contacts_invited", r#"{"phones": ["+447911123456", "+447911123457"]}"#),
    (
        "symphony/create_form",
        r#"{"form_id": "wa-create", "errors": ["The name is empty", "\"+44 12\" is not a valid number"], "name": "Deal & Co", "advisors": [10003], "contacts": "+447911123456\n+447911123457", "native": true}"#,
    ),
    (
        "symphony/delivery_failed",
        r##"{"recipient": "the WhatsApp group", "author": "Alice Ng", "excerpt": "Q3 <draft> & #1", "reason": "131047: re-engagement message"}"##,
    ),
    (
        "symphony/create_started",
        r#"{"name": "Deal & Co <team>", "native": false, "reason": "more than 8 WhatsApp contacts: created as a standard group"}"#,
    ),
    (
        "symphony/effect_failed",
        r#"{"what": "rename the room", "reason": "503 Service Unavailable"}"#,
    ),
    ("symphony/group_failed", r#"{"name": "Deal & Co", "reason": "131000: something went wrong"}"#),
    ("symphony/group_ready", r#"{"name": "Deal & Co", "invited": ["+447911123456"]}"#),
    ("symphony/group_suspended", r#"{"name": "Deal & Co <team>", "suspended": true}"#),
    (
        "symphony/help",
        r#"{"commands": [{"name": "help", "usage": "/wa help", "summary": "list the commands"}, {"name": "rename", "usage": "/wa rename \"<name>\"", "summary": "rename the room"}]}"#,
    ),
    (
        "symphony/info",
        r#"{"name": "Deal & Co", "kind": "native", "created": "2025-01-31", "owners": ["Alice Ng"], "advisors": ["Alice Ng", "Bob Smith"], "contacts": [{"phone": "+447911123456", "state": "joined"}, {"phone": "+447911123457", "state": "invited"}], "attachments": [{"name": "Q3 <draft>.pdf", "size": "3.9 KB", "sender": "Alice Ng", "date": "2026-11-24 13:19 UTC"}], "link": "https://chat.whatsapp.com/AbCdEf"}"#,
    ),
    (
        "symphony/event_failed",
        r#"{"what": "a message from Alice & Bob", "attempts": 8, "reason": "template error <x>"}"#,
    ),
    (
        "symphony/intruder_removed",
        r#"{"phone": "+447911123456", "reason": "was removed from this group"}"#,
    ),
    ("symphony/join_rejected", r#"{"phone": "+447911123456", "reason": "not invited"}"#),
    ("symphony/not_relayed", r#"{"reason": "the WhatsApp group is not created yet"}"#),
    (
        "symphony/relayed",
        r#"{"name": "Jane Doe", "phone": "+447911123456", "body": "<b>Hello</b> &amp; welcome", "private": false, "reply": {"author": "Alice Ng", "excerpt": "See you at 5"}}"#,
    ),
    ("symphony/refused", r#"{"reason": "Only room owners may rename the group."}"#),
    (
        "symphony/standard_ready",
        r#"{"name": "Deal & Co", "reason": "more than 8 WhatsApp contacts", "contacts": ["+447911123456"]}"#,
    ),
    (
        "symphony/usage",
        r#"{"problem": "unknown command \"renam\"", "usage": "/wa rename \"<name>\""}"#,
    ),
    ("whatsapp/advisor_added", r#"{"advisor": "Bob Smith"}"#),
    ("whatsapp/advisor_removed", r#"{"advisor": "Bob Smith"}"#),
    ("whatsapp/closed", r#"{"name": "Deal & Co"}"#),
    ("whatsapp/contact_added", r#"{"phone": "+447911123457"}"#),
    ("whatsapp/contact_removed", r#"{"phone": "+447911123457"}"#),
    ("whatsapp/description", r#"{"members": ["Alice Ng", "Bob Smith"]}"#),
    ("whatsapp/joined", r#"{"name": "Deal & Co"}"#),
    ("whatsapp/owner_demoted", r#"{"advisor": "Bob Smith"}"#),
    ("whatsapp/owner_promoted", r#"{"advisor": "Bob Smith"}"#),
    ("whatsapp/file_shared", r#"{"sender": "Alice Ng", "name": "Q3 <draft>.pdf"}"#),
    ("whatsapp/relayed", r#"{"sender": "Alice Ng", "text": "*Q3* numbers attached", "group": ""}"#),
    ("whatsapp/renamed", r#"{"name": "Deal & Co"}"#),
];

/// The names of all templates, for messages.
fn known_names() -> String {
    TEMPLATES.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: file {path} is missing")]
    Missing { name: String, path: String },
    #[error("template {name}: cannot read {path}: {source}")]
    Read { name: String, path: String, source: std::io::Error },
    #[error("template {name} does not compile: {reason}")]
    Compile { name: String, reason: String },
    #[error("template {name} failed to render: {reason}")]
    Render { name: String, reason: String },
    #[error("no template named {0:?}; the templates are: {known}", known = known_names())]
    Unknown(String),
    #[error("template {name}: no sample data to check it with (add it to SAMPLE_DATA)")]
    NoSample { name: String },
    #[error("template {name} renders MessageML the agent would refuse: {reason}")]
    NotMessageMl { name: String, reason: String },
}

pub use crate::markup::escape_message_ml;

/// A strict registry; MessageML ones escape what they interpolate.
fn registry(message_ml: bool) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    if message_ml {
        registry.register_escape_fn(escape_message_ml);
    } else {
        registry.register_escape_fn(handlebars::no_escape);
    }
    registry
}

/// `<dir>/<name>.hbs`.
/// Writes the shipped templates into `dir` (`<dir>/<name>.hbs`), e.g. for a bot process that
/// loads them from a folder.
pub fn write_embedded(dir: &Path) -> std::io::Result<()> {
    for (name, text) in TEMPLATES {
        let path = dir.join(format!("{name}.hbs"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

fn read_template(dir: &Path, name: &str) -> Result<String, TemplateError> {
    let path = dir.join(format!("{name}.hbs"));
    let shown = path.display().to_string();
    std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            TemplateError::Missing { name: name.to_owned(), path: shown }
        }
        _ => TemplateError::Read { name: name.to_owned(), path: shown, source: e },
    })
}

/// Compiles one template on its own and renders it, as [`Templates::render`] would.
fn render_one(name: &str, text: &str, data: &serde_json::Value) -> Result<String, TemplateError> {
    let mut registry = registry(name.starts_with("symphony/"));
    registry
        .register_template_string(name, text)
        .map_err(|e| TemplateError::Compile { name: name.to_owned(), reason: e.to_string() })?;
    registry
        .render(name, data)
        .map(|s| s.trim().to_owned())
        .map_err(|e| TemplateError::Render { name: name.to_owned(), reason: e.to_string() })
}

/// Well-formed XML with one `<messageML>` root, entities XML knows (plus `&nbsp;`, which the
/// agent takes): what the agent parses before anything else.
fn check_message_ml(text: &str) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Eof => break,
            Event::Start(e) => {
                if depth == 0 {
                    roots += 1;
                    if e.name().as_ref() != b"messageML" {
                        return Err(format!(
                            "the root element is <{}>, not <messageML>",
                            String::from_utf8_lossy(e.name().as_ref())
                        ));
                    }
                }
                depth += 1;
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Empty(_) if depth == 0 => return Err("no <messageML> root element".into()),
            Event::Text(t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err("text outside <messageML>".into());
            }
            Event::GeneralRef(r) => {
                let is_char = r.resolve_char_ref().map_err(|e| e.to_string())?.is_some();
                let name = r.decode().map_err(|e| e.to_string())?;
                if !is_char && crate::markup::named_entity(&name).is_none() {
                    return Err(format!("unknown entity &{name};"));
                }
            }
            _ => {}
        }
    }
    match (depth, roots) {
        (0, 1) => Ok(()),
        (0, 0) => Err("no <messageML> root element".into()),
        (0, _) => Err("more than one root element".into()),
        _ => Err("unclosed elements".into()),
    }
}

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    message_ml: Handlebars<'static>,
    whatsapp: Handlebars<'static>,
    /// `/wa help`'s answer, rendered once (it depends on nothing but the templates).
    help: std::sync::OnceLock<String>,
}

impl Templates {
    /// The templates shipped with the bot.
    pub fn embedded() -> Result<Self, TemplateError> {
        Self::build(
            TEMPLATES.iter().map(|(name, text)| Ok(((*name).to_owned(), (*text).to_owned()))),
        )
    }

    /// Loads every template from `dir` (`<dir>/<name>.hbs`); a missing or broken file is an error
    /// naming the template.
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        Self::build(
            TEMPLATES
                .iter()
                .map(|(name, _)| read_template(dir, name).map(|text| ((*name).to_owned(), text))),
        )
    }

    fn build(
        sources: impl Iterator<Item = Result<(String, String), TemplateError>>,
    ) -> Result<Self, TemplateError> {
        let mut message_ml = registry(true);
        let mut whatsapp = registry(false);
        for source in sources {
            let (name, text) = source?;
            let registry =
                if name.starts_with("symphony/") { &mut message_ml } else { &mut whatsapp };
            registry.register_template_string(&name, text).map_err(|e| TemplateError::Compile {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Self { message_ml, whatsapp, help: std::sync::OnceLock::new() })
    }

    /// Renders a template by name (`symphony/help`, `whatsapp/…`).
    pub fn render(&self, name: &str, data: &impl Serialize) -> Result<String, TemplateError> {
        let registry =
            if name.starts_with("symphony/") { &self.message_ml } else { &self.whatsapp };
        if !registry.has_template(name) {
            return Err(TemplateError::Unknown(name.to_owned()));
        }
        registry
            .render(name, data)
            .map(|s| s.trim().to_owned())
            .map_err(|e| TemplateError::Render { name: name.to_owned(), reason: e.to_string() })
    }

    /// Names of all templates.
    pub fn names() -> impl Iterator<Item = &'static str> {
        TEMPLATES.iter().map(|(name, _)| *name)
    }

    /// The sample data a template is checked with (`None` for an unknown name).
    pub fn sample_data(name: &str) -> Option<serde_json::Value> {
        let (_, text) = SAMPLE_DATA.iter().find(|(n, _)| *n == name)?;
        serde_json::from_str(text).ok()
    }

    /// Every problem of the templates in `dir` at once (`check-config`): each file must exist,
    /// compile, render its sample data in strict mode, and (MessageML) be well-formed with a
    /// `<messageML>` root.
    pub fn check_dir(dir: &Path) -> Vec<TemplateError> {
        let mut problems = Vec::new();
        for (name, _) in TEMPLATES {
            let Some(data) = Self::sample_data(name) else {
                problems.push(TemplateError::NoSample { name: (*name).to_owned() });
                continue;
            };
            let checked = read_template(dir, name)
                .and_then(|text| render_one(name, &text, &data))
                .and_then(|out| {
                    if !name.starts_with("symphony/") {
                        return Ok(());
                    }
                    check_message_ml(&out).map_err(|reason| TemplateError::NotMessageMl {
                        name: (*name).to_owned(),
                        reason,
                    })
                });
            if let Err(e) = checked {
                problems.push(e);
            }
        }
        problems
    }

    /// Renders one template of `dir` with `data`, the other templates untouched (`render`):
    /// a preview of an edit before the bot loads the folder.
    pub fn preview(
        dir: &Path,
        name: &str,
        data: &serde_json::Value,
    ) -> Result<String, TemplateError> {
        if !TEMPLATES.iter().any(|(n, _)| *n == name) {
            return Err(TemplateError::Unknown(name.to_owned()));
        }
        render_one(name, &read_template(dir, name)?, data)
    }

    /// `/wa help`: `commands` is the command table, `(name, usage, summary)` each. Rendered
    /// once and kept (the table and the template do not change while the bot runs).
    pub fn help(&self, commands: &[(&str, &str, &str)]) -> Result<String, TemplateError> {
        if let Some(help) = self.help.get() {
            return Ok(help.clone());
        }
        let commands: Vec<_> = commands
            .iter()
            .map(|(name, usage, summary)| serde_json::json!({"name": name, "usage": usage, "summary": summary}))
            .collect();
        let help = self.render("symphony/help", &serde_json::json!({ "commands": commands }))?;
        Ok(self.help.get_or_init(|| help).clone())
    }

    /// A bad-command reply: the problem and the usage line, as MessageML.
    pub fn usage(&self, problem: &str, usage: &str) -> Result<String, TemplateError> {
        self.render("symphony/usage", &serde_json::json!({ "problem": problem, "usage": usage }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_templates_compile_and_escape_user_text() {
        let t = Templates::embedded().expect("compile");
        let help = t.help(crate::commands::COMMANDS).expect("help");
        assert!(help.starts_with("<messageML>") && help.contains("/wa rename"), "{help}");
        let usage = t.usage("bad <b>name</b> & ${x}", "/wa rename \"<name>\"").expect("usage");
        assert!(usage.contains("bad &lt;b&gt;name&lt;/b&gt; &amp; &#36;{x}"), "{usage}");
        assert!(!usage.contains("<name>"), "{usage}");
    }

    #[test]
    fn the_folder_on_disk_matches_the_embedded_copy() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        Templates::load(&dir).expect("shipped folder loads");
    }

    #[test]
    fn missing_and_broken_templates_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in TEMPLATES {
            let path = dir.path().join(format!("{name}.hbs"));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        Templates::load(dir.path()).expect("a full copy loads");
        std::fs::remove_file(dir.path().join("symphony/usage.hbs")).expect("remove");
        let err = Templates::load(dir.path()).expect_err("missing");
        assert!(
            err.to_string().contains("symphony/usage") && err.to_string().contains("missing"),
            "{err}"
        );
        std::fs::write(dir.path().join("symphony/usage.hbs"), "ok").expect("write");
        std::fs::write(dir.path().join("symphony/help.hbs"), "{{#each}}").expect("write");
        let err = Templates::load(dir.path()).expect_err("broken");
        assert!(err.to_string().contains("symphony/help does not compile"), "{err}");
    }

    #[test]
    fn every_template_has_sample_data_and_every_sample_a_template() {
        for name in Templates::names() {
            let data = Templates::sample_data(name)
                .unwrap_or_else(|| panic!("{name}: no (valid JSON) sample data in SAMPLE_DATA"));
            assert!(data.is_object(), "{name}: sample data is an object");
        }
        for (name, _) in SAMPLE_DATA {
            assert!(Templates::names().any(|n| n == *name), "sample data for unknown {name}");
        }
    }

    #[test]
    fn the_shipped_templates_render_their_samples_as_valid_message_ml() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let problems: Vec<String> =
            Templates::check_dir(&dir).iter().map(ToString::to_string).collect();
        assert!(problems.is_empty(), "{problems:#?}");
        let out = Templates::preview(
            &dir,
            "symphony/group_ready",
            &Templates::sample_data("symphony/group_ready").expect("sample"),
        )
        .expect("renders");
        assert!(out.contains("<b>Deal &amp; Co</b>") && out.contains("+447911123456"), "{out}");
    }

    fn copy_of_shipped(dir: &Path) {
        for (name, text) in TEMPLATES {
            let path = dir.join(format!("{name}.hbs"));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
    }

    #[test]
    fn every_template_problem_is_listed_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_of_shipped(dir.path());
        let d = dir.path();
        std::fs::remove_file(d.join("symphony/usage.hbs")).expect("remove");
        std::fs::write(d.join("symphony/help.hbs"), "<messageML>{{#each commands}}</messageML>")
            .expect("write");
        std::fs::write(d.join("symphony/refused.hbs"), "<messageML>{{reasn}}</messageML>")
            .expect("write");
        std::fs::write(d.join("symphony/info.hbs"), "<messageML><p>{{name}}</messageML>")
            .expect("write");
        std::fs::write(d.join("symphony/contact_left.hbs"), "<p>{{phone}} left</p>")
            .expect("write");
        std::fs::write(d.join("whatsapp/renamed.hbs"), "Now {{nme}}").expect("write");
        let problems: Vec<String> =
            Templates::check_dir(d).iter().map(ToString::to_string).collect();
        let text = problems.join("\n");
        for expected in [
            "template symphony/usage: file",
            "template symphony/help does not compile",
            "template symphony/refused failed to render",
            "template symphony/info renders MessageML the agent would refuse",
            "template symphony/contact_left renders MessageML the agent would refuse: the root element is <p>",
            "template whatsapp/renamed failed to render",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(problems.len(), 6, "{text}");
    }

    #[test]
    fn a_preview_names_unknown_templates_and_missing_fields() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let err =
            Templates::preview(&dir, "symphony/nope", &serde_json::json!({})).expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("\"symphony/nope\"") && text.contains("symphony/help, "), "{text}");
        let err = Templates::preview(&dir, "whatsapp/renamed", &serde_json::json!({"title": "x"}))
            .expect_err("strict");
        assert!(err.to_string().contains("whatsapp/renamed failed to render"), "{err}");
        let out =
            Templates::preview(&dir, "whatsapp/renamed", &serde_json::json!({"name": "A & B"}))
                .expect("renders");
        assert_eq!(out, "The group is now called \"A & B\".", "WhatsApp text is not escaped");
    }

    #[test]
    fn strict_mode_refuses_missing_fields() {
        let t = Templates::embedded().expect("compile");
        let err =
            t.render("symphony/usage", &serde_json::json!({"problem": "x"})).expect_err("strict");
        assert!(err.to_string().contains("symphony/usage"), "{err}");
    }
}
