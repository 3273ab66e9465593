//! The two wire formats of DESIGN §3: the Standard Webhooks JSON body and the InPlayer legacy form
//! body. Bodies are built once per event and signed per attempt as the exact bytes sent.

use crate::event::{json_string, Event};
use crate::subscription::Format;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::sync::OnceLock;

/// The largest request body hookrelay sends (DESIGN §4 `body_too_large`): rendering stops
/// as soon as a body would pass it, so no body over it is ever built in full.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The rendered body would exceed [`MAX_BODY_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the rendered request body is over {MAX_BODY_BYTES} bytes")]
pub struct BodyTooLarge;

/// An event ready to send: each body is serialized at most once, whatever the fan-out.
pub struct PreparedEvent {
    pub event: Event,
    standard: OnceLock<Result<Bytes, BodyTooLarge>>,
    inplayer: OnceLock<Result<Bytes, BodyTooLarge>>,
    envelope: OnceLock<Box<RawValue>>,
}

impl PreparedEvent {
    pub fn new(event: Event) -> Self {
        PreparedEvent {
            event,
            standard: OnceLock::new(),
            inplayer: OnceLock::new(),
            envelope: OnceLock::new(),
        }
    }

    /// An event read back from a delivery job, with the envelope ingest accepted: reused as it
    /// is for the next job and the dead letter, never rebuilt.
    pub fn with_envelope(event: Event, envelope: Box<RawValue>) -> Self {
        let prepared = PreparedEvent::new(event);
        // Just created: the cell is empty, so setting it cannot fail.
        let _ = prepared.envelope.set(envelope);
        prepared
    }

    /// The envelope as published (for logs, retries and resends), serialized once.
    pub fn envelope(&self) -> &RawValue {
        self.envelope.get_or_init(|| {
            RawValue::from_string(self.event.to_envelope_json()).expect("an envelope is JSON")
        })
    }

    /// The body in `format`, or why it cannot be sent.
    pub fn body(&self, format: Format) -> Result<Bytes, BodyTooLarge> {
        match format {
            Format::Standard => self
                .standard
                .get_or_init(|| {
                    let body = standard_body(&self.event);
                    (body.len() <= MAX_BODY_BYTES)
                        .then(|| Bytes::from(body))
                        .ok_or(BodyTooLarge)
                })
                .clone(),
            Format::Inplayer => self
                .inplayer
                .get_or_init(|| inplayer_body(&self.event).map(Bytes::from))
                .clone(),
        }
    }
}

/// `{"id","type","timestamp","created","account_id","data"}` with `data` byte for byte.
pub fn standard_body(event: &Event) -> String {
    format!(
        r#"{{"id":{},"type":"{}","timestamp":"{}","created":{},"account_id":{},"data":{}}}"#,
        json_string(event.id.as_str()),
        event.event_type.label(),
        event.created_at_rfc3339(),
        event.created_at.timestamp(),
        json_string(event.account_id.as_str()),
        event.data.get()
    )
}

/// `id`, `created`, `type`, then `resource[…]` from `data` in its key order, form-encoded, at
/// most [`MAX_BODY_BYTES`].
pub fn inplayer_body(event: &Event) -> Result<String, BodyTooLarge> {
    let mut form = Form::default();
    form.pair("id", event.id.as_str())?;
    form.pair("created", &event.created_at.timestamp().to_string())?;
    form.pair("type", event.event_type.label())?;
    flatten(event.data.get(), &mut form)?;
    Ok(form.out)
}

/// A form body that refuses to grow past [`MAX_BODY_BYTES`].
#[derive(Default)]
struct Form {
    out: String,
}

impl Form {
    fn pair(&mut self, key: &str, value: &str) -> Result<(), BodyTooLarge> {
        if !self.out.is_empty() {
            self.out.push('&');
        }
        self.out
            .extend(url::form_urlencoded::byte_serialize(key.as_bytes()));
        self.out.push('=');
        self.out
            .extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
        if self.out.len() > MAX_BODY_BYTES {
            return Err(BodyTooLarge);
        }
        Ok(())
    }
}

/// One open object or array while walking `data`: where its key path ends in `path`, and the
/// next index for an array.
struct Frame {
    path_len: usize,
    next_index: Option<usize>,
}

/// Walks the raw JSON of `data` with an explicit stack (never recursion: depth is the
/// input's to choose) and writes one `resource[a][b]…` pair per leaf: strings as themselves,
/// numbers and booleans as their published text (`10.00` stays `10.00`), null as empty.
/// Duplicate keys are kept, in order. `json` is valid JSON (ingest checked it); anything else
/// ends the walk where it stops making sense rather than panicking.
fn flatten(json: &str, form: &mut Form) -> Result<(), BodyTooLarge> {
    let mut flattener = Flattener {
        scan: Scanner::new(json),
        path: String::from("resource"),
        stack: Vec::new(),
    };
    let mut next = Next::Value;
    loop {
        flattener.scan.skip_insignificant();
        next = match next {
            Next::Value => flattener.value(form)?,
            Next::Punctuation => flattener.punctuation(),
            Next::Done => return Ok(()),
        };
    }
}

