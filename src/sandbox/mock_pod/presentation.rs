//! MessageML → PresentationML + EntityJSON, as the real agent renders a message it accepts,
//! Symphony Elements forms included (and what each form sends when submitted).
//!
//! Elements are rendered as `finos/messageml-utils` (the agent's own parser) does: a text field
//! becomes `<input type="text">`, a person selector `<div class="person-selector">`, a checkbox
//! `<div class="checkbox-group"><input type="checkbox">…`, and a `label`/`title` wraps its
//! element in `<div class="…-group" data-generated="true">` with a `<label for>` and an
//! `info-hint`. Its validation messages are kept word for word.

use std::collections::HashMap;

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use serde_json::{Value, json};

/// A rendered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// `<div data-format="PresentationML" data-version="2.0">…</div>`
    pub presentation_ml: String,
    /// EntityJSON (mentions added to whatever `data` the sender gave).
    pub data: Value,
    /// Plain text (mentions as `@Display Name`).
    pub text: String,
    /// The Elements forms of the message: what each one sends when submitted.
    pub(crate) forms: Vec<FormSpec>,
}

/// An Elements form as the client shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FormSpec {
    pub id: String,
    pub fields: Vec<FormField>,
    /// The names of its action buttons, in order.
    pub actions: Vec<String>,
}

/// One input of a form.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FormField {
    pub name: String,
    pub kind: FieldKind,
    /// The client refuses to submit the form while it is empty.
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum FieldKind {
    /// A text field or a text area, with its default text (sent when left untouched) and the
    /// most UTF-16 units the client lets a person type.
    Text { initial: String, max_units: Option<usize> },
    /// A person selector, with its preselected user ids.
    People { initial: Vec<i64> },
    /// A checkbox: sends `value` when checked, nothing when not.
    Checkbox { value: String, checked: bool },
}

/// The Elements that may only appear inside a `<form>`.
const FORM_ELEMENTS: &[&str] = &["text-field", "textarea", "person-selector", "checkbox", "button"];

