//! The `/wa create` form (Symphony Elements): what it shows and how a submission becomes the
//! same create request as the command, or the list of every problem with it. Pure.
//!
//! The shape of a submission (`formValues` of `SYMPHONYELEMENTSACTION`) follows the Symphony
//! developer docs (symphony-developers-documentation, `symphony-elements/available-elements/`):
//! `action` is the name of the button pressed; a text field or text area arrives as a string
//! (its default text when untouched); a person selector as an array of user ids (numbers,
//! `long`); a checkbox as its `value` when checked and not at all when unchecked.

use serde_json::{Value, json};

use super::parser::{NUMBER_HINT, checked_name, push_number};
use crate::domain::{E164, UserId};
use crate::templates::{TemplateError, Templates};

/// The id of the bot's create form: a submission of any other form is not a create.
pub const CREATE_FORM_ID: &str = "wa-groups-bot-create";
/// The names of the form's fields and of its button.
pub const NAME_FIELD: &str = "name";
pub const ADVISORS_FIELD: &str = "advisors";
pub const CONTACTS_FIELD: &str = "contacts";
pub const NATIVE_FIELD: &str = "native";
pub const CREATE_BUTTON: &str = "create";

/// A text field holds at most 128 characters, counted by the agent in UTF-16 units; a longer
/// default text makes it refuse the whole message (finos/messageml-utils `TextField`).
const TEXT_FIELD_MAX_UNITS: usize = 128;

/// What was submitted, as typed: shown again, with the problems, when it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateForm {
    pub name: String,
    pub advisors: Vec<UserId>,
    /// The contacts text area: numbers separated by new lines, commas or semicolons.
    pub contacts: String,
    /// "Create as native WhatsApp group".
    pub native: bool,
}

impl Default for CreateForm {
    /// The empty form: nothing typed, native checked.
    fn default() -> Self {
        Self { name: String::new(), advisors: Vec::new(), contacts: String::new(), native: true }
    }
}

/// A valid submission: the same request as `/wa create "<name>" @advisor… +E164… [--standard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub name: String,
    pub advisors: Vec<UserId>,
    pub contacts: Vec<E164>,
    pub standard: bool,
}

/// One thing wrong with a submission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormProblem {
    /// The name breaks the rule every command applies (empty, too long).
    #[error("{0}")]
    Name(String),
    #[error("not a valid WhatsApp number ({NUMBER_HINT}): {0:?}")]
    BadNumber(String),
    #[error("the advisors are not a list of Symphony users")]
    BadAdvisors,
    #[error("the field {0:?} is not text")]
    NotText(&'static str),
}

/// A submission that cannot be used: what was typed and every problem with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidForm {
    pub submitted: CreateForm,
    pub problems: Vec<FormProblem>,
}

/// Whether an Elements submission is the create form's Create button. A missing `action` is
/// accepted: the form has no other button.
pub fn is_create_submission(form_id: &str, values: &Value) -> bool {
    form_id == CREATE_FORM_ID
        && values.get("action").and_then(Value::as_str).is_none_or(|a| a == CREATE_BUTTON)
}

/// Turns `formValues` into the create request, or says everything that is wrong at once.
pub fn parse_create_form(values: &Value) -> Result<CreateRequest, InvalidForm> {
    let mut problems = Vec::new();
    let mut text = |field: &'static str| match values.get(field) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            problems.push(FormProblem::NotText(field));
            String::new()
        }
    };
    let raw_name = text(NAME_FIELD);
    let contacts_text = text(CONTACTS_FIELD);
    let advisors = match read_user_ids(values.get(ADVISORS_FIELD)) {
        Some(ids) => ids,
        None => {
            problems.push(FormProblem::BadAdvisors);
            Vec::new()
        }
    };
    let native = !matches!(values.get(NATIVE_FIELD), None | Some(Value::Null | Value::Bool(false)));
    let name = checked_name(&raw_name).map_err(|p| problems.push(FormProblem::Name(p))).ok();
    let (contacts, bad) = read_numbers(&contacts_text);
    problems.extend(bad.into_iter().map(FormProblem::BadNumber));
    let submitted = CreateForm { name: raw_name, advisors, contacts: contacts_text, native };
    match name {
        Some(name) if problems.is_empty() => {
            Ok(CreateRequest { name, advisors: submitted.advisors, contacts, standard: !native })
        }
        _ => Err(InvalidForm { submitted, problems }),
    }
}

