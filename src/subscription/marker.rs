//! The store's identity (DESIGN §5 "The store"): the key `<prefix>:store` holds a [`Marker`]
//! (a random store id, when it was created, the layout version), written once by
//! `hookrelay store init` (or `webhooks import --init-store`) and read by everything else.
//!
//! Redis that lost its data (a restart without persistence, a failover to an unsynced replica,
//! a `FLUSHALL`) or a worker pointed at the wrong database or prefix looks exactly like a store
//! whose accounts have no webhooks. The marker tells the two apart: no marker, no work.
//!
//! The key carries no account hash tag, so on a Redis Cluster it lives in a slot of its own:
//! it is always read as a command of its own, never inside an account's atomic pipeline.

use super::connection::RedisConn;
use super::store::StoreError;
use crate::config::{RedisMode, RedisSettings};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The key layout this hookrelay reads and writes (DESIGN §5); a marker names the one its
/// store was written with.
pub const LAYOUT_VERSION: u32 = 1;

/// The marker's key under `prefix`.
pub fn key(prefix: &str) -> String {
    format!("{prefix}:store")
}

/// What `<prefix>:store` holds (as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// `st_` and 24 alphanumerics, random: a store restored or re-created gets a new one.
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub layout: u32,
}

impl Marker {
    fn generate() -> Marker {
        Marker {
            id: format!("st_{}", crate::random_token(24)),
            created_at: Utc::now(),
            layout: LAYOUT_VERSION,
        }
    }
}

/// No marker where one was expected: the store is new, lost, or not the one configured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "no hookrelay store at {location}, redis.prefix {prefix:?} (the key {prefix}:store is \
     missing): for a new install run `hookrelay store init`; if the store was lost (Redis \
     restarted without persistence, failed over to an empty replica, flushed), restore the last \
     export with `hookrelay webhooks import --init-store FILE`; otherwise check redis.url (its \
     database), redis.mode and redis.prefix"
)]
pub struct StoreMissing {
    /// Where Redis was looked for, without credentials (address, database).
    pub location: String,
    pub prefix: String,
}

/// Reads the marker; `None` when the key is absent.
pub async fn read(conn: &RedisConn, prefix: &str) -> Result<Option<Marker>, StoreError> {
    let mut conn = conn.clone();
    let text: Option<String> = redis::cmd("GET")
        .arg(key(prefix))
        .query_async(&mut conn)
        .await?;
    Ok(match text {
        Some(text) => Some(serde_json::from_str(&text)?),
        None => None,
    })
}

/// Writes a new marker unless one exists (`SET NX`), and returns the marker now stored.
/// Idempotent: a second call, or one racing another, returns the first one written.
pub async fn init(conn: &RedisConn, prefix: &str) -> Result<Marker, StoreError> {
    Ok(init_reporting(conn, prefix).await?.0)
}

/// [`init`], also saying whether this call created the marker (`true`) or found one.
pub async fn init_reporting(conn: &RedisConn, prefix: &str) -> Result<(Marker, bool), StoreError> {
    // Twice at most: the marker can only vanish between the two commands if someone deletes
    // it at that moment, and then the second pass writes it.
    for _ in 0..2 {
        let fresh = Marker::generate();
        let mut c = conn.clone();
        let created: Option<String> = redis::cmd("SET")
            .arg(key(prefix))
            .arg(serde_json::to_string(&fresh)?)
            .arg("NX")
            .query_async(&mut c)
            .await?;
        if created.is_some() {
            return Ok((fresh, true));
        }
        if let Some(stored) = read(conn, prefix).await? {
            return Ok((stored, false));
        }
    }
    Err(StoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "the store marker was deleted as fast as it was written",
    ))))
}

/// Where a store is, for messages: the address and database (never credentials).
pub fn location(redis: &RedisSettings) -> String {
    match redis.mode {
        RedisMode::Single => location_of_url(&redis.url),
        RedisMode::Cluster => format!(
            "the Redis Cluster of {} (database 0)",
            redis
                .urls
                .iter()
                .map(|u| super::connection::target_of(u))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RedisMode::Sentinel => format!(
            "the master {:?} of the sentinels {} (database {})",
            redis.sentinel_master,
            redis
                .urls
                .iter()
                .map(|u| super::connection::target_of(u))
                .collect::<Vec<_>>()
                .join(", "),
            database_of(&redis.url)
        ),
    }
}

/// `redis://host:port database N` of a single server's URL.
pub fn location_of_url(url: &str) -> String {
    format!(
        "{} database {}",
        super::connection::target_of(url),
        database_of(url)
    )
}

/// The database number of a Redis URL: its path (`/3`), or `db=` in the query of a unix socket
/// URL; 0 when absent.
fn database_of(url: &str) -> i64 {
    let Ok(u) = url::Url::parse(url) else {
        return 0;
    };
    if u.scheme() == "unix" {
        return u
            .query_pairs()
            .find(|(k, _)| k == "db")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
    }
    u.path().trim_start_matches('/').parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_names_address_and_database_without_credentials() {
        assert_eq!(
            location_of_url("redis://:secret@10.0.0.5:6380/3"),
            "redis://10.0.0.5:6380 database 3"
        );
        assert_eq!(
            location_of_url("rediss://user:pw@cache.internal"),
            "rediss://cache.internal:6379 database 0"
        );
        assert_eq!(
            location_of_url("unix:///run/redis.sock?db=2"),
            "unix:/run/redis.sock database 2"
        );
    }

    #[test]
    fn the_missing_store_message_says_where_and_what_to_do() {
        let text = StoreMissing {
            location: location_of_url("redis://127.0.0.1:6379/1"),
            prefix: "hookrelay".into(),
        }
        .to_string();
        for part in [
            "redis://127.0.0.1:6379 database 1",
            "\"hookrelay\"",
            "hookrelay:store",
            "hookrelay store init",
            "webhooks import --init-store",
        ] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }

    #[test]
    fn a_marker_reads_back_as_written() {
        let marker = Marker::generate();
        assert!(marker.id.starts_with("st_") && marker.id.len() == 27);
        let text = serde_json::to_string(&marker).unwrap();
        assert_eq!(serde_json::from_str::<Marker>(&text).unwrap(), marker);
        assert_eq!(marker.layout, LAYOUT_VERSION);
    }
}