/// Renders MessageML. `display_name` resolves a mentioned user id (None: unknown user → error).
pub fn render(
    message_ml: &str,
    data: Option<&str>,
    display_name: &dyn Fn(i64) -> Option<String>,
) -> Result<Rendered, String> {
    let mut entity: serde_json::Map<String, Value> = match data {
        Some(d) if !d.trim().is_empty() => match serde_json::from_str(d) {
            Ok(Value::Object(map)) => map,
            _ => return Err("data is not a JSON object".into()),
        },
        _ => serde_json::Map::new(),
    };
    let mut reader = Reader::from_str(message_ml.trim());
    reader.config_mut().trim_text(false);
    let mut writer = Writer::new(Vec::new());
    let mut text = String::new();
    let mut depth = 0usize;
    let mut saw_root = false;
    let mut mention_no = 0usize;
    let open_root = |w: &mut Writer<Vec<u8>>| {
        let mut div = BytesStart::new("div");
        div.push_attribute(("data-format", "PresentationML"));
        div.push_attribute(("data-version", "2.0"));
        w.write_event(Event::Start(div))
    };
    let mention =
        |e: &BytesStart<'_>, no: &mut usize, entity: &mut serde_json::Map<String, Value>| {
            let uid = e
                .try_get_attribute("uid")
                .ok()
                .flatten()
                .and_then(|a| {
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .ok()
                        .and_then(|v| v.trim().parse::<i64>().ok())
                })
                .ok_or_else(|| "<mention> needs a numeric uid".to_owned())?;
            let name = display_name(uid)
                .ok_or_else(|| format!("<mention uid=\"{uid}\"/>: no such user"))?;
            *no += 1;
            let key = format!("mention{no}");
            entity.insert(
                key.clone(),
                json!({"type": "com.symphony.user.mention", "version": "1.0",
                   "id": [{"type": "com.symphony.user.userId", "value": uid.to_string()}]}),
            );
            Ok::<_, String>((key, format!("@{name}")))
        };
    // The form being rendered, and the depth it opened at.
    let mut form: Option<(usize, FormSpec)> = None;
    let mut forms = Vec::new();
    loop {
        let event = reader.read_event().map_err(|e| format!("invalid MessageML: {e}"))?;
        match event {
            Event::Eof => break,
            Event::Start(e) => {
                let name = e.name().as_ref().to_vec();
                if depth == 0 {
                    if name != b"messageML" {
                        return Err("MessageML must be wrapped in <messageML>".into());
                    }
                    saw_root = true;
                    open_root(&mut writer).map_err(|e| e.to_string())?;
                } else if name == b"mention" {
                    return Err("<mention> must be empty: <mention uid=\"…\"/>".into());
                } else if name == b"form" {
                    form = Some((depth, open_form(&e, form.is_some(), &mut writer)?));
                } else if let Some(tag) = form_element(&name) {
                    let content = text_content(&mut reader, tag)?;
                    element(
                        tag,
                        &e,
                        &content,
                        form.as_mut().map(|(_, f)| f),
                        &mut writer,
                        &mut text,
                    )?;
                    continue; // its end tag is consumed: the depth is unchanged
                } else {
                    writer.write_event(Event::Start(e.into_owned())).map_err(|e| e.to_string())?;
                    if matches!(name.as_slice(), b"p" | b"div" | b"li" | b"tr")
                        && !text.is_empty()
                        && !text.ends_with('\n')
                    {
                        text.push('\n');
                    }
                }
                depth += 1;
            }
            Event::End(e) => {
                depth = depth.checked_sub(1).ok_or("unbalanced MessageML")?;
                if depth == 0 {
                    writer
                        .write_event(Event::End(BytesEnd::new("div")))
                        .map_err(|e| e.to_string())?;
                } else {
                    if let Some((_, spec)) = form.take_if(|(at, _)| *at == depth) {
                        if spec.actions.is_empty() {
                            return Err(format!(
                                "The form with id '{}' should have at least one action button",
                                spec.id
                            ));
                        }
                        forms.push(spec);
                    }
                    writer.write_event(Event::End(e.into_owned())).map_err(|e| e.to_string())?;
                }
            }
            Event::Empty(e) => {
                if depth == 0 {
                    if e.name().as_ref() != b"messageML" {
                        return Err("MessageML must be wrapped in <messageML>".into());
                    }
                    saw_root = true;
                    open_root(&mut writer).map_err(|e| e.to_string())?;
                    writer
                        .write_event(Event::End(BytesEnd::new("div")))
                        .map_err(|e| e.to_string())?;
                } else if e.name().as_ref() == b"mention" {
                    let (key, shown) = mention(&e, &mut mention_no, &mut entity)?;
                    let mut span = BytesStart::new("span");
                    span.push_attribute(("class", "entity"));
                    span.push_attribute(("data-entity-id", key.as_str()));
                    writer.write_event(Event::Start(span)).map_err(|e| e.to_string())?;
                    writer
                        .write_event(Event::Text(BytesText::new(&shown)))
                        .map_err(|e| e.to_string())?;
                    writer
                        .write_event(Event::End(BytesEnd::new("span")))
                        .map_err(|e| e.to_string())?;
                    text.push_str(&shown);
                } else if e.name().as_ref() == b"form" {
                    let spec = open_form(&e, form.is_some(), &mut writer)?;
                    return Err(format!(
                        "The form with id '{}' should have at least one action button",
                        spec.id
                    ));
                } else if let Some(tag) = form_element(e.name().as_ref()) {
                    element(tag, &e, "", form.as_mut().map(|(_, f)| f), &mut writer, &mut text)?;
                } else if e.name().as_ref() == b"a" {
                    // A link without text shows its address, as the agent renders it
                    // (`<a href="u"/>` → `<a href="u">u</a>`).
                    let href = e
                        .try_get_attribute("href")
                        .ok()
                        .flatten()
                        .and_then(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .ok()
                                .map(|v| v.into_owned())
                        })
                        .unwrap_or_default();
                    writer.write_event(Event::Start(e.into_owned())).map_err(|e| e.to_string())?;
                    writer
                        .write_event(Event::Text(BytesText::new(&href)))
                        .map_err(|e| e.to_string())?;
                    writer
                        .write_event(Event::End(BytesEnd::new("a")))
                        .map_err(|e| e.to_string())?;
                    text.push_str(&href);
                } else {
                    if e.name().as_ref() == b"br" {
                        text.push('\n');
                    }
                    writer.write_event(Event::Empty(e.into_owned())).map_err(|e| e.to_string())?;
                }
            }
            Event::Text(t) => {
                if depth == 0 {
                    if !t.iter().all(u8::is_ascii_whitespace) {
                        return Err("text outside <messageML>".into());
                    }
                    continue;
                }
                text.push_str(&unescaped_text(&t)?);
                writer.write_event(Event::Text(t.into_owned())).map_err(|e| e.to_string())?;
            }
            Event::GeneralRef(r) => {
                text.push_str(&resolved_ref(&r)?);
                writer.write_event(Event::GeneralRef(r.into_owned())).map_err(|e| e.to_string())?;
            }
            Event::CData(c) => {
                text.push_str(&String::from_utf8_lossy(&c));
                writer.write_event(Event::CData(c.into_owned())).map_err(|e| e.to_string())?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !saw_root || depth != 0 {
        return Err("invalid MessageML: missing or unclosed <messageML>".into());
    }
    let presentation_ml = String::from_utf8(writer.into_inner()).map_err(|e| e.to_string())?;
    Ok(Rendered {
        presentation_ml,
        data: Value::Object(entity),
        text: text.trim().to_owned(),
        forms,
    })
}

fn unescaped_text(t: &BytesText<'_>) -> Result<String, String> {
    let raw = t.decode().map_err(|e| e.to_string())?;
    Ok(quick_xml::escape::unescape(&raw)
        .map_err(|e| format!("invalid MessageML: {e}"))?
        .into_owned())
}

fn resolved_ref(r: &quick_xml::events::BytesRef<'_>) -> Result<String, String> {
    let name = r.decode().map_err(|e| e.to_string())?;
    let reference = format!("&{name};");
    Ok(quick_xml::escape::unescape(&reference)
        .map_err(|e| format!("invalid MessageML: {e}"))?
        .into_owned())
}

fn write(w: &mut Writer<Vec<u8>>, event: Event<'_>) -> Result<(), String> {
    w.write_event(event).map_err(|e| e.to_string())
}

/// The Elements tag `name` is, if it is one that lives in a form.
fn form_element(name: &[u8]) -> Option<&'static str> {
    FORM_ELEMENTS.iter().copied().find(|t| t.as_bytes() == name)
}

