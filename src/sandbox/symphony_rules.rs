//! Symphony's wire rules the mock pod and the demo need (stream ids in URLs, MessageML
//! escaping), written from the pod/agent specs and `shared/research/symphony-api.md`; the
//! sandbox shares no code with the bot here.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// A stream id as URLs carry it: URL-safe base64 without padding (`+`→`-`, `/`→`_`, no `=`).
/// Ids already URL-safe are returned unchanged.
pub(crate) fn url_safe_id(raw: &str) -> String {
    if !raw.contains(['+', '/', '=']) {
        return raw.to_owned();
    }
    match STANDARD.decode(raw) {
        Ok(bytes) => URL_SAFE_NO_PAD.encode(bytes),
        Err(_) => raw.replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned(),
    }
}

/// Text made safe inside MessageML: the XML specials, and `$` and `#`, which MessageML reads as
/// the start of a Freemarker expression or a hashtag.
pub(crate) fn escape_message_ml(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_become_url_safe() {
        assert_eq!(url_safe_id("ab+c/dQ=="), "ab-c_dQ");
        assert_eq!(url_safe_id("ab-c_dQ"), "ab-c_dQ");
    }

    #[test]
    fn message_ml_specials_are_escaped() {
        assert_eq!(escape_message_ml("<b> & $x #y"), "&lt;b&gt; &amp; &#36;x &#35;y");
    }
}
