//! The `/wa` command parser on any message: text segments and mentions. The input's text is cut
//! at NUL characters; a piece `@<digits> <name>` is a mention of that user id, any other piece
//! is text. The bot is user 1. Properties: no panic; a parsed name is valid (non-blank, at most
//! `MAX_NAME_CHARS`); an error always has a usage line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wa_groups_bot::commands::parser::MAX_NAME_CHARS;
use wa_groups_bot::commands::{Command, Segment, parse};
use wa_groups_bot::groups::UserId;

fn segments(text: &str) -> Vec<Segment> {
    text.split('\0')
        .map(|piece| {
            let mention = piece.strip_prefix('@').and_then(|rest| {
                let (id, name) = rest.split_once(' ').unwrap_or((rest, ""));
                id.parse::<i64>().ok().map(|id| (id, name))
            });
            match mention {
                Some((id, name)) => Segment::Mention { user: UserId(id), text: format!("@{name}") },
                None => Segment::Text(piece.to_owned()),
            }
        })
        .collect()
}

fn check_name(name: &str) {
    assert!(!name.trim().is_empty(), "blank name accepted");
    assert!(name.chars().count() <= MAX_NAME_CHARS, "long name accepted: {name:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(&segments(text), UserId(1)) {
        Ok(Some(Command::Create { name, .. } | Command::Rename { name })) => check_name(&name),
        Ok(_) => {}
        Err(e) => assert!(!e.usage().is_empty()),
    }
});