/// The text inside an element that may hold only text; consumes its end tag.
fn text_content(reader: &mut Reader<&[u8]>, tag: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        match reader.read_event().map_err(|e| format!("invalid MessageML: {e}"))? {
            Event::End(_) => return Ok(out),
            Event::Text(t) => out.push_str(&unescaped_text(&t)?),
            Event::GeneralRef(r) => out.push_str(&resolved_ref(&r)?),
            Event::CData(c) => out.push_str(&String::from_utf8_lossy(&c)),
            Event::Start(child) | Event::Empty(child) => {
                let child = String::from_utf8_lossy(child.name().as_ref()).into_owned();
                return Err(format!("Element \"{child}\" is not allowed in \"{tag}\""));
            }
            Event::Eof => return Err("invalid MessageML: missing or unclosed <messageML>".into()),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
}

/// An element's attributes, refusing those the agent does not allow on it.
fn attributes(
    e: &BytesStart<'_>,
    tag: &str,
    allowed: &[&str],
) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for attribute in e.attributes() {
        let attribute = attribute.map_err(|err| format!("invalid MessageML: {err}"))?;
        let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
        if !allowed.contains(&key.as_str()) {
            return Err(format!("Attribute \"{key}\" is not allowed in \"{tag}\""));
        }
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| format!("invalid MessageML: {err}"))?;
        out.insert(key, value.into_owned());
    }
    Ok(out)
}

/// `true`/`false` attributes: anything else is refused.
fn boolean(attrs: &HashMap<String, String>, key: &str, tag: &str) -> Result<bool, String> {
    match attrs.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(format!(
            "Attribute \"{key}\" of element \"{tag}\" can only be one of the following values: [true, false]."
        )),
    }
}

/// The `name` every input needs.
fn field_name(attrs: &HashMap<String, String>) -> Result<String, String> {
    match attrs.get("name") {
        Some(n) if !n.trim().is_empty() => Ok(n.clone()),
        _ => Err("The attribute \"name\" is required".into()),
    }
}

