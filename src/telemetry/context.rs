//! W3C Trace Context (`traceparent`, `tracestate`) as it travels with hookrelay's messages: read
//! from an event's AMQP headers, written on the follow-ups (retries, dead letters, replays) and on
//! the merchant's request. Pure parsing and formatting; the exporter is [`super::otlp`].
//!
//! A header that does not parse is ignored, never an error: a broken trace header must not cost
//! its event a delivery. Only what parses is passed on, re-serialized, so a publisher cannot put
//! anything into a merchant's request beyond a well-formed `traceparent` and a short, printable
//! `tracestate`.

use crate::messages::headers::Headers;
use lapin::types::{AMQPValue, FieldTable};
use std::fmt;

/// The header names, the same in AMQP and HTTP (W3C Trace Context, and its AMQP draft).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The W3C limit on a `tracestate`: 32 list members of at most 256 characters; vendors may cut
/// at 512 characters, which is what is kept here.
const TRACESTATE_MAX: usize = 512;
const TRACESTATE_MEMBERS: usize = 32;

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: which trace, which span is the parent, and whether it is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// A `traceparent` and the `tracestate` that came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub parent: TraceParent,
    pub state: Option<String>,
}

impl TraceParent {
    /// Parses a `traceparent` header value. Version `00` is exactly 55 characters; a later
    /// version may append fields after a `-`, which are ignored (W3C: parse what you know).
    /// Ids must be lowercase hex and not all zero; version `ff` is invalid.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let value = value.trim_ascii();
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = from_hex::<1>(&value[0..2])?[0];
        let fits = match version {
            0x00 => value.len() == 55,
            0xff => false,
            _ => value.len() == 55 || value[55] == b'-',
        };
        let trace_id = from_hex::<16>(&value[3..35])?;
        let parent_id = from_hex::<8>(&value[36..52])?;
        let flags = from_hex::<1>(&value[53..55])?[0];
        let valid = fits && trace_id != [0; 16] && parent_id != [0; 8];
        valid.then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace: random ids, sampled or not.
    pub fn new_root(sampled: bool) -> TraceParent {
        loop {
            let (trace_id, parent_id): ([u8; 16], [u8; 8]) = (rand::random(), rand::random());
            // All-zero ids are invalid; drawing one is astronomically unlikely, but cheap to skip.
            if trace_id != [0; 16] && parent_id != [0; 8] {
                return TraceParent {
                    trace_id,
                    parent_id,
                    flags: if sampled { SAMPLED } else { 0 },
                };
            }
        }
    }