/// What [`flatten`] reads next.
enum Next {
    /// A value: an object, an array or a scalar.
    Value,
    /// After a value, or just inside an object: a key, a comma or a closing bracket.
    Punctuation,
    Done,
}

/// The state of [`flatten`]: where it is in the text, the bracketed path of the current value
/// (`resource[a][0]`), and the containers open around it (an explicit stack, no recursion).
struct Flattener<'a> {
    scan: Scanner<'a>,
    path: String,
    stack: Vec<Frame>,
}

impl Flattener<'_> {
    /// A value: opens a container, or writes a scalar's pair to `form`.
    fn value(&mut self, form: &mut Form) -> Result<Next, BodyTooLarge> {
        match self.scan.peek() {
            Some(b'{') => {
                self.scan.bump();
                self.stack.push(Frame {
                    path_len: self.path.len(),
                    next_index: None,
                });
            }
            Some(b'[') => {
                self.scan.bump();
                self.stack.push(Frame {
                    path_len: self.path.len(),
                    next_index: Some(0),
                });
                // An empty array closes at once; otherwise its first item follows.
                self.scan.skip_insignificant();
                if self.scan.peek() != Some(b']') {
                    push_index(&mut self.path, self.stack.last_mut());
                    return Ok(Next::Value);
                }
            }
            Some(b'"') => {
                let value = self.scan.string();
                form.pair(&self.path, &value)?;
            }
            Some(_) => {
                let token = self.scan.bare_token();
                form.pair(&self.path, if token == "null" { "" } else { token })?;
            }
            None => return Ok(Next::Done),
        }
        Ok(Next::Punctuation)
    }

    /// A key of an object, a comma, or a closing bracket.
    fn punctuation(&mut self) -> Next {
        let Some(frame) = self.stack.last_mut() else {
            return Next::Done;
        };
        match self.scan.peek() {
            Some(b'}') | Some(b']') => {
                self.scan.bump();
                let frame = self.stack.pop().expect("a frame is open");
                self.path.truncate(frame.path_len);
                if self.stack.is_empty() {
                    return Next::Done;
                }
                Next::Punctuation
            }
            Some(b',') => {
                self.scan.bump();
                self.path.truncate(frame.path_len);
                if frame.next_index.is_some() {
                    push_index(&mut self.path, Some(frame));
                    return Next::Value;
                }
                Next::Punctuation
            }
            Some(b'"') => {
                // A key of an object (the first member, or one after a comma).
                let key = self.scan.string();
                self.path.truncate(frame.path_len);
                self.path.push('[');
                self.path.push_str(&key);
                self.path.push(']');
                self.scan.skip_insignificant();
                if self.scan.peek() == Some(b':') {
                    self.scan.bump();
                }
                Next::Value
            }
            _ => Next::Done,
        }
    }
}

fn push_index(path: &mut String, frame: Option<&mut Frame>) {
    if let Some(Frame {
        next_index: Some(i),
        ..
    }) = frame
    {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(path, "[{i}]");
        *i += 1;
    }
}

