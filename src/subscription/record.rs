//! A webhook as stored in Redis: its JSON record, the sealing of its secrets at rest with
//! `redis.secret_key` (XChaCha20-Poly1305, bound to the account and webhook id), and what can be
//! salvaged of a record that does not read.

use super::secret::Secret;
use super::{EventFilter, Format, PreviousSecret, RateLimit, Webhook, WebhookId, WebhookUrl};
use crate::config::SecretKey;
use crate::event::AccountId;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why one stored webhook cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a webhook record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("its secret is encrypted, and redis.secret_key is not set")]
    SecretNeedsKey,
    #[error("its secret does not decrypt with this redis.secret_key")]
    SecretWrongKey,
    #[error("its secret is invalid")]
    SecretInvalid,
    #[error("its account id is invalid")]
    Account,
}

/// A stored webhook that could not be read, with whatever of it could be: its deliveries are
/// dead-lettered as `webhook_unreadable` (DESIGN §4) instead of failing the account's lookup.
#[derive(Debug)]
pub struct UnreadableWebhook {
    /// The hash field it is stored under: its id, kept even if malformed so that on-call can
    /// find the record.
    pub id: String,
    pub url: Option<String>,
    pub events: Option<EventFilter>,
    pub enabled: Option<bool>,
    pub error: RecordError,
}

impl UnreadableWebhook {
    /// Whether an event of type `t` may have been meant for it: when its filter or its
    /// enabled flag cannot be read either, every event might be (at-least-once).
    pub fn may_match(&self, t: crate::event::EventType) -> bool {
        self.enabled != Some(false) && self.events.is_none_or(|e| e.matches(t))
    }

    /// Reads what can be read of a record that did not decode.
    pub(super) fn salvage(id: String, json: &str, error: RecordError) -> Self {
        #[derive(Deserialize)]
        struct Partial {
            url: Option<Box<serde_json::value::RawValue>>,
            events: Option<Box<serde_json::value::RawValue>>,
            enabled: Option<bool>,
        }
        let partial: Option<Partial> = serde_json::from_str(json).ok();
        let field = |raw: &Option<Box<serde_json::value::RawValue>>| {
            raw.as_ref().map(|r| r.get().to_owned())
        };
        let (url, events, enabled) = match &partial {
            Some(p) => (
                field(&p.url).and_then(|u| serde_json::from_str::<String>(&u).ok()),
                field(&p.events).and_then(|e| serde_json::from_str::<EventFilter>(&e).ok()),
                p.enabled,
            ),
            None => (None, None, None),
        };
        UnreadableWebhook {
            id,
            url,
            events,
            enabled,
            error,
        }
    }
}

/// The stored form; the secret is kept because workers sign with it. It is also the line format
/// of `webhooks export` and `import` (see `backup`).
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Stored {
    id: WebhookId,
    account_id: String,
    url: WebhookUrl,
    events: EventFilter,
    secret: String,
    #[serde(default)]
    previous_secret: Option<String>,
    #[serde(default)]
    previous_secret_until: Option<DateTime<Utc>>,
    format: Format,
    enabled: bool,
    description: String,
    created_at: DateTime<Utc>,
    #[serde(default)]
    disabled_reason: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
}

/// Seals secrets at rest with `redis.secret_key`. A sealed secret is `sealed:v1:` and the base64
/// of a random 24-byte nonce and the ciphertext; the account and webhook id are its associated
/// data, so a sealed secret copied onto another webhook does not open.
#[derive(Clone)]
pub(super) struct Sealer(XChaCha20Poly1305);

pub(super) const SEALED: &str = "sealed:v1:";

impl Sealer {
    pub(super) fn new(key: &SecretKey) -> Sealer {
        Sealer(XChaCha20Poly1305::new(&key.0.into()))
    }

    pub(super) fn seal(&self, secret: &Secret, aad: &str) -> String {
        // 24 random bytes: XChaCha's nonce is long enough to be drawn at random without a
        // realistic chance of repeating.
        let nonce: [u8; 24] = rand::random();
        let payload = Payload {
            msg: secret.expose().as_bytes(),
            aad: aad.as_bytes(),
        };
        // Encryption only fails for messages of gigabytes; a secret is under 100 bytes.
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("a secret seals");
        format!("{SEALED}{}", B64.encode([&nonce[..], &sealed].concat()))
    }

    pub(super) fn open(&self, sealed: &str, aad: &str) -> Option<String> {
        let bytes = B64.decode(sealed).ok()?;
        if bytes.len() < 24 {
            return None;
        }
        let (nonce, msg) = bytes.split_at(24);
        let payload = Payload {
            msg,
            aad: aad.as_bytes(),
        };
        let plain = self.0.decrypt(XNonce::from_slice(nonce), payload).ok()?;
        String::from_utf8(plain).ok()
    }
}

