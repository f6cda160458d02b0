//! MessageML → PresentationML + EntityJSON, as the real agent renders a message it accepts.

use std::collections::HashMap;

use quick_xml::events::{BytesStart, Event};
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
}

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
                        .write_event(Event::End(quick_xml::events::BytesEnd::new("div")))
                        .map_err(|e| e.to_string())?;
                } else {
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
                        .write_event(Event::End(quick_xml::events::BytesEnd::new("div")))
                        .map_err(|e| e.to_string())?;
                } else if e.name().as_ref() == b"mention" {
                    let (key, shown) = mention(&e, &mut mention_no, &mut entity)?;
                    let mut span = BytesStart::new("span");
                    span.push_attribute(("class", "entity"));
                    span.push_attribute(("data-entity-id", key.as_str()));
                    writer.write_event(Event::Start(span)).map_err(|e| e.to_string())?;
                    writer
                        .write_event(Event::Text(quick_xml::events::BytesText::new(&shown)))
                        .map_err(|e| e.to_string())?;
                    writer
                        .write_event(Event::End(quick_xml::events::BytesEnd::new("span")))
                        .map_err(|e| e.to_string())?;
                    text.push_str(&shown);
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
                let raw = t.decode().map_err(|e| e.to_string())?;
                let unescaped = quick_xml::escape::unescape(&raw)
                    .map_err(|e| format!("invalid MessageML: {e}"))?;
                text.push_str(&unescaped);
                writer.write_event(Event::Text(t.into_owned())).map_err(|e| e.to_string())?;
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| e.to_string())?;
                let reference = format!("&{name};");
                let resolved = quick_xml::escape::unescape(&reference)
                    .map_err(|e| format!("invalid MessageML: {e}"))?;
                text.push_str(&resolved);
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
    Ok(Rendered { presentation_ml, data: Value::Object(entity), text: text.trim().to_owned() })
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
