//! Any JSON text serde accepts as `data`, at any depth (no depth limit here, to stress the
//! renderer itself): the InPlayer form renders without panicking or recursing, and stays
//! within its 1 MiB cap.
#![no_main]

use hookrelay::delivery::format::{inplayer_body, MAX_BODY_BYTES};
use hookrelay::event::{Event, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let envelope = format!(
        r#"{{"id":"evt_f","type":"payment.card.success","account_id":"a","created_at":"2026-11-27T02:04:21Z","data":{text}}}"#
    );
    if let Ok(event) = Event::parse(envelope.as_bytes(), "payment.card.success", Limits::NONE) {
        if let Ok(body) = inplayer_body(&event) {
            assert!(body.len() <= MAX_BODY_BYTES);
        }
    }
});
