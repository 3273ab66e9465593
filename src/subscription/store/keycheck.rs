//! The start-up check that `redis.secret_key` opens the secrets already stored: a worker or
//! API with the wrong key (or none) refuses to start instead of failing every delivery.

use super::{Store, StoreError};
use crate::subscription::record::{decode, RecordError, SEALED};
use crate::subscription::secret::Secret;
use redis::AsyncCommands;

/// The associated data of the key-check value (see [`Store::verify_secret_key`]).
const KEY_CHECK_AAD: &str = "hookrelay secret-key-check";
/// Stored webhooks tried when no key-check value exists yet, and SCAN calls to find them.
const KEY_CHECK_SAMPLE: usize = 100;
const KEY_CHECK_SCANS: usize = 20;

/// Why the configured `redis.secret_key` cannot be used with what is stored.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error("webhook secrets under redis prefix {0:?} are encrypted, but redis.secret_key is not set: set the key they were encrypted with")]
    KeyMissing(String),
    #[error("redis.secret_key does not open the webhook secrets stored under redis prefix {0:?} (they were encrypted with another key): set the key they were encrypted with")]
    WrongKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Refuses a `redis.secret_key` (or its absence) that cannot open the secrets already
    /// stored under this prefix, so that a worker or API with the wrong key stops at start-up
    /// instead of failing every delivery of every account with an encrypted secret.
    ///
    /// The first process with a key stores a check value sealed with it
    /// (`<prefix>:secret-key-check`); later ones must open it. Before the check value exists,
    /// a bounded sample of stored webhooks is tried instead.
    pub async fn verify_secret_key(&self) -> Result<(), KeyCheckError> {
        let check_key = format!("{}:secret-key-check", self.prefix);
        let mut conn = self.conn.clone();
        let stored: Option<String> = self.timed(conn.get(&check_key)).await?;
        if let Some(sealed) = stored {
            let sealed = sealed.strip_prefix(SEALED).unwrap_or(&sealed);
            return match &self.sealer {
                None => Err(KeyCheckError::KeyMissing(self.prefix.clone())),
                Some(sealer) if sealer.open(sealed, KEY_CHECK_AAD).is_none() => {
                    Err(KeyCheckError::WrongKey(self.prefix.clone()))
                }
                Some(_) => Ok(()),
            };
        }
        self.verify_sample().await?;
        if let Some(sealer) = &self.sealer {
            let sealed = sealer.seal(&Secret::generate(), KEY_CHECK_AAD);
            let _: bool = self.timed(conn.set_nx(&check_key, sealed)).await?;
        }
        Ok(())
    }

    /// Tries to open the secrets of up to [`KEY_CHECK_SAMPLE`] stored webhooks.
    async fn verify_sample(&self) -> Result<(), KeyCheckError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:{{*}}:webhooks", self.prefix);
        let mut cursor = 0u64;
        let mut tried = 0;
        for _ in 0..KEY_CHECK_SCANS {
            let (next, keys): (u64, Vec<String>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            for key in keys {
                let values: Vec<String> = self.timed(conn.hvals(&key)).await?;
                for json in values {
                    match decode(&json, self.sealer.as_ref()) {
                        Err(RecordError::SecretNeedsKey) => {
                            return Err(KeyCheckError::KeyMissing(self.prefix.clone()))
                        }
                        Err(RecordError::SecretWrongKey) => {
                            return Err(KeyCheckError::WrongKey(self.prefix.clone()))
                        }
                        _ => tried += 1,
                    }
                    if tried >= KEY_CHECK_SAMPLE {
                        return Ok(());
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(())
    }
}