fn open_form(
    e: &BytesStart<'_>,
    nested: bool,
    w: &mut Writer<Vec<u8>>,
) -> Result<FormSpec, String> {
    if nested {
        return Err(
            "Element \"form\" cannot be an inner child of the following elements: [form]".into()
        );
    }
    let attrs = attributes(e, "form", &["id"])?;
    let id = match attrs.get("id") {
        Some(id) if !id.trim().is_empty() => id.clone(),
        _ => return Err("The attribute \"id\" is required".into()),
    };
    let mut start = BytesStart::new("form");
    start.push_attribute(("id", id.as_str()));
    write(w, Event::Start(start))?;
    Ok(FormSpec { id, fields: Vec::new(), actions: Vec::new() })
}

/// Opens the `<div class="…-group">` that a `label` or `title` wraps its element in (with the
/// `<label for>` and the tooltip); returns the id the element then carries.
fn open_label_group(
    attrs: &HashMap<String, String>,
    prefix: &str,
    w: &mut Writer<Vec<u8>>,
) -> Result<Option<String>, String> {
    let (label, title) = (attrs.get("label"), attrs.get("title"));
    if label.is_none() && title.is_none() {
        return Ok(None);
    }
    let id = format!("{prefix}-{}", super::state::random_id(6));
    let mut group = BytesStart::new("div");
    group.push_attribute(("class", format!("{prefix}-group").as_str()));
    group.push_attribute(("data-generated", "true"));
    write(w, Event::Start(group))?;
    if let Some(label) = label {
        let mut start = BytesStart::new("label");
        start.push_attribute(("for", id.as_str()));
        write(w, Event::Start(start))?;
        write(w, Event::Text(BytesText::new(label)))?;
        write(w, Event::End(BytesEnd::new("label")))?;
    }
    if let Some(title) = title {
        let mut hint = BytesStart::new("span");
        hint.push_attribute(("class", "info-hint"));
        hint.push_attribute(("data-target-id", id.as_str()));
        hint.push_attribute(("data-title", title.as_str()));
        write(w, Event::Start(hint))?;
        write(w, Event::End(BytesEnd::new("span")))?;
    }
    Ok(Some(id))
}

fn close_label_group(id: &Option<String>, w: &mut Writer<Vec<u8>>) -> Result<(), String> {
    if id.is_some() {
        write(w, Event::End(BytesEnd::new("div")))?;
    }
    Ok(())
}

/// A text field's `minlength`/`maxlength`: 1 to 128, as the agent checks them.
fn length(attrs: &HashMap<String, String>, key: &str) -> Result<Option<usize>, String> {
    let Some(raw) = attrs.get(key) else { return Ok(None) };
    let n: usize = raw
        .trim()
        .parse()
        .map_err(|_| format!("The attribute \"{key}\" must be a valid number."))?;
    if !(1..=128).contains(&n) {
        return Err(format!("The attribute \"{key}\" must be between 1 and 128"));
    }
    Ok(Some(n))
}

