//! WhatsApp's rules for what the bot sends: the 24-hour customer-service window, text and
//! template-parameter limits (long texts go in parts), and how a received file is named.

/// A WhatsApp text message holds at most this many characters; longer ones are split.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Template body parameters are shorter (Meta: 1024 characters, no newlines or tabs).
pub const MAX_TEMPLATE_PARAM_CHARS: usize = 1024;
/// The customer-service window: free text is allowed this long after a contact wrote.
pub const WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether a chat whose contact last wrote at `last_inbound_ms` is still open at `now_ms`.
pub fn window_open(last_inbound_ms: i64, now_ms: i64) -> bool {
    now_ms - last_inbound_ms < WINDOW_MS
}

/// The name a WhatsApp file gets in Symphony: its own, else `whatsapp-<kind>.<extension>`.
pub fn file_name(filename: Option<&str>, kind: &str, mime: &str) -> String {
    match filename.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => name.to_owned(),
        None => {
            // The subtype when it is an extension (`jpeg`, `png`, `pdf`), else the first known.
            let subtype = mime.split(['/', ';']).nth(1).unwrap_or_default().trim();
            let ext = mime_guess::get_mime_extensions_str(mime)
                .and_then(|exts| exts.iter().find(|e| **e == subtype).or(exts.first()))
                .copied()
                .unwrap_or("bin");
            format!("whatsapp-{kind}.{ext}")
        }
    }
}

/// A relayed text as template parameters: Meta refuses newlines, tabs and runs of more than
/// four spaces there, and takes at most 1024 characters, so a longer text goes in parts.
pub fn template_parts(text: &str) -> Vec<String> {
    let flat =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" · ");
    let flat = flat.replace('\t', " ");
    let mut out = String::with_capacity(flat.len());
    let mut spaces = 0;
    for c in flat.chars() {
        spaces = if c == ' ' { spaces + 1 } else { 0 };
        if spaces <= 1 {
            out.push(c);
        }
    }
    split_text(&out, MAX_TEMPLATE_PARAM_CHARS)
}

/// Splits a text into parts of at most `max` characters, at a line or word break when one is
/// near, so that a long message arrives whole, in order.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let head = &rest[..limit];
        let cut = head
            .rfind('\n')
            .or_else(|| head.rfind(' '))
            .filter(|&i| i > limit / 2)
            .map_or(limit, |i| i + 1);
        parts.push(rest[..cut].trim_end().to_owned());
        rest = &rest[cut..];
    }
    if !rest.trim().is_empty() || parts.is_empty() {
        parts.push(rest.to_owned());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatsapp_files_get_a_name() {
        assert_eq!(file_name(Some("terms.pdf"), "document", "application/pdf"), "terms.pdf");
        assert_eq!(file_name(None, "image", "image/jpeg"), "whatsapp-image.jpeg");
        assert_eq!(file_name(Some(" "), "audio", "audio/ogg; codecs=opus"), "whatsapp-audio.ogg");
        assert_eq!(file_name(None, "sticker", "x-unknown/thing"), "whatsapp-sticker.bin");
    }

    #[test]
    fn the_window_lasts_24_hours() {
        assert!(window_open(0, WINDOW_MS - 1));
        assert!(!window_open(0, WINDOW_MS));
    }

    #[test]
    fn template_parameters_have_no_newlines_tabs_or_long_space_runs() {
        assert_eq!(
            template_parts("*Alice*: hello\n\nworld\tand     more"),
            vec!["*Alice*: hello · world and more"]
        );
        // Nothing is cut: a long text goes in parts that fit.
        let long = "word ".repeat(500);
        let parts = template_parts(&long);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_TEMPLATE_PARAM_CHARS));
        assert_eq!(parts.join(" "), long.trim_end());
    }

    #[test]
    fn long_texts_are_split_at_breaks_and_nothing_is_lost() {
        let text = format!("{} {}", "a".repeat(3000), "b".repeat(3000));
        let parts = split_text(&text, MAX_TEXT_CHARS);
        assert_eq!(parts, vec!["a".repeat(3000), "b".repeat(3000)]);
        let dense = "é".repeat(9000);
        let parts = split_text(&dense, MAX_TEXT_CHARS);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_TEXT_CHARS));
        assert_eq!(parts.concat(), dense);
        assert_eq!(split_text("short", 10), vec!["short"]);
    }
}
