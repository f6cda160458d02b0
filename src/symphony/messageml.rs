//! PresentationML (what the datafeed delivers) → plain text, segments and mentions, with
//! quick-xml; and MessageML escaping for anything the bot interpolates.

use quick_xml::Reader;
use quick_xml::events::Event;
use serde_json::Value;

use crate::domain::UserId;
use crate::markup::{Segment, named_entity};

pub use crate::markup::escape_message_ml as escape;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable PresentationML: {0}")]
pub struct MessageMlError(pub(crate) String);

/// A message reduced to what the bot reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMessage {
    /// Plain text; mentions appear as their display text (`@Bob Smith`).
    pub text: String,
    /// Mentioned users, in order of appearance.
    pub mentions: Vec<UserId>,
    /// Text and mentions in order, for the command parser.
    pub segments: Vec<Segment>,
}

/// The user id a mention entity points at. `value` is a string in real payloads and a number
/// in the documentation's samples: both are accepted.
pub(crate) fn mention_user(entity: &Value) -> Option<UserId> {
    let kind = entity.get("type").and_then(Value::as_str)?;
    if kind != "com.symphony.user.mention" {
        return None;
    }
    entity.get("id")?.as_array()?.iter().find_map(|id| {
        if id.get("type").and_then(Value::as_str) != Some("com.symphony.user.userId") {
            return None;
        }
        match id.get("value")? {
            Value::String(s) => s.trim().parse().ok().map(UserId),
            Value::Number(n) => n.as_i64().map(UserId),
            _ => None,
        }
    })
}

/// The EntityJSON `data` of a message (absent or blank: no entities).
pub(crate) fn entities(data: Option<&str>) -> Result<Value, MessageMlError> {
    match data {
        Some(d) if !d.trim().is_empty() => {
            serde_json::from_str(d).map_err(|e| MessageMlError(format!("data is not JSON: {e}")))
        }
        _ => Ok(Value::Null),
    }
}