/// Renders one form input or button (its text content already read) and records it in `form`.
fn element(
    tag: &str,
    e: &BytesStart<'_>,
    content: &str,
    form: Option<&mut FormSpec>,
    w: &mut Writer<Vec<u8>>,
    text: &mut String,
) -> Result<(), String> {
    let Some(form) = form else {
        return Err(format!(
            "Element \"{tag}\" can only be a inner child of the following elements: [form]"
        ));
    };
    match tag {
        "text-field" => {
            let attrs = attributes(
                e,
                tag,
                &[
                    "name",
                    "placeholder",
                    "required",
                    "masked",
                    "minlength",
                    "maxlength",
                    "label",
                    "title",
                    "pattern",
                    "pattern-error-message",
                    "formnovalidate",
                ],
            )?;
            let name = field_name(&attrs)?;
            let required = boolean(&attrs, "required", tag)?;
            boolean(&attrs, "masked", tag)?;
            let (min, max) = (length(&attrs, "minlength")?, length(&attrs, "maxlength")?);
            if min.unwrap_or(1) > max.unwrap_or(128) {
                return Err(
                    "The attribute \"minlength\" must be lower than the \"maxlength\" attribute"
                        .into(),
                );
            }
            // The agent counts in UTF-16 units (Java strings).
            let units = content.encode_utf16().count();
            if !content.is_empty() && !(min.unwrap_or(1)..=max.unwrap_or(128)).contains(&units) {
                return Err(format!(
                    "The length of this text-field's initial value must be between {} and {}",
                    min.unwrap_or(1),
                    max.unwrap_or(128)
                ));
            }
            let id = open_label_group(&attrs, "textfield", w)?;
            let mut input = BytesStart::new("input");
            input.push_attribute(("type", "text"));
            input.push_attribute(("name", name.as_str()));
            for (key, shown) in [
                ("placeholder", "placeholder"),
                ("required", "required"),
                ("masked", "data-masked"),
                ("minlength", "minlength"),
                ("maxlength", "maxlength"),
                ("pattern", "pattern"),
                ("pattern-error-message", "data-pattern-error-message"),
                ("formnovalidate", "data-formnovalidate"),
            ] {
                if let Some(v) = attrs.get(key) {
                    input.push_attribute((shown, v.as_str()));
                }
            }
            if !content.is_empty() {
                input.push_attribute(("value", content));
            }
            if let Some(id) = &id {
                input.push_attribute(("id", id.as_str()));
            }
            write(w, Event::Empty(input))?;
            close_label_group(&id, w)?;
            // A length or a pattern makes the field required in the client (developer docs,
            // text-field.md).
            let required = required
                || ["minlength", "maxlength", "pattern"].iter().any(|k| attrs.contains_key(*k));
            let kind = FieldKind::Text {
                initial: content.to_owned(),
                max_units: Some(max.unwrap_or(128)),
            };
            form.fields.push(FormField { name, kind, required });
        }
        "textarea" => {
            let attrs = attributes(
                e,
                tag,
                &[
                    "name",
                    "placeholder",
                    "required",
                    "label",
                    "title",
                    "pattern",
                    "pattern-error-message",
                    "minlength",
                    "maxlength",
                    "formnovalidate",
                ],
            )?;
            let name = field_name(&attrs)?;
            let required = boolean(&attrs, "required", tag)?;
            let id = open_label_group(&attrs, "textarea", w)?;
            let mut start = BytesStart::new("textarea");
            // The agent writes a text area's attributes in name order.
            let mut keys: Vec<&String> =
                attrs.keys().filter(|k| *k != "label" && *k != "title").collect();
            keys.sort();
            for key in keys {
                let shown = match key.as_str() {
                    "pattern-error-message" => "data-pattern-error-message",
                    "formnovalidate" => "data-formnovalidate",
                    other => other,
                };
                start.push_attribute((shown, attrs[key].as_str()));
            }
            if let Some(id) = &id {
                start.push_attribute(("id", id.as_str()));
            }
            write(w, Event::Start(start))?;
            write(w, Event::Text(BytesText::new(content)))?;
            write(w, Event::End(BytesEnd::new("textarea")))?;
            close_label_group(&id, w)?;
            let required = required
                || ["minlength", "maxlength", "pattern"].iter().any(|k| attrs.contains_key(*k));
            let max_units = attrs.get("maxlength").and_then(|m| m.trim().parse().ok());
            let kind = FieldKind::Text { initial: content.to_owned(), max_units };
            form.fields.push(FormField { name, kind, required });
        }
        "person-selector" => {
            let attrs = attributes(
                e,
                tag,
                &["name", "placeholder", "required", "label", "title", "value", "formnovalidate"],
            )?;
            let name = field_name(&attrs)?;
            let required = boolean(&attrs, "required", tag)?;
            if !content.trim().is_empty() {
                return Err(
                    "Element \"person-selector\" may not have child elements or text content"
                        .into(),
                );
            }
            let initial: Vec<i64> = match attrs.get("value") {
                Some(v) => serde_json::from_str(v).map_err(|_| {
                    "Attribute \"value\" contains an unsupported format, should be an array of user ids"
                        .to_owned()
                })?,
                None => Vec::new(),
            };
            let id = open_label_group(&attrs, "person-selector", w)?;
            let mut div = BytesStart::new("div");
            div.push_attribute(("class", "person-selector"));
            div.push_attribute(("data-name", name.as_str()));
            for (key, shown) in [
                ("placeholder", "data-placeholder"),
                ("required", "data-required"),
                ("value", "data-value"),
                ("formnovalidate", "data-formnovalidate"),
            ] {
                if let Some(v) = attrs.get(key) {
                    div.push_attribute((shown, v.as_str()));
                }
            }
            if let Some(id) = &id {
                div.push_attribute(("id", id.as_str()));
            }
            write(w, Event::Start(div))?;
            write(w, Event::End(BytesEnd::new("div")))?;
            close_label_group(&id, w)?;
            form.fields.push(FormField { name, kind: FieldKind::People { initial }, required });
        }
        "checkbox" => {
            let attrs = attributes(e, tag, &["name", "value", "checked", "formnovalidate"])?;
            let name = field_name(&attrs)?;
            let checked = boolean(&attrs, "checked", tag)?;
            // Without a value the client sends "on" (developer docs, checkbox.md).
            let value = attrs.get("value").cloned().unwrap_or_else(|| "on".into());
            let label = content.trim();
            let id = (!label.is_empty())
                .then(|| format!("checkbox-group-{}", super::state::random_id(6)));
            if id.is_some() {
                let mut group = BytesStart::new("div");
                group.push_attribute(("class", "checkbox-group"));
                write(w, Event::Start(group))?;
            }
            let mut input = BytesStart::new("input");
            input.push_attribute(("type", "checkbox"));
            input.push_attribute(("name", name.as_str()));
            if let Some(c) = attrs.get("checked") {
                input.push_attribute(("checked", c.as_str()));
            }
            input.push_attribute(("value", value.as_str()));
            if let Some(v) = attrs.get("formnovalidate") {
                input.push_attribute(("data-formnovalidate", v.as_str()));
            }
            if let Some(id) = &id {
                input.push_attribute(("id", id.as_str()));
                write(w, Event::Empty(input))?;
                let mut start = BytesStart::new("label");
                start.push_attribute(("for", id.as_str()));
                write(w, Event::Start(start))?;
                write(w, Event::Text(BytesText::new(label)))?;
                write(w, Event::End(BytesEnd::new("label")))?;
                write(w, Event::End(BytesEnd::new("div")))?;
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(label);
            } else {
                write(w, Event::Empty(input))?;
            }
            let kind = FieldKind::Checkbox { value, checked };
            form.fields.push(FormField { name, kind, required: false });
        }
        _ => {
            let attrs = attributes(e, "button", &["name", "type", "class"])?;
            let kind = attrs.get("type").map_or("action", String::as_str);
            if kind != "action" && kind != "reset" {
                return Err("Attribute \"type\" of element \"button\" can only be one of the following values: [action, reset].".into());
            }
            let mut button = BytesStart::new("button");
            button.push_attribute(("type", kind));
            if kind == "action" {
                let name = field_name(&attrs)?;
                button.push_attribute(("name", name.as_str()));
                form.actions.push(name);
            } else if let Some(name) = attrs.get("name") {
                button.push_attribute(("name", name.as_str()));
            }
            if let Some(class) = attrs.get("class") {
                button.push_attribute(("class", class.as_str()));
            }
            write(w, Event::Start(button))?;
            write(w, Event::Text(BytesText::new(content)))?;
            write(w, Event::End(BytesEnd::new("button")))?;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(content.trim());
        }
    }
    Ok(())
}

