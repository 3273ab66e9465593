//! Walking the keyspace a page at a time, in every mode, and asking the master that took a
//! write how many replicas have it (`WAIT`).
//!
//! [`KeyPages`] is what `webhooks export` streams from: one `SCAN` page (a few hundred keys) is
//! in hand at a time, whatever the number of keys. On a cluster every master is scanned in turn
//! (`SCAN` only sees the node it is sent to); the masters are read once, when the walk starts.
//! As with any `SCAN`, a key may come twice (when Redis resizes its table mid-walk): callers
//! that must not repeat one remember what they saw.

use super::nodes::cluster_masters;
use super::RedisConn;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::RedisError;
use std::time::Duration;

/// Keys asked of each `SCAN` call (a hint to Redis, which may return more or fewer).
const PAGE: u32 = 500;

/// A walk over the keys matching a pattern, a page at a time.
pub struct KeyPages {
    conn: RedisConn,
    pattern: String,
    cursor: u64,
    /// Cluster: the masters not yet finished, the current one last. `None` until the walk
    /// starts (and always in single and sentinel mode).
    masters: Option<Vec<(String, u16)>>,
    done: bool,
}

impl KeyPages {
    pub(super) fn new(conn: RedisConn, pattern: &str) -> KeyPages {
        KeyPages {
            conn,
            pattern: pattern.to_owned(),
            cursor: 0,
            masters: None,
            done: false,
        }
    }

    /// The next page of keys (possibly empty: SCAN may return none on a call), or `None` at the
    /// end of the walk.
    pub async fn next_page(&mut self) -> Result<Option<Vec<String>>, RedisError> {
        if self.done {
            return Ok(None);
        }
        let mut scan = redis::cmd("SCAN");
        scan.arg(self.cursor)
            .arg("MATCH")
            .arg(&self.pattern)
            .arg("COUNT")
            .arg(PAGE);
        let (next, keys): (u64, Vec<String>) = match &self.conn {
            RedisConn::Cluster { conn, .. } => {
                let (_, mut cluster) = conn.connection().await?;
                if self.masters.is_none() {
                    let mut masters = cluster_masters(&mut cluster.0).await?;
                    masters.reverse();
                    self.masters = Some(masters);
                }
                let masters = self.masters.as_mut().expect("set above");
                let Some((host, port)) = masters.last().cloned() else {
                    self.done = true;
                    return Ok(None);
                };
                let node = SingleNodeRoutingInfo::ByAddress { host, port };
                // A page of one named node: no redirect can apply, so the raw cluster client.
                let reply = cluster
                    .0
                    .route_command(scan, RoutingInfo::SingleNode(node))
                    .await?;
                let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                if next == 0 {
                    masters.pop();
                    self.done = masters.is_empty();
                }
                (next, keys)
            }
            _ => {
                let mut conn = self.conn.clone();
                let page: (u64, Vec<String>) = scan.query_async(&mut conn).await?;
                self.done = page.0 == 0;
                page
            }
        };
        self.cursor = next;
        Ok(Some(keys))
    }
}

impl RedisConn {
    /// Walks the keys matching `pattern` a page at a time (every master of a cluster).
    pub fn key_pages(&self, pattern: &str) -> KeyPages {
        KeyPages::new(self.clone(), pattern)
    }

    /// How many replicas acknowledged every write made so far on this connection, waiting up to
    /// `timeout` for `replicas` of them (`WAIT`). On a cluster it asks the master of each
    /// key's slot (the node that took the writes to that key) and answers the fewest; in single
    /// and sentinel mode the one server. `keys` empty on a cluster: every master.
    pub async fn wait_replicas(
        &self,
        keys: &[&str],
        replicas: u32,
        timeout: Duration,
    ) -> Result<u32, RedisError> {
        let mut wait = redis::cmd("WAIT");
        // WAIT's timeout 0 means "forever": at least 1 ms.
        wait.arg(replicas).arg(timeout.as_millis().max(1) as u64);
        match self {
            RedisConn::Cluster { conn, .. } if !keys.is_empty() => {
                let (_, mut cluster) = conn.connection().await?;
                let mut fewest = u32::MAX;
                let mut routes: Vec<Route> = Vec::with_capacity(keys.len());
                for key in keys {
                    let route = Route::with_key(key, SlotAddr::Master);
                    if !routes.contains(&route) {
                        routes.push(route);
                    }
                }
                for route in routes {
                    let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    let reply = cluster.0.route_command(wait.clone(), node).await?;
                    fewest = fewest.min(redis::from_redis_value(reply)?);
                }
                Ok(fewest)
            }
            // The cluster client sends a keyless WAIT to every master and answers the least.
            _ => {
                let mut conn = self.clone();
                wait.query_async(&mut conn).await
            }
        }
    }
}
