//! Text and markup shared by every side, with no dependency of its own: the pieces of a received
//! message ([`Segment`]), MessageML escaping, XML's named entities, and plain-text excerpts.

use crate::domain::UserId;

/// A piece of a received message: plain text, or a mention resolved to a user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Mention { user: UserId, text: String },
}

/// How much of a message a quote or a report shows.
pub const EXCERPT_CHARS: usize = 80;

/// Escapes text for MessageML: XML's five characters, plus `$` and `#`, which would otherwise
/// start FreeMarker expressions (`${…}`, `#{…}`) when the agent renders the message. Characters
/// XML forbids (C0 controls but tab and newlines, U+FFFE, U+FFFF) are dropped: the agent would
/// refuse the whole message for one of them (a profile name or a file name can carry them).
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
            c if forbidden_in_xml(c) => {}
            _ => out.push(c),
        }
    }
    out
}

/// Characters no XML 1.0 document may contain.
pub fn forbidden_in_xml(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

/// XML's and HTML's usual named entities, as PresentationML carries them.
pub fn named_entity(name: &str) -> Option<&'static str> {
    match name {
        "amp" => Some("&"),
        "lt" => Some("<"),
        "gt" => Some(">"),
        "quot" => Some("\""),
        "apos" => Some("'"),
        "nbsp" => Some(" "),
        _ => None,
    }
}

/// A one-line plain-text excerpt of at most `max_chars` characters: whitespace runs (newlines
/// included) as single spaces, cut on a char boundary and ended with `…` when too long.
pub fn quote_snippet(text: &str, max_chars: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    if max_chars == 0 {
        return String::new();
    }
    let mut cut: String = flat.chars().take(max_chars - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_drops_what_xml_forbids_and_keeps_the_rest() {
        assert_eq!(escape_message_ml("a<b> & ${x} #1"), "a&lt;b&gt; &amp; &#36;{x} &#35;1");
        assert_eq!(escape_message_ml("Dana\u{7}\u{fffe} Reyes\tok\n"), "Dana Reyes\tok\n");
    }

    #[test]
    fn excerpts_are_one_line_and_cut_with_an_ellipsis() {
        assert_eq!(quote_snippet("a\n  b", 10), "a b");
        assert_eq!(quote_snippet("abcdef ghij", 8), "abcdef…");
        assert_eq!(quote_snippet("abc", 0), "abc".get(..0).unwrap_or_default());
    }
}