/// Display names by id, for [`render`].
pub fn names(users: &HashMap<i64, String>) -> impl Fn(i64) -> Option<String> + '_ {
    move |id| users.get(&id).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(id: i64) -> Option<String> {
        (id == 7).then(|| "Alice Ng".to_owned())
    }

    #[test]
    fn mentions_become_entity_spans_with_data() {
        let r = render(
            "<messageML>Hi <mention uid=\"7\"/>, <b>x &amp; y</b></messageML>",
            None,
            &alice,
        )
        .expect("valid");
        assert_eq!(
            r.presentation_ml,
            "<div data-format=\"PresentationML\" data-version=\"2.0\">Hi <span class=\"entity\" \
             data-entity-id=\"mention1\">@Alice Ng</span>, <b>x &amp; y</b></div>"
        );
        assert_eq!(r.text, "Hi @Alice Ng, x & y");
        assert_eq!(r.data["mention1"]["id"][0]["value"], "7");
    }

    /// Found by fuzzing (round_trip): a link without text (what the relay posts for a URL a
    /// contact wrote) was missing from the message's text.
    #[test]
    fn a_link_without_text_shows_its_address() {
        let r = render(
            "<messageML>see <a href=\"https://x.org/?a=1&amp;b=2\"/> now</messageML>",
            None,
            &alice,
        )
        .expect("valid");
        assert_eq!(
            r.presentation_ml,
            "<div data-format=\"PresentationML\" data-version=\"2.0\">see <a \
             href=\"https://x.org/?a=1&amp;b=2\">https://x.org/?a=1&amp;b=2</a> now</div>"
        );
        assert_eq!(r.text, "see https://x.org/?a=1&b=2 now");
    }

    /// Label ids are random, as the agent's: replaced by `ID` for comparison.
    fn fixed_ids(pml: &str) -> String {
        let ids = regex::Regex::new(
            r"(textfield|textarea|person-selector|checkbox-group)-[A-Za-z0-9_-]{8}",
        )
        .expect("regex");
        ids.replace_all(pml, "$1-ID").into_owned()
    }

    #[test]
    fn elements_render_as_the_agent_renders_them() {
        let r = render(
            "<messageML><form id=\"f1\"><h3>New</h3>\
             <text-field name=\"name\" label=\"Group name\" placeholder=\"Deal team\">Desk &amp; co</text-field>\
             <text-field name=\"code\" required=\"true\" maxlength=\"5\"/>\
             <person-selector name=\"who\" label=\"Advisors\" value=\"[7,8]\"/>\
             <person-selector name=\"more\" placeholder=\"Anyone\"/>\
             <textarea name=\"numbers\" placeholder=\"One per line\" label=\"Numbers\">+44\n+33</textarea>\
             <checkbox name=\"native\" value=\"on\" checked=\"true\">Native</checkbox>\
             <checkbox name=\"bare\"/>\
             <button type=\"reset\">Reset</button><button name=\"go\" type=\"action\">Create</button>\
             </form></messageML>",
            None,
            &alice,
        )
        .expect("valid");
        assert_eq!(
            fixed_ids(&r.presentation_ml),
            "<div data-format=\"PresentationML\" data-version=\"2.0\"><form id=\"f1\"><h3>New</h3>\
             <div class=\"textfield-group\" data-generated=\"true\"><label for=\"textfield-ID\">Group name</label>\
             <input type=\"text\" name=\"name\" placeholder=\"Deal team\" value=\"Desk &amp; co\" id=\"textfield-ID\"/></div>\
             <input type=\"text\" name=\"code\" required=\"true\" maxlength=\"5\"/>\
             <div class=\"person-selector-group\" data-generated=\"true\"><label for=\"person-selector-ID\">Advisors</label>\
             <div class=\"person-selector\" data-name=\"who\" data-value=\"[7,8]\" id=\"person-selector-ID\"></div></div>\
             <div class=\"person-selector\" data-name=\"more\" data-placeholder=\"Anyone\"></div>\
             <div class=\"textarea-group\" data-generated=\"true\"><label for=\"textarea-ID\">Numbers</label>\
             <textarea name=\"numbers\" placeholder=\"One per line\" id=\"textarea-ID\">+44\n+33</textarea></div>\
             <div class=\"checkbox-group\"><input type=\"checkbox\" name=\"native\" checked=\"true\" value=\"on\" id=\"checkbox-group-ID\"/>\
             <label for=\"checkbox-group-ID\">Native</label></div>\
             <input type=\"checkbox\" name=\"bare\" value=\"on\"/>\
             <button type=\"reset\">Reset</button><button type=\"action\" name=\"go\">Create</button>\
             </form></div>"
        );
        // The label's `for` is the element's id.
        let id = r.presentation_ml.split("label for=\"").nth(1).and_then(|s| s.split('"').next());
        assert!(id.is_some_and(|id| r.presentation_ml.contains(&format!("id=\"{id}\""))));
        assert_eq!(r.text, "New\nNative\nReset\nCreate");
        let text =
            |initial: &str, max_units| FieldKind::Text { initial: initial.into(), max_units };
        let field = |name: &str, kind, required| FormField { name: name.into(), kind, required };
        assert_eq!(
            r.forms,
            vec![FormSpec {
                id: "f1".into(),
                fields: vec![
                    field("name", text("Desk & co", Some(128)), false),
                    field("code", text("", Some(5)), true),
                    field("who", FieldKind::People { initial: vec![7, 8] }, false),
                    field("more", FieldKind::People { initial: vec![] }, false),
                    field("numbers", text("+44\n+33", None), false),
                    field(
                        "native",
                        FieldKind::Checkbox { value: "on".into(), checked: true },
                        false
                    ),
                    field(
                        "bare",
                        FieldKind::Checkbox { value: "on".into(), checked: false },
                        false
                    ),
                ],
                actions: vec!["go".into()],
            }]
        );
    }

    #[test]
    fn elements_the_agent_refuses_are_refused_with_its_words() {
        let button = "<button name=\"go\">Go</button>";
        let cases = [
            (format!("<form>{button}</form>"), "The attribute \"id\" is required"),
            (
                "<form id=\"f\"><text-field name=\"x\"/></form>".into(),
                "should have at least one action button",
            ),
            ("<form id=\"f\"/>".into(), "should have at least one action button"),
            (
                "<text-field name=\"x\"/>".into(),
                "can only be a inner child of the following elements: [form]",
            ),
            (
                format!("<form id=\"a\"><form id=\"b\">{button}</form>{button}</form>"),
                "cannot be an inner child",
            ),
            (
                format!("<form id=\"f\"><text-field/>{button}</form>"),
                "The attribute \"name\" is required",
            ),
            (
                format!("<form id=\"f\"><text-field name=\"x\" id=\"y\"/>{button}</form>"),
                "Attribute \"id\" is not allowed in \"text-field\"",
            ),
            (
                format!(
                    "<form id=\"f\"><text-field name=\"x\" maxlength=\"3\">long</text-field>{button}</form>"
                ),
                "initial value must be between 1 and 3",
            ),
            (
                format!(
                    "<form id=\"f\"><text-field name=\"x\">{}</text-field>{button}</form>",
                    "😀".repeat(65)
                ),
                "initial value must be between 1 and 128",
            ),
            (
                format!("<form id=\"f\"><text-field name=\"x\" maxlength=\"200\"/>{button}</form>"),
                "must be between 1 and 128",
            ),
            (
                format!("<form id=\"f\"><text-field name=\"x\" required=\"yes\"/>{button}</form>"),
                "can only be one of the following values: [true, false]",
            ),
            (
                format!(
                    "<form id=\"f\"><text-field name=\"x\"><b>x</b></text-field>{button}</form>"
                ),
                "Element \"b\" is not allowed in \"text-field\"",
            ),
            (
                format!(
                    "<form id=\"f\"><person-selector name=\"p\" value=\"[1,abc]\"/>{button}</form>"
                ),
                "should be an array of user ids",
            ),
            (
                format!(
                    "<form id=\"f\"><person-selector name=\"p\">x</person-selector>{button}</form>"
                ),
                "may not have child elements or text content",
            ),
            (
                format!(
                    "<form id=\"f\"><checkbox name=\"c\" checked=\"on\">C</checkbox>{button}</form>"
                ),
                "[true, false]",
            ),
            (
                "<form id=\"f\"><button type=\"submit\" name=\"x\">X</button></form>".into(),
                "[action, reset]",
            ),
            (
                "<form id=\"f\"><button>X</button></form>".into(),
                "The attribute \"name\" is required",
            ),
        ];
        for (body, expected) in cases {
            let err =
                render(&format!("<messageML>{body}</messageML>"), None, &alice).expect_err(&body);
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn malformed_messageml_is_refused() {
        for bad in [
            "<messageML>unclosed",
            "plain text",
            "<p>x</p>",
            "<messageML><mention uid=\"9\"/></messageML>",
            "<messageML><b>x</i></messageML>",
        ] {
            assert!(render(bad, None, &alice).is_err(), "{bad}");
        }
    }
}
