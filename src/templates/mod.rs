//! Message templates: handlebars, strict mode, all compiled at startup. MessageML templates
//! (`symphony/…`) escape what they interpolate; WhatsApp text templates (`whatsapp/…`) do not.

use std::path::Path;

use handlebars::Handlebars;
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
    ("symphony/help", include_str!("../../templates/symphony/help.hbs")),
    ("symphony/info", include_str!("../../templates/symphony/info.hbs")),
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
    #[error("no template named {0}")]
    Unknown(String),
}

/// Escapes text for MessageML: XML's five characters, plus `$` and `#`, which would otherwise
/// start FreeMarker expressions (`${…}`, `#{…}`) when the agent renders the message.
pub fn escape_message_ml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '$' => out.push_str("&#36;"),
            '#' => out.push_str("&#35;"),
            _ => out.push(c),
        }
    }
    out
}

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    message_ml: Handlebars<'static>,
    whatsapp: Handlebars<'static>,
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
        Self::build(TEMPLATES.iter().map(|(name, _)| {
            let path = dir.join(format!("{name}.hbs"));
            let shown = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(((*name).to_owned(), text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(TemplateError::Missing { name: (*name).to_owned(), path: shown })
                }
                Err(source) => {
                    Err(TemplateError::Read { name: (*name).to_owned(), path: shown, source })
                }
            }
        }))
    }

    fn build(
        sources: impl Iterator<Item = Result<(String, String), TemplateError>>,
    ) -> Result<Self, TemplateError> {
        let mut message_ml = Handlebars::new();
        message_ml.set_strict_mode(true);
        message_ml.register_escape_fn(escape_message_ml);
        let mut whatsapp = Handlebars::new();
        whatsapp.set_strict_mode(true);
        whatsapp.register_escape_fn(handlebars::no_escape);
        for source in sources {
            let (name, text) = source?;
            let registry =
                if name.starts_with("symphony/") { &mut message_ml } else { &mut whatsapp };
            registry.register_template_string(&name, text).map_err(|e| TemplateError::Compile {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Self { message_ml, whatsapp })
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

    /// `/wa help` as MessageML.
    pub fn help(&self) -> Result<String, TemplateError> {
        let commands: Vec<_> = crate::commands::COMMANDS
            .iter()
            .map(|(name, usage, summary)| serde_json::json!({"name": name, "usage": usage, "summary": summary}))
            .collect();
        self.render("symphony/help", &serde_json::json!({ "commands": commands }))
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
        let help = t.help().expect("help");
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
    fn strict_mode_refuses_missing_fields() {
        let t = Templates::embedded().expect("compile");
        let err =
            t.render("symphony/usage", &serde_json::json!({"problem": "x"})).expect_err("strict");
        assert!(err.to_string().contains("symphony/usage"), "{err}");
    }
}