/// Parses a PresentationML message and its EntityJSON `data`.
pub fn parse(presentation_ml: &str, data: Option<&str>) -> Result<ParsedMessage, MessageMlError> {
    let entities = entities(data)?;
    let mut reader = Reader::from_str(presentation_ml);
    reader.config_mut().trim_text(false);
    let mut segments: Vec<Segment> = Vec::new();
    let mut mentions = Vec::new();
    // Inside a mention span: (depth at which it opened, user, collected display text).
    let mut in_mention: Option<(usize, UserId, String)> = None;
    let mut depth = 0usize;
    let push_text = |segments: &mut Vec<Segment>, text: &str| {
        if let Some(Segment::Text(last)) = segments.last_mut() {
            last.push_str(text);
        } else {
            segments.push(Segment::Text(text.to_owned()));
        }
    };
    loop {
        let event = reader.read_event().map_err(|e| MessageMlError(e.to_string()))?;
        match event {
            Event::Eof => break,
            Event::Start(e) => {
                depth += 1;
                let name = e.name().as_ref().to_vec();
                if name == b"span" && in_mention.is_none() {
                    let key = e.try_get_attribute("data-entity-id").ok().flatten().and_then(|a| {
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .ok()
                            .map(|v| v.into_owned())
                    });
                    let is_entity = e
                        .try_get_attribute("class")
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.value.split(|b| *b == b' ').any(|c| c == b"entity"));
                    if let (true, Some(key)) = (is_entity, key)
                        && let Some(user) = entities.get(&key).and_then(mention_user)
                    {
                        in_mention = Some((depth, user, String::new()));
                        continue;
                    }
                }
                // Block elements separate words (the BDK joins them; a newline keeps text readable).
                if matches!(
                    name.as_slice(),
                    b"p" | b"div" | b"li" | b"tr" | b"h1" | b"h2" | b"h3" | b"h4" | b"h5" | b"h6"
                ) && depth > 1
                    && in_mention.is_none()
                    && segments
                        .last()
                        .is_some_and(|s| !matches!(s, Segment::Text(t) if t.ends_with('\n')))
                {
                    push_text(&mut segments, "\n");
                }
            }
            Event::End(_) => {
                if let Some((open_depth, user, text)) = in_mention.take() {
                    if open_depth == depth {
                        mentions.push(user);
                        segments.push(Segment::Mention { user, text });
                    } else {
                        in_mention = Some((open_depth, user, text));
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::Empty(e) => {
                if e.name().as_ref() == b"br" {
                    match &mut in_mention {
                        Some(_) => {}
                        None => push_text(&mut segments, "\n"),
                    }
                }
            }
            Event::Text(t) => {
                let raw = t.decode().map_err(|e| MessageMlError(e.to_string()))?;
                let text =
                    quick_xml::escape::unescape(&raw).map_err(|e| MessageMlError(e.to_string()))?;
                match &mut in_mention {
                    Some((_, _, shown)) => shown.push_str(&text),
                    None => push_text(&mut segments, &text),
                }
            }
            Event::GeneralRef(r) => {
                let text = match r.resolve_char_ref().map_err(|e| MessageMlError(e.to_string()))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| MessageMlError(e.to_string()))?;
                        // An entity XML does not know is kept as written: never lose a message.
                        named_entity(&name).map_or_else(|| format!("&{name};"), str::to_owned)
                    }
                };
                match &mut in_mention {
                    Some((_, _, shown)) => shown.push_str(&text),
                    None => push_text(&mut segments, &text),
                }
            }
            Event::CData(c) => push_text(&mut segments, &String::from_utf8_lossy(&c)),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if depth != 0 {
        return Err(MessageMlError("unbalanced tags".into()));
    }
    let text = segments
        .iter()
        .map(|s| match s {
            Segment::Text(t) => t.as_str(),
            Segment::Mention { text, .. } => text.as_str(),
        })
        .collect::<String>()
        .trim()
        .to_owned();
    Ok(ParsedMessage { text, mentions, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_typed_mentions_with_numeric_string_keys() {
        let pml = "<div data-format=\"PresentationML\" data-version=\"2.0\" class=\"wysiwyg\"><p><span class=\"entity\" data-entity-id=\"0\">@Group Bot</span> /group add <span class=\"entity\" data-entity-id=\"1\">@Bob Smith</span></p></div>";
        let data = r#"{"0":{"id":[{"type":"com.symphony.user.userId","value":"349026222344902"}],"type":"com.symphony.user.mention"},"1":{"id":[{"type":"com.symphony.user.userId","value":"349026222339001"}],"type":"com.symphony.user.mention"}}"#;
        let m = parse(pml, Some(data)).expect("parse");
        assert_eq!(m.text, "@Group Bot /group add @Bob Smith");
        assert_eq!(m.mentions, vec![UserId(349026222344902), UserId(349026222339001)]);
        assert_eq!(
            m.segments,
            vec![
                Segment::Mention { user: UserId(349026222344902), text: "@Group Bot".into() },
                Segment::Text(" /group add ".into()),
                Segment::Mention { user: UserId(349026222339001), text: "@Bob Smith".into() },
            ]
        );
    }

    #[test]
    fn api_generated_keys_and_numeric_values() {
        let pml = "<div data-format=\"PresentationML\" data-version=\"2.0\">Hi <span class=\"entity\" data-entity-id=\"mention123\">@Alice</span> &amp; <b>co</b><br/>bye</div>";
        let data = r#"{"mention123":{"type":"com.symphony.user.mention","version":"1.0","id":[{"type":"com.symphony.user.userId","value":7078106103901}]}}"#;
        let m = parse(pml, Some(data)).expect("parse");
        assert_eq!(m.text, "Hi @Alice & co\nbye");
        assert_eq!(m.mentions, vec![UserId(7078106103901)]);
    }

    #[test]
    fn nbsp_and_unknown_entities_do_not_lose_the_message() {
        let parsed = parse(
            "<div data-format=\"PresentationML\" data-version=\"2.0\">/wa&nbsp;help &amp; &#233; &foo;</div>",
            None,
        )
        .expect("parses");
        assert_eq!(parsed.text, "/wa help & é &foo;");
    }

    #[test]
    fn spans_that_are_not_mentions_stay_text() {
        let pml = "<div><span class=\"entity\" data-entity-id=\"t\">#fx</span> <span class=\"entity\" data-entity-id=\"missing\">@Ghost</span></div>";
        let data = r#"{"t":{"type":"org.symphonyoss.taxonomy","id":[{"type":"org.symphonyoss.taxonomy.hashtag","value":"fx"}]}}"#;
        let m = parse(pml, Some(data)).expect("parse");
        assert_eq!(m.text, "#fx @Ghost");
        assert!(m.mentions.is_empty());
        assert!(parse("<div><p>x</div>", None).is_err());
        assert!(parse("<div>x</div>", Some("not json")).is_err());
    }
}
