//! Any message body with any routing key: parsing never panics, and what it accepts parses
//! again, as a retry does, to the same data byte for byte, and renders in both formats.
#![no_main]

use hookrelay::delivery::format::{inplayer_body, standard_body};
use hookrelay::event::{Event, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (key, body) = match input.split_first() {
        Some((n, rest)) if (*n as usize) < hookrelay::event::EventType::ALL.len() => {
            (hookrelay::event::EventType::ALL[*n as usize].label(), rest)
        }
        _ => ("payment.card.success", input),
    };
    let limits = Limits {
        max_bytes: 262_144,
        max_depth: 32,
    };
    if let Ok(event) = Event::parse(body, key, limits) {
        let again = Event::parse_accepted(event.to_envelope_json().as_bytes())
            .expect("what ingest accepted parses again");
        assert_eq!(again.data.get(), event.data.get());
        assert!(standard_body(&event).contains(event.data.get()));
        let _ = inplayer_body(&event);
    }
});