/// The stored form of a secret: sealed when there is a key, else the secret itself.
fn seal_secret(sealer: Option<&Sealer>, secret: &Secret, aad: &str) -> String {
    match sealer {
        Some(sealer) => sealer.seal(secret, aad),
        None => secret.expose().to_owned(),
    }
}

fn open_secret(sealer: Option<&Sealer>, stored: &str, aad: &str) -> Result<Secret, RecordError> {
    let text = match (stored.strip_prefix(SEALED), sealer) {
        (None, _) => stored.to_owned(),
        (Some(_), None) => return Err(RecordError::SecretNeedsKey),
        (Some(sealed), Some(sealer)) => sealer
            .open(sealed, aad)
            .ok_or(RecordError::SecretWrongKey)?,
    };
    Secret::parse(&text).map_err(|_| RecordError::SecretInvalid)
}

impl Stored {
    fn from_webhook(w: &Webhook, sealer: Option<&Sealer>) -> Stored {
        let aad = format!("{}/{}", w.account_id, w.id);
        Stored {
            id: w.id.clone(),
            account_id: w.account_id.as_str().to_owned(),
            url: w.url.clone(),
            events: w.events,
            secret: seal_secret(sealer, &w.secret, &aad),
            previous_secret: w
                .previous_secret
                .as_ref()
                .map(|p| seal_secret(sealer, &p.secret, &aad)),
            previous_secret_until: w.previous_secret.as_ref().map(|p| p.until),
            format: w.format,
            enabled: w.enabled,
            description: w.description.clone(),
            created_at: w.created_at,
            disabled_reason: w.disabled_reason.clone(),
            rate_limit: w.rate_limit,
        }
    }

    /// A stored record read without opening its secrets (export and import move them sealed).
    pub(super) fn parse(json: &str) -> Result<Stored, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The record's JSON, as [`encode`] writes it.
    pub(super) fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string(self).expect("webhook serializes")
    }

    pub(super) fn id(&self) -> &WebhookId {
        &self.id
    }

    pub(super) fn account(&self) -> &str {
        &self.account_id
    }

    pub(super) fn url(&self) -> &WebhookUrl {
        &self.url
    }

    pub(super) fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    pub(super) fn into_webhook(self, sealer: Option<&Sealer>) -> Result<Webhook, RecordError> {
        let aad = format!("{}/{}", self.account_id, self.id);
        let previous_secret = match (self.previous_secret, self.previous_secret_until) {
            (Some(s), Some(until)) => Some(PreviousSecret {
                secret: open_secret(sealer, &s, &aad)?,
                until,
            }),
            _ => None,
        };
        Ok(Webhook {
            id: self.id,
            account_id: AccountId::parse(&self.account_id).ok_or(RecordError::Account)?,
            url: self.url,
            events: self.events,
            secret: open_secret(sealer, &self.secret, &aad)?,
            previous_secret,
            format: self.format,
            enabled: self.enabled,
            description: self.description,
            created_at: self.created_at,
            disabled_reason: self.disabled_reason,
            rate_limit: self.rate_limit,
        })
    }
}

pub(super) fn encode(w: &Webhook, sealer: Option<&Sealer>) -> String {
    // Plain data with string keys: serialization cannot fail.
    serde_json::to_string(&Stored::from_webhook(w, sealer)).expect("webhook serializes")
}

pub(super) fn decode(json: &str, sealer: Option<&Sealer>) -> Result<Webhook, RecordError> {
    serde_json::from_str::<Stored>(json)?.into_webhook(sealer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&SecretKey([byte; 32]))
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_webhook() {
        let secret = Secret::generate();
        let stored = seal_secret(Some(&sealer(1)), &secret, "68/wh_a");

        assert!(stored.starts_with(SEALED));
        assert!(!stored.contains(secret.expose()));
        let opened = open_secret(Some(&sealer(1)), &stored, "68/wh_a").unwrap();
        assert_eq!(opened.expose(), secret.expose());
        assert!(open_secret(Some(&sealer(2)), &stored, "68/wh_a").is_err());
        assert!(open_secret(Some(&sealer(1)), &stored, "68/wh_b").is_err());
        let err = open_secret(None, &stored, "68/wh_a").unwrap_err();
        assert!(err.to_string().contains("redis.secret_key"), "{err}");
    }

    #[test]
    fn plain_secrets_stay_readable_with_or_without_a_key() {
        let secret = Secret::generate();
        let stored = seal_secret(None, &secret, "68/wh_a");

        assert_eq!(stored, secret.expose());
        for key in [None, Some(sealer(1))] {
            let opened = open_secret(key.as_ref(), &stored, "68/wh_a").unwrap();
            assert_eq!(opened.expose(), secret.expose());
        }
    }
}
