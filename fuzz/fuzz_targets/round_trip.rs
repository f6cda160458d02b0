//! WhatsApp text → MessageML (`to_message_ml`, what the bot posts) → what the mock pod renders
//! (as the agent does) → back. Properties: the pod always accepts the message; its plain text
//! shows the same characters as the contact wrote, and so does reading the rendered
//! PresentationML back as WhatsApp text (formatting markers aside, and whitespace: a code block
//! is a block of its own in MessageML, so the line breaks around it may differ).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wa_groups_bot::relay::format::{to_message_ml, to_whatsapp};
use wa_groups_bot::sandbox::mock_pod::render_message_ml;

/// The words of a text: markers WhatsApp uses for formatting and XML-forbidden characters
/// dropped, whitespace collapsed.
fn words(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|&c| c == '\t' || c == '\n' || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}'))
        .filter(|c| !matches!(c, '*' | '_' | '`' | '~'))
        .map(|c| if c == '\u{a0}' { ' ' } else { c })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let message = format!("<messageML>{}</messageML>", to_message_ml(text));
    let rendered = match render_message_ml(&message, None, &|_| None) {
        Ok(r) => r,
        Err(e) => panic!("the pod refused {message:?}: {e}"),
    };
    let solid = |s: &str| words(s).replace(' ', "");
    let expected = solid(text);
    assert_eq!(solid(&rendered.text), expected, "pod text of {message:?}");
    let data = rendered.data.to_string();
    let back = to_whatsapp(&rendered.presentation_ml, Some(&data)).expect("readable");
    assert_eq!(solid(&back), expected, "back from {:?}", rendered.presentation_ml);
});
