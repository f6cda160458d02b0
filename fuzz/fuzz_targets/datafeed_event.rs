//! The Datafeed event decoder: a JSON value as the agent's `read` returns in `events[]` →
//! `map_event`. Properties: no panic; the event's text (the datafeed's path, `map_event_json`)
//! and its value tree (the history's) map alike, keys given twice included; a mapped event
//! keeps the raw id and survives the store's JSON round trip unchanged (the intake serialises
//! it, the dispatcher reads it back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wa_groups_bot::events::InboundEvent;
use wa_groups_bot::symphony::model::{map_event, map_event_json};

fuzz_target!(|body: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<Value>(body) else { return };
    if let Ok(text) = std::str::from_utf8(body) {
        assert_eq!(map_event_json(text), map_event(&raw), "{text}");
    }
    // A whole `read` answer: each of its events; otherwise the value as one event.
    let events = match raw.get("events").and_then(Value::as_array) {
        Some(events) => events.clone(),
        None => vec![raw],
    };
    for raw in &events {
        let mapped = map_event(raw);
        assert_eq!(map_event_json(&raw.to_string()), mapped, "{raw}");
        let Some(event) = mapped else { continue };
        assert_eq!(Some(event.id.as_str()), raw.get("id").and_then(Value::as_str));
        let event = InboundEvent::Symphony(event);
        let stored = serde_json::to_string(&event).expect("an event always serialises");
        let back: InboundEvent = serde_json::from_str(&stored).expect("a stored event reads back");
        assert_eq!(back, event, "{stored}");
    }
});
