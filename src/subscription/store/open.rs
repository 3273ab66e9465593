//! Opening a store: its connection in any of the Redis modes, its options (replicas that must
//! confirm a write, the key that seals secrets), and the marker that says a store is there.

use super::{Store, StoreError};
use crate::config::SecretKey;
use crate::subscription::connection::RedisConn;
use crate::subscription::marker::{self, Marker, StoreMissing};
use crate::subscription::record::Sealer;
use std::time::Duration;

impl Store {
    /// A store on the single server at `url` (tests and tools; `from_settings` for every mode).
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Store, StoreError> {
        let conn = RedisConn::single(url, timeout).await?;
        Ok(Store::on(
            conn,
            prefix,
            timeout,
            marker::location_of_url(url),
        ))
    }

    fn on(conn: RedisConn, prefix: &str, timeout: Duration, location: String) -> Store {
        Store {
            conn,
            prefix: prefix.to_owned(),
            location,
            timeout,
            sealer: None,
            min_replicas: 0,
        }
    }

    /// Makes create, update, rotate-secret, delete and import return only once `replicas`
    /// replicas confirm the write (`redis.min_replicas`); 0: once the primary has it.
    pub fn with_min_replicas(mut self, replicas: u32) -> Store {
        self.min_replicas = replicas;
        self
    }

    /// Waits until `redis.min_replicas` replicas have every write this store's connection made
    /// so far, asking the master of each of `keys`' slots on a cluster (every master when
    /// `keys` is empty). `WAIT` gets half the lookup timeout, so that its answer arrives
    /// before the connection's own timeout.
    ///
    /// Limitation: `WAIT` counts the writes of the connection it is sent on. Should the
    /// connection be replaced between the write and the `WAIT` (a reconnect), the new one has
    /// made no write and the `WAIT` confirms at once; the write itself then most likely failed
    /// with the connection and was reported.
    pub(crate) async fn confirm(&self, keys: &[&str]) -> Result<(), StoreError> {
        if self.min_replicas == 0 {
            return Ok(());
        }
        let wait = self.timeout / 2;
        let confirmed = self
            .timed(self.conn.wait_replicas(keys, self.min_replicas, wait))
            .await?;
        if confirmed < self.min_replicas {
            return Err(StoreError::Unconfirmed {
                wanted: self.min_replicas,
                confirmed,
                timeout: wait,
            });
        }
        Ok(())
    }

    /// Encrypts webhook secrets with `key` (`redis.secret_key`) when writing, and decrypts them
    /// when reading. Without a key, secrets are written in plain text (the long-running
    /// commands, worker and api, warn about it at start-up).
    pub fn with_secret_key(mut self, key: Option<&SecretKey>) -> Store {
        self.sealer = key.map(Sealer::new);
        self
    }

    /// Connects with the `[redis]` settings: mode, URLs, TLS, prefix, lookup timeout and
    /// secret key.
    pub async fn from_settings(redis: &crate::config::RedisSettings) -> Result<Store, StoreError> {
        let conn = RedisConn::connect(redis).await?;
        Ok(Store::on(
            conn,
            &redis.prefix,
            redis.lookup_timeout,
            marker::location(redis),
        )
        .with_secret_key(redis.secret_key.as_ref())
        .with_min_replicas(redis.min_replicas))
    }

    /// The connection, for what needs more than the store's operations (pub/sub).
    pub fn redis(&self) -> &RedisConn {
        &self.conn
    }

    /// Whether secrets are encrypted at rest.
    pub fn seals_secrets(&self) -> bool {
        self.sealer.is_some()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where this store's Redis is (address and database, no credentials), for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The store's marker, `None` when it is missing.
    pub async fn marker(&self) -> Result<Option<Marker>, StoreError> {
        self.timed_store(marker::read(&self.conn, &self.prefix))
            .await
    }

    /// The store's marker, or [`StoreError::Missing`] naming where it was looked for: what
    /// everything but `store init` and `webhooks import --init-store` checks before working.
    pub async fn require_marker(&self) -> Result<Marker, StoreError> {
        self.marker().await?.ok_or_else(|| self.missing().into())
    }

    /// The error for a store without its marker.
    pub fn missing(&self) -> StoreMissing {
        StoreMissing {
            location: self.location.clone(),
            prefix: self.prefix.clone(),
        }
    }

    /// Writes the marker unless one exists (`hookrelay store init`); `true` if this created it.
    pub async fn init_marker(&self) -> Result<(Marker, bool), StoreError> {
        self.timed_store(marker::init_reporting(&self.conn, &self.prefix))
            .await
    }
}
