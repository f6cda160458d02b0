//! PresentationML and its EntityJSON, as the datafeed delivers them, into what the bot reads:
//! the text/mentions/segments parser, the command parser after it, and the conversion into
//! WhatsApp text. The input is `<PresentationML>\0<EntityJSON>` (no NUL: no data). Properties:
//! no panic; every mention found is one of the segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wa_groups_bot::commands::{Segment, parse as parse_command};
use wa_groups_bot::groups::UserId;
use wa_groups_bot::relay::format::to_whatsapp;
use wa_groups_bot::symphony::messageml::parse;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let (pml, data) = match text.split_once('\0') {
        Some((pml, data)) => (pml, Some(data)),
        None => (text, None),
    };
    if let Ok(parsed) = parse(pml, data) {
        let in_segments =
            parsed.segments.iter().filter(|s| matches!(s, Segment::Mention { .. })).count();
        assert_eq!(in_segments, parsed.mentions.len(), "{parsed:?}");
        let _ = parse_command(&parsed.segments, UserId(1));
    }
    let _ = to_whatsapp(pml, data);
});
