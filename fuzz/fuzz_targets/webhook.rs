//! The WhatsApp webhook body parser, as it runs after the signature check: `parse` and
//! `parse_ours` (our number and WABA). Properties: no panic; what `parse_ours` keeps is a subset
//! of what `parse` finds; every event survives the store's JSON round trip (serialised by the
//! receiver, read back by the dispatcher) unchanged, and keys are never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wa_groups_bot::events::InboundEvent;
use wa_groups_bot::webhook::parse::{Ours, parse, parse_ours};

fuzz_target!(|body: &[u8]| {
    let all = parse(body);
    let ours = Ours { phone_number_id: "106540352242922", waba_id: Some("102290129340398") };
    let kept = parse_ours(body, &ours);
    match (&all, &kept) {
        (Ok(all), Ok(kept)) => {
            for k in kept {
                assert!(all.contains(k), "parse_ours kept {k:?}, which parse did not find");
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("parse and parse_ours disagree on whether the body is readable"),
    }
    let Ok(events) = all else { return };
    for keyed in events {
        assert!(!keyed.key.is_empty());
        let event = InboundEvent::WhatsApp(keyed.event);
        let stored = serde_json::to_string(&event).expect("an event always serialises");
        let back: InboundEvent = serde_json::from_str(&stored).expect("a stored event reads back");
        assert_eq!(back, event, "{stored}");
    }
});
