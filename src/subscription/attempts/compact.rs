//! The attempt log's record as stored: one JSON array per attempt,
//! `[1, at_us, attempt, event_id, event_type, status, error, duration_ms, excerpt, event]`,
//! encoded once by the handler that made the attempt, straight from its report (no copy of the
//! envelope or the excerpt into an owned record first, no RFC 3339 formatting, no field names).
//! The leading `1` is the encoding's version; records written before it (JSON objects with
//! named fields) are still read, so a log written by an older worker stays readable.

use super::AttemptRecord;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

/// Version of the array encoding, its first element.
const VERSION: u8 = 1;

/// One attempt, encoded for the log, with what the writer needs of it without decoding.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Unix seconds of the attempt (the "failing since" mark).
    pub at: i64,
    /// A 2xx answer.
    pub succeeded: bool,
    /// The stored record.
    pub bytes: Vec<u8>,
}

/// The fields of one attempt, borrowed from its report and its event.
pub struct Fields<'a> {
    pub at: DateTime<Utc>,
    pub attempt: u32,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub duration_ms: u64,
    pub response_excerpt: &'a str,
    /// The envelope, kept for resending (absent above `RESEND_MAX_BYTES`).
    pub event: Option<&'a RawValue>,
}

impl Fields<'_> {
    /// Encodes the record once, into one buffer sized for it.
    pub fn encode(&self) -> Entry {
        let size = 64
            + self.event_id.len()
            + self.event_type.len()
            + self.error.map_or(0, str::len)
            + self.response_excerpt.len()
            + self.event.map_or(0, |e| e.get().len());
        let mut bytes = Vec::with_capacity(size);
        let tuple = (
            VERSION,
            self.at.timestamp_micros(),
            self.attempt,
            self.event_id,
            self.event_type,
            self.status,
            self.error,
            self.duration_ms,
            self.response_excerpt,
            self.event,
        );
        serde_json::to_writer(&mut bytes, &tuple).expect("writing to a Vec cannot fail");
        Entry {
            at: self.at.timestamp(),
            succeeded: self.status.is_some_and(|s| (200..300).contains(&s)),
            bytes,
        }
    }
}

impl AttemptRecord {
    /// This record in the stored encoding.
    pub fn entry(&self) -> Entry {
        Fields {
            at: self.at,
            attempt: self.attempt,
            event_id: &self.event_id,
            event_type: &self.event_type,
            status: self.status,
            error: self.error.as_deref(),
            duration_ms: self.duration_ms,
            response_excerpt: &self.response_excerpt,
            event: self.event.as_deref(),
        }
        .encode()
    }
}

/// The array form, as read back.
type Stored = (
    u8,
    i64,
    u32,
    String,
    String,
    Option<u16>,
    Option<String>,
    u64,
    String,
    Option<Box<RawValue>>,
);

/// Reads a stored record in either encoding: the array (since version 1) or the object of
/// older workers.
pub fn decode(stored: &str) -> Result<AttemptRecord, serde_json::Error> {
    if !stored.starts_with('[') {
        return serde_json::from_str(stored);
    }
    let (version, at_us, attempt, event_id, event_type, status, error, duration_ms, excerpt, event): Stored =
        serde_json::from_str(stored)?;
    if version != VERSION {
        return Err(serde::de::Error::custom(format_args!(
            "attempt record version {version} is not {VERSION}"
        )));
    }
    Ok(AttemptRecord {
        at: DateTime::from_timestamp_micros(at_us).unwrap_or_default(),
        attempt,
        event_id,
        event_type,
        status,
        error,
        duration_ms,
        response_excerpt: excerpt,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(event: Option<&RawValue>) -> Fields<'_> {
        Fields {
            at: DateTime::from_timestamp_micros(1_796_000_000_123_456).unwrap(),
            attempt: 3,
            event_id: "evt_1",
            event_type: "payment.card.success",
            status: Some(503),
            error: None,
            duration_ms: 12,
            response_excerpt: "busy \"now\"\n",
            event,
        }
    }

    #[test]
    fn an_encoded_record_reads_back_field_for_field() {
        let envelope =
            RawValue::from_string(r#"{"id":"evt_1","data":{"a":1e400}}"#.into()).unwrap();
        let entry = fields(Some(&envelope)).encode();
        let record = decode(std::str::from_utf8(&entry.bytes).unwrap()).unwrap();
        assert_eq!(record.at.timestamp_micros(), 1_796_000_000_123_456);
        assert_eq!(record.attempt, 3);
        assert_eq!(record.event_id, "evt_1");
        assert_eq!(record.event_type, "payment.card.success");
        assert_eq!(record.status, Some(503));
        assert_eq!(record.error, None);
        assert_eq!(record.duration_ms, 12);
        assert_eq!(record.response_excerpt, "busy \"now\"\n");
        assert_eq!(record.event.unwrap().get(), envelope.get());
        assert_eq!((entry.at, entry.succeeded), (1_796_000_000, false));
    }

    #[test]
    fn a_record_without_its_envelope_reads_back_without_one() {
        let entry = fields(None).encode();
        let record = decode(std::str::from_utf8(&entry.bytes).unwrap()).unwrap();
        assert!(record.event.is_none());
    }

    #[test]
    fn records_written_by_older_workers_as_objects_are_still_read() {
        let old = r#"{"at":"2026-11-30T10:00:00.5Z","attempt":1,"event_id":"evt_9","event_type":"payment.card.success","status":200,"error":null,"duration_ms":4,"response_excerpt":"ok"}"#;
        let record = decode(old).unwrap();
        assert_eq!(record.event_id, "evt_9");
        assert_eq!(record.status, Some(200));
        assert_eq!(record.at.timestamp_millis(), 1_796_032_800_500);
    }

    #[test]
    fn a_record_of_an_unknown_version_is_refused() {
        let future = r#"[2,0,1,"e","t",200,null,1,"",null]"#;
        assert!(decode(future).is_err());
    }
}