/// A cursor over JSON text.
struct Scanner<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            bytes: text.as_bytes(),
            text,
            at: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn bump(&mut self) {
        self.at += 1;
    }

    fn skip_insignificant(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A number, `true`, `false` or `null`: its text as published.
    fn bare_token(&mut self) -> &'a str {
        let start = self.at;
        while let Some(b) = self.peek() {
            if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.at += 1;
        }
        if self.at == start {
            // Not a token at all: step over the byte so the walk always advances.
            self.at += 1;
            return "";
        }
        &self.text[start..self.at]
    }

    /// A string literal at the cursor, unescaped; a lone surrogate escape becomes U+FFFD.
    fn string(&mut self) -> String {
        self.at += 1; // the opening quote
        let start = self.at;
        let mut out = String::new();
        let mut run_start = start;
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    out.push_str(&self.text[run_start..self.at]);
                    self.at += 1;
                    return out;
                }
                b'\\' => {
                    out.push_str(&self.text[run_start..self.at]);
                    self.at += 1;
                    self.escape(&mut out);
                    run_start = self.at;
                }
                _ => self.at += 1,
            }
        }
        out.push_str(&self.text[run_start..]);
        out
    }

    fn escape(&mut self, out: &mut String) {
        let Some(b) = self.peek() else { return };
        self.at += 1;
        match b {
            b'n' => out.push('\n'),
            b't' => out.push('\t'),
            b'r' => out.push('\r'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'u' => {
                let Some(unit) = self.hex4() else { return };
                let c = match unit {
                    0xD800..=0xDBFF => self.low_surrogate_after(unit),
                    0xDC00..=0xDFFF => None,
                    _ => char::from_u32(u32::from(unit)),
                };
                out.push(c.unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            // `"`, `\\`, `/`: the character itself.
            other => out.push(char::from(other)),
        }
    }

    /// The character of a surrogate pair whose high half is `high`, if `\uDC00`-`\uDFFF`
    /// follows; otherwise nothing is consumed.
    fn low_surrogate_after(&mut self, high: u16) -> Option<char> {
        if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
            return None;
        }
        let save = self.at;
        self.at += 2;
        match self.hex4() {
            Some(low @ 0xDC00..=0xDFFF) => {
                let c = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                char::from_u32(c)
            }
            _ => {
                self.at = save;
                None
            }
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.text.get(self.at..self.at + 4)?;
        let unit = u16::from_str_radix(digits, 16).ok()?;
        self.at += 4;
        Some(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event {
        let body = format!(
            r#"{{"id":"evt_1","type":"payment.card.success","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{data}}}"#
        );
        Event::parse(
            body.as_bytes(),
            "payment.card.success",
            crate::event::Limits::NONE,
        )
        .unwrap()
    }

    #[test]
    fn inplayer_vector_body_reproduces_byte_for_byte() {
        let e = event(r#"{"amount":"10.00","currency_iso":"EUR"}"#);
        assert_eq!(
            inplayer_body(&e).unwrap(),
            "id=evt_1&created=1795745061&type=payment.card.success&resource%5Bamount%5D=10.00&resource%5Bcurrency_iso%5D=EUR"
        );
    }

    #[test]
    fn inplayer_form_flattens_nested_values_keeping_number_text_and_order() {
        let e = event(r#"{"z":1.50,"a":{"b":[true,null,"x y"]}}"#);
        assert_eq!(
            inplayer_body(&e).unwrap(),
            "id=evt_1&created=1795745061&type=payment.card.success&resource%5Bz%5D=1.50&resource%5Ba%5D%5Bb%5D%5B0%5D=true&resource%5Ba%5D%5Bb%5D%5B1%5D=&resource%5Ba%5D%5Bb%5D%5B2%5D=x+y"
        );
    }

    #[test]
    fn standard_body_passes_data_through_untouched() {
        let e = event(r#"{"amount": 10.00, "currency_iso":"EUR"}"#);
        assert_eq!(
            standard_body(&e),
            r#"{"id":"evt_1","type":"payment.card.success","timestamp":"2026-11-27T02:04:21Z","created":1795745061,"account_id":"68","data":{"amount": 10.00, "currency_iso":"EUR"}}"#
        );
    }

    #[test]
    fn inplayer_edge_cases_are_deterministic() {
        // Numbers keep their text, a lone surrogate becomes U+FFFD, duplicate keys keep their
        // order, escapes and pairs decode, empty containers add nothing.
        let e = event(
            r#"{"n":1e400,"s":"\ud800x","k":1,"k":2,"p":"\ud83d\ude00\n","e":{},"a":[],"q":"a\"b"}"#,
        );
        assert_eq!(
            inplayer_body(&e).unwrap(),
            "id=evt_1&created=1795745061&type=payment.card.success&resource%5Bn%5D=1e400&resource%5Bs%5D=%EF%BF%BDx&resource%5Bk%5D=1&resource%5Bk%5D=2&resource%5Bp%5D=%F0%9F%98%80%0A&resource%5Bq%5D=a%22b"
        );
    }

    #[test]
    fn inplayer_arrays_of_containers_are_indexed_in_order() {
        let e = event(r#"{"a":[{"x":1},[2,3], "y"],"b" : null}"#);
        assert_eq!(
            inplayer_body(&e).unwrap(),
            "id=evt_1&created=1795745061&type=payment.card.success&resource%5Ba%5D%5B0%5D%5Bx%5D=1&resource%5Ba%5D%5B1%5D%5B0%5D=2&resource%5Ba%5D%5B1%5D%5B1%5D=3&resource%5Ba%5D%5B2%5D=y&resource%5Bb%5D="
        );
    }

    #[test]
    fn a_form_body_over_one_mebibyte_is_refused_before_it_is_built() {
        // 200 KB of key repeated for each of 2,000 leaves would be 400 MB of form.
        let key = "k".repeat(100_000);
        let items = vec!["1"; 2_000].join(",");
        let e = event(&format!(r#"{{"{key}":[{items}]}}"#));
        assert_eq!(inplayer_body(&e), Err(BodyTooLarge));
    }

    #[test]
    fn deep_nesting_renders_without_recursion() {
        let levels = 100_000;
        let e = event(&format!(
            r#"{{"a":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        ));
        let body = inplayer_body(&e).unwrap();
        assert!(body.ends_with("%5B0%5D=1"));
    }
}
