//! A webhook secret (DESIGN §3): `whsec_<base64>` of a 24 to 64-byte key. It belongs to the
//! webhook; [`crate::delivery::signing`] signs with it.

mod schedule;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
pub use schedule::KeySchedule;
use std::fmt;

const SECRET_PREFIX: &str = "whsec_";

/// A webhook secret `whsec_<base64>` whose key is 24 to 64 bytes. The string form is kept too:
/// the InPlayer signature is keyed with the whole string. The key's HMAC schedule is computed
/// once, here, rather than in every signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
    schedule: KeySchedule,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a secret starts with `whsec_`")]
    MissingPrefix,
    #[error("the part after `whsec_` is not base64")]
    NotBase64,
    #[error("the key is {0} bytes; 24 to 64 are accepted")]
    BadLength(usize),
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = B64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(Secret {
            text: text.to_owned(),
            schedule: KeySchedule::new(&key),
            key,
        })
    }

    /// 32 fresh random bytes.
    pub fn generate() -> Secret {
        let key: [u8; 32] = rand::random();
        Secret {
            text: format!("{SECRET_PREFIX}{}", B64.encode(key)),
            key: key.to_vec(),
            schedule: KeySchedule::new(&key),
        }
    }

    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The HMAC key of the Standard Webhooks signature (the decoded part after `whsec_`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// HMAC-SHA256 keyed with [`Secret::key`], of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.schedule.mac(parts)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}