/// A person selector's value: user ids as numbers (numeric strings tolerated), duplicates
/// folded. `None` when it is not a list of ids.
fn read_user_ids(value: Option<&Value>) -> Option<Vec<UserId>> {
    let items = match value {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return None,
    };
    let mut ids = Vec::new();
    for item in items {
        let id = match item {
            Value::Number(n) => n.as_i64()?,
            Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        if !ids.contains(&UserId(id)) {
            ids.push(UserId(id));
        }
    }
    Some(ids)
}

/// The contacts text area: entries separated by new lines, commas or semicolons; an entry is
/// one number (spaces allowed inside, as people write them) or several separated by spaces.
/// Returns the numbers (duplicates folded, order kept) and the entries that are not numbers.
fn read_numbers(text: &str) -> (Vec<E164>, Vec<String>) {
    let mut numbers = Vec::new();
    let mut bad = Vec::new();
    for entry in text.split(['\n', '\r', ',', ';']).map(str::trim).filter(|e| !e.is_empty()) {
        if let Ok(n) = E164::parse(entry) {
            push_number(&mut numbers, n);
            continue;
        }
        let words: Result<Vec<E164>, _> = entry.split_whitespace().map(E164::parse).collect();
        match words {
            Ok(found) if found.len() > 1 => {
                found.into_iter().for_each(|n| push_number(&mut numbers, n))
            }
            _ => bad.push(entry.to_owned()),
        }
    }
    (numbers, bad)
}

/// The form as MessageML: empty (`CreateForm::default()`, no problems) or shown again with the
/// problems above the fields and what was typed kept.
pub fn render_create_form(
    templates: &Templates,
    form: &CreateForm,
    problems: &[FormProblem],
) -> Result<String, TemplateError> {
    let errors: Vec<String> = problems.iter().map(ToString::to_string).collect();
    templates.render(
        "symphony/create_form",
        &json!({
            "form_id": CREATE_FORM_ID,
            "errors": errors,
            "name": fit_text_field(&form.name),
            "advisors": form.advisors.iter().map(|a| a.0).collect::<Vec<_>>(),
            "contacts": form.contacts,
            "native": form.native,
        }),
    )
}

/// The longest prefix of `text` that a text field accepts as its default text.
fn fit_text_field(text: &str) -> String {
    let mut units = 0;
    text.chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= TEXT_FIELD_MAX_UNITS
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> E164 {
        E164::parse(s).expect("valid number")
    }

    #[test]
    fn a_good_submission_is_the_command_s_request() {
        let cases = [
            (
                json!({"action": "create", "name": " Deal team ", "advisors": [42, 43, 42],
                       "contacts": "+447911123456\n447911123457, +44 7911 123458;+447911123456",
                       "native": "on"}),
                CreateRequest {
                    name: "Deal team".into(),
                    advisors: vec![UserId(42), UserId(43)],
                    contacts: vec![n("+447911123456"), n("+447911123457"), n("+447911123458")],
                    standard: false,
                },
            ),
            // An unchecked box is absent: a standard group. Ids as strings are tolerated.
            (
                json!({"action": "create", "name": "Solo", "advisors": ["42"], "contacts": ""}),
                CreateRequest {
                    name: "Solo".into(),
                    advisors: vec![UserId(42)],
                    contacts: vec![],
                    standard: true,
                },
            ),
            // Several numbers on one line, separated by spaces.
            (
                json!({"name": "Pair", "contacts": "+447911123456 +447911123457", "native": "true"}),
                CreateRequest {
                    name: "Pair".into(),
                    advisors: vec![],
                    contacts: vec![n("+447911123456"), n("+447911123457")],
                    standard: false,
                },
            ),
        ];
        for (values, expected) in cases {
            assert_eq!(parse_create_form(&values), Ok(expected), "{values}");
        }
    }

    #[test]
    fn every_problem_is_listed_and_what_was_typed_is_kept() {
        let values = json!({"action": "create", "name": "   ", "advisors": [42],
                            "contacts": "+447911123456\nnot-a-number\n+12", "native": "on"});
        let invalid = parse_create_form(&values).expect_err("invalid");
        let shown: Vec<String> = invalid.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "the name is empty".to_owned(),
                format!("not a valid WhatsApp number ({NUMBER_HINT}): \"not-a-number\""),
                format!("not a valid WhatsApp number ({NUMBER_HINT}): \"+12\""),
            ]
        );
        assert_eq!(
            invalid.submitted,
            CreateForm {
                name: "   ".into(),
                advisors: vec![UserId(42)],
                contacts: "+447911123456\nnot-a-number\n+12".into(),
                native: true,
            }
        );

        let long = "é".repeat(129);
        let invalid = parse_create_form(&json!({"name": long})).expect_err("too long");
        assert_eq!(
            invalid.problems,
            vec![FormProblem::Name("the name has 129 characters; at most 128 are allowed".into())]
        );
        assert!(!invalid.submitted.native, "an absent checkbox is unchecked");

        let invalid = parse_create_form(&json!({"name": ["x"], "advisors": "bob", "contacts": 7}))
            .expect_err("wrong shapes");
        assert_eq!(
            invalid.problems,
            vec![
                FormProblem::NotText("name"),
                FormProblem::NotText("contacts"),
                FormProblem::BadAdvisors,
                FormProblem::Name("the name is empty".into()),
            ]
        );
        for advisors in [json!([1.5]), json!([true]), json!(["abc"])] {
            let invalid =
                parse_create_form(&json!({"name": "x", "advisors": advisors})).expect_err("ids");
            assert_eq!(invalid.problems, vec![FormProblem::BadAdvisors], "{advisors}");
        }
    }

    #[test]
    fn only_the_create_button_of_the_create_form_is_a_create() {
        assert!(is_create_submission(CREATE_FORM_ID, &json!({"action": "create"})));
        assert!(is_create_submission(CREATE_FORM_ID, &json!({})));
        assert!(!is_create_submission(CREATE_FORM_ID, &json!({"action": "cancel"})));
        assert!(!is_create_submission("poll", &json!({"action": "create"})));
    }

    #[test]
    fn the_form_renders_empty_and_again_with_problems_and_values() {
        let t = Templates::embedded().expect("templates");
        let empty = render_create_form(&t, &CreateForm::default(), &[]).expect("render");
        assert!(empty.contains(&format!("<form id=\"{CREATE_FORM_ID}\">")), "{empty}");
        assert!(
            empty.contains("<checkbox name=\"native\" value=\"on\" checked=\"true\">"),
            "{empty}"
        );
        assert!(!empty.contains("value=\"[") && !empty.contains("<li>"), "{empty}");

        let again = CreateForm {
            name: format!("<b>{}</b>", "x".repeat(200)),
            advisors: vec![UserId(42), UserId(43)],
            contacts: "+447911123456\n$bad".into(),
            native: false,
        };
        let problems =
            [FormProblem::BadNumber("$bad".into()), FormProblem::Name("too <long>".into())];
        let ml = render_create_form(&t, &again, &problems).expect("render");
        assert!(ml.contains("<li>too &lt;long&gt;</li>"), "{ml}");
        assert!(ml.contains("&quot;&#36;bad&quot;"), "{ml}");
        assert!(ml.contains("value=\"[42,43]\""), "{ml}");
        assert!(ml.contains(">+447911123456\n&#36;bad</textarea>"), "{ml}");
        assert!(!ml.contains("checked=\"true\""), "{ml}");
        // The name is cut to what a text field accepts, escaped.
        let expected = format!(">&lt;b&gt;{}</text-field>", "x".repeat(125));
        assert!(ml.contains(&expected), "{ml}");
    }

    #[test]
    fn a_default_text_fits_the_agent_s_utf16_count() {
        assert_eq!(fit_text_field(&"a".repeat(130)).len(), 128);
        // Each of these takes two UTF-16 units.
        assert_eq!(fit_text_field(&"😀".repeat(100)).chars().count(), 64);
        assert_eq!(fit_text_field("short"), "short");
    }
}