    /// A new trace, sampled as a trace-id ratio sampler with `ratio` decides (the rule of the
    /// OpenTelemetry SDK, so that a worker's root sampler and a publisher agree on a trace).
    pub fn new_root_at(ratio: f64) -> TraceParent {
        let mut root = TraceParent::new_root(false);
        if ratio_samples(ratio, &root.trace_id) {
            root.flags |= SAMPLED;
        }
        root
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn parent_id_hex(&self) -> String {
        hex::encode(self.parent_id)
    }
}

/// Version 00, whatever version was read: the one this code speaks.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

/// Whether a trace-id ratio sampler keeps `trace_id`: the trace id's low 64 bits, halved,
/// below `ratio` of 2^63.
fn ratio_samples(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

/// `N` bytes from `2N` lowercase hex digits (W3C allows no uppercase).
fn from_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// A `tracestate` worth passing on: printable ASCII, at most [`TRACESTATE_MAX`] characters and
/// [`TRACESTATE_MEMBERS`] members; empty or anything else is dropped (W3C: a vendor may drop
/// a `tracestate` it cannot keep, never the `traceparent`).
pub fn parse_state(value: &[u8]) -> Option<String> {
    let value = value.trim_ascii();
    let ok = !value.is_empty()
        && value.len() <= TRACESTATE_MAX
        && value.iter().all(|b| (0x20..=0x7e).contains(b))
        && value.split(|b| *b == b',').count() <= TRACESTATE_MEMBERS;
    // Printable ASCII is UTF-8.
    ok.then(|| String::from_utf8_lossy(value).into_owned())
}

impl TraceContext {
    pub fn new(parent: TraceParent) -> Self {
        TraceContext {
            parent,
            state: None,
        }
    }

    /// The trace context of an AMQP message. The common case, no `traceparent`, costs one
    /// lookup in the header table.
    pub fn from_amqp(headers: Option<&FieldTable>) -> Option<TraceContext> {
        let headers = headers?.inner();
        let parent = TraceParent::parse(bytes_of(headers.get(TRACEPARENT)?)?)?;
        let state = headers
            .get(TRACESTATE)
            .and_then(bytes_of)
            .and_then(parse_state);
        Some(TraceContext { parent, state })
    }

    /// `headers` with this context added, as long strings (what other clients write).
    pub fn to_amqp(&self, headers: Headers) -> Headers {
        let headers = headers.text(TRACEPARENT, &self.parent.to_string());
        match &self.state {
            Some(state) => headers.text(TRACESTATE, state),
            None => headers,
        }
    }

    /// Adds `traceparent` (and `tracestate`) to an HTTP request's headers.
    pub fn to_http(&self, headers: &mut reqwest::header::HeaderMap) {
        use reqwest::header::HeaderValue;
        // Hex and dashes; a state was checked to be printable ASCII: both always valid values.
        if let Ok(value) = HeaderValue::from_str(&self.parent.to_string()) {
            headers.insert(TRACEPARENT, value);
        }
        if let Some(Ok(value)) = self.state.as_deref().map(HeaderValue::from_str) {
            headers.insert(TRACESTATE, value);
        }
    }
}

/// The bytes of a string header, long or short; other types are not trace context.
fn bytes_of(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    /// The example of the W3C Trace Context recommendation, section 3.2.
    const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses_and_prints_back_the_same() {
        let parent = TraceParent::parse(W3C.as_bytes()).unwrap();
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id_hex(), "00f067aa0ba902b7");
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), W3C);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\n",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value.as_bytes()), None, "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_and_passed_on_as_version_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let parent = TraceParent::parse(later.as_bytes()).unwrap();
        assert_eq!(parent.to_string(), W3C);
    }

    #[test]
    fn a_new_root_has_valid_ids_and_the_sampled_flag_asked_for() {
        let root = TraceParent::new_root(true);
        assert_eq!(TraceParent::parse(root.to_string().as_bytes()), Some(root));
        assert!(root.sampled());
        assert!(!TraceParent::new_root(false).sampled());
        assert_ne!(root.trace_id, TraceParent::new_root(true).trace_id);
    }

    #[test]
    fn a_new_root_is_sampled_by_its_trace_id_as_the_sdk_ratio_sampler_does() {
        let low_half = |b: u8| {
            let mut id = [0u8; 16];
            id[8] = b;
            id
        };
        assert!(ratio_samples(0.5, &low_half(0x7f)));
        assert!(!ratio_samples(0.5, &low_half(0x80)));
        assert!(!ratio_samples(0.0, &low_half(0x00)));
        assert!(ratio_samples(1.0, &low_half(0xff)));
        assert!(TraceParent::new_root_at(1.0).sampled());
        assert!(!TraceParent::new_root_at(0.0).sampled());
    }

    #[test]
    fn tracestate_is_kept_when_short_and_printable_and_dropped_otherwise() {
        assert_eq!(
            parse_state(b" congo=t61rcWkgMzE,rojo=00f067aa0ba902b7 ").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(parse_state(b""), None);
        assert_eq!(parse_state(b"a=1\r\nx-injected: yes"), None);
        assert_eq!(parse_state("a=é".as_bytes()), None);
        assert_eq!(parse_state("a=1,".repeat(33).as_bytes()), None);
        assert_eq!(
            parse_state(format!("a={}", "x".repeat(511)).as_bytes()),
            None
        );
    }

    #[test]
    fn amqp_headers_are_read_as_long_or_short_strings_and_written_as_long_strings() {
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from(TRACEPARENT),
            AMQPValue::ShortString(ShortString::from(W3C)),
        );
        table.insert(
            ShortString::from(TRACESTATE),
            AMQPValue::LongString(LongString::from("rojo=1")),
        );
        let read = TraceContext::from_amqp(Some(&table)).unwrap();
        assert_eq!(read.parent.to_string(), W3C);
        assert_eq!(read.state.as_deref(), Some("rojo=1"));

        let written = read.to_amqp(Headers::default()).into_table();
        assert_eq!(TraceContext::from_amqp(Some(&written)), Some(read));
        assert!(matches!(
            written.inner().get(TRACEPARENT),
            Some(AMQPValue::LongString(_))
        ));
    }

    #[test]
    fn a_message_without_a_valid_traceparent_has_no_context_even_with_a_tracestate() {
        assert_eq!(TraceContext::from_amqp(None), None);
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from(TRACESTATE),
            AMQPValue::LongString(LongString::from("rojo=1")),
        );
        assert_eq!(TraceContext::from_amqp(Some(&table)), None);
        table.insert(ShortString::from(TRACEPARENT), AMQPValue::LongLongInt(7));
        assert_eq!(TraceContext::from_amqp(Some(&table)), None);
    }

    #[test]
    fn http_headers_carry_traceparent_and_tracestate() {
        let mut context = TraceContext::new(TraceParent::parse(W3C.as_bytes()).unwrap());
        context.state = Some("rojo=1".into());
        let mut headers = reqwest::header::HeaderMap::new();
        context.to_http(&mut headers);
        assert_eq!(headers[TRACEPARENT], W3C);
        assert_eq!(headers[TRACESTATE], "rojo=1");
    }
}
