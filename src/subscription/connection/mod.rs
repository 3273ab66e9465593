//! One way to reach Redis in every `redis.mode` (DESIGN §6): [`RedisConn`] is a cheap-to-clone
//! handle that implements the redis crate's `aio::ConnectionLike`, so the store, the attempt log
//! and the API's tokens run the same commands, pipelines and Lua scripts over a single server, a
//! Redis Cluster or a Sentinel-managed master. It is built from the `[redis]` settings, with the
//! lookup timeout as connect and response timeout, and refuses at start-up:
//! - a server older than [`MIN_VERSION`] (6.2: hookrelay's scripts and commands were written and
//!   tested against it; the message names both versions);
//! - a certificate that does not verify (the message names the host): a `rediss://` URL is
//!   always TLS, with `[redis.tls] ca_file` or the system's roots, never plain text.
//!
//! Modes:
//! - single: the crate's `ConnectionManager` (reconnects to the same address on loss).
//! - cluster: the crate's async cluster client (`cluster-async`), without retries of its own:
//!   [`redirect`] follows ASK (`ASKING` and the command in one piece), MOVED and TRYAGAIN per
//!   command and never re-sends a pipeline of several commands, so writes that create keys go
//!   one command at a time (see `attempts`), and reads that must be atomic are a script. It
//!   does not notice on its own that a dead master was replaced (see [`Cluster::is_lost`]), so
//!   it is held in a [`Renewing`] too. Every multi-key command and pipeline must stay in one
//!   slot: an account's keys carry `{<account>}` as hash tag for that reason.
//! - sentinel: the crate's sentinel client only resolves the master once; a [`Renewing`] keeps
//!   one multiplexed connection to the master and, when it is lost or the node answers READONLY
//!   (it was demoted), drops it so that the next command asks the sentinels again.
//!
//! That is how a failover is followed; the command that met the loss fails (callers retry, as
//! for any Redis error).
//!
//! # Layout
//! - `mod.rs`: [`RedisConn`] and the errors of connecting.
//! - `connect.rs`: connecting in each mode, TLS settings, error messages.
//! - `renewing.rs`: [`Renewing`], the sentinel and cluster connections that are replaced.
//! - `redirect.rs`: following a slot migration per command on a cluster.
//! - `nodes.rs`: the version guard and a cluster's masters.
//! - `scan.rs`: [`KeyPages`], the keyspace a page at a time; `WAIT` on the master of a write.

mod connect;
mod nodes;
mod redirect;
mod renewing;
mod scan;

pub(crate) use connect::target_of;
use connect::{certificates, connect_cluster, connect_sentinel, connect_single};
use connect::{redis_error, system_roots, timed};
pub use nodes::{version_supported, MIN_VERSION};
pub use renewing::{Cluster, ClusterConn, MasterOfSentinels, Renewing, SentinelConn, Source};
pub use scan::KeyPages;

use crate::config::{RedisMode, RedisSettings, RedisTls};
use nodes::{cluster_masters, info_field};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, RedisError, RedisFuture};
use redis::{ClientTlsConfig, TlsCertificates, TlsMode, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("configuration key `{key}`: cannot read {path}: {source}")]
    File {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    // The cause is in the message rather than a `source`, so that it is said once.
    #[error("connecting to Redis at {target}: {error}{hint}")]
    Redis {
        target: String,
        error: RedisError,
        hint: &'static str,
    },
    #[error("connecting to Redis at {target}: no answer within {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error(
        "Redis at {target} is version {found}; hookrelay needs Redis {}.{} or later",
        MIN_VERSION.0,
        MIN_VERSION.1
    )]
    TooOld { target: String, found: String },
}

/// A connection to Redis in the configured mode; clones share the underlying connections.
#[derive(Clone)]
pub enum RedisConn {
    Single {
        conn: ConnectionManager,
        /// For pub/sub, which needs a connection of its own (boxed: it is large and rarely used).
        client: Arc<Client>,
    },
    Cluster {
        conn: ClusterConn,
        /// For pub/sub: any reachable node receives every PUBLISH of the cluster.
        seeds: Arc<[Client]>,
    },
    Sentinel(SentinelConn),
}

impl RedisConn {
    /// Whether every key lives on one node (single or Sentinel): then a script may touch any
    /// keys, where on a cluster its keys must share a slot.
    pub fn one_node(&self) -> bool {
        !matches!(self, RedisConn::Cluster { .. })
    }

    /// Connects as `[redis]` says and checks every serving node's version.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisConn, ConnectError> {
        // The redis crate builds its rustls configuration with the process-wide crypto provider,
        // which is ambiguous (a panic) when more than one is compiled in. Installing one first
        // settles it; an error only means that one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = certificates(&settings.tls)?;
        let timeout = settings.lookup_timeout;
        let conn = match settings.mode {
            RedisMode::Single => connect_single(&settings.url, certs, timeout).await?,
            RedisMode::Cluster => connect_cluster(&settings.urls, certs, timeout).await?,
            RedisMode::Sentinel => connect_sentinel(settings, certs).await?,
        };
        conn.check_versions(timeout).await?;
        Ok(conn)
    }

    /// A single server at `url` (tests and tools); `rediss://` verifies with the system's roots.
    pub async fn single(url: &str, timeout: Duration) -> Result<RedisConn, ConnectError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let conn = connect_single(url, system_roots(), timeout).await?;
        conn.check_versions(timeout).await?;
        Ok(conn)
    }

    /// A connection subscribed to `channel`. On a cluster, PUBLISH reaches every node, so the
    /// seed nodes are tried in turn; with sentinels, the current master is asked for.
    pub async fn subscribe(&self, channel: &str) -> Result<PubSub, RedisError> {
        match self {
            RedisConn::Single { client, .. } => subscribed(client, channel).await,
            RedisConn::Cluster { seeds, .. } => {
                let mut last = None;
                for client in seeds.iter() {
                    match subscribed(client, channel).await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                // `seeds` is never empty: the configuration refuses an empty redis.urls.
                Err(last.expect("at least one seed node"))
            }
            RedisConn::Sentinel(sentinel) => {
                let client = sentinel.master_client().await?;
                subscribed(&client, channel).await
            }
        }
    }

    /// Every key matching `pattern`, from every master of a cluster.
    pub async fn scan_match(&self, pattern: &str) -> Result<Vec<String>, RedisError> {
        match self {
            RedisConn::Cluster { conn, .. } => {
                let (_, mut conn) = conn.connection().await?;
                let conn = conn.inner();
                let mut keys = Vec::new();
                for (host, port) in cluster_masters(conn).await? {
                    let node = || {
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        })
                    };
                    let mut cursor = 0u64;
                    loop {
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(500);
                        let reply = conn.route_command(scan, node()).await?;
                        let (next, batch): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                        keys.extend(batch);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
                Ok(keys)
            }
            _ => {
                let mut conn = self.clone();
                let mut iter: redis::AsyncIter<String> =
                    redis::AsyncCommands::scan_match(&mut conn, pattern).await?;
                let mut keys = Vec::new();
                while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                    keys.push(k?);
                }
                Ok(keys)
            }
        }
    }

    /// Reads `INFO server` of every serving node (each master of a cluster) and refuses a
    /// version older than [`MIN_VERSION`].
    async fn check_versions(&self, timeout: Duration) -> Result<(), ConnectError> {
        let infos: Vec<(String, String)> = match self {
            RedisConn::Cluster { conn, .. } => {
                let (_, mut conn) = conn
                    .connection()
                    .await
                    .map_err(|e| redis_error("the cluster", e))?;
                let conn = conn.inner();
                let masters = cluster_masters(conn)
                    .await
                    .map_err(|e| redis_error("the cluster", e))?;
                let mut infos = Vec::new();
                for (host, port) in masters {
                    let target = format!("{host}:{port}");
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let info = timed(&target, timeout, async {
                        let mut info = redis::cmd("INFO");
                        info.arg("server");
                        let reply = conn.route_command(info, routing).await?;
                        Ok(redis::from_redis_value(reply)?)
                    })
                    .await?;
                    infos.push((target, info));
                }
                infos
            }
            _ => {
                let mut conn = self.clone();
                let target = "the server".to_owned();
                let info: String = timed(
                    &target,
                    timeout,
                    redis::cmd("INFO").arg("server").query_async(&mut conn),
                )
                .await?;
                vec![(target, info)]
            }
        };
        for (target, info) in infos {
            let found = info_field(&info, "redis_version").unwrap_or("unknown");
            if !version_supported(found) {
                return Err(ConnectError::TooOld {
                    target,
                    found: found.to_owned(),
                });
            }
        }
        Ok(())
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single { conn, .. } => conn.req_packed_command(cmd),
            RedisConn::Cluster { conn, .. } => conn.req_packed_command(cmd),
            RedisConn::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single { conn, .. } => conn.get_db(),
            RedisConn::Cluster { conn, .. } => conn.get_db(),
            RedisConn::Sentinel(conn) => conn.get_db(),
        }
    }
}

async fn subscribed(client: &Client, channel: &str) -> Result<PubSub, RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_old_server_is_refused_naming_both_versions() {
        let err = ConnectError::TooOld {
            target: "127.0.0.1:6379".into(),
            found: "6.0.16".into(),
        };
        let text = err.to_string();
        assert!(
            text.contains("6.0.16") && text.contains("6.2 or later"),
            "{text}"
        );
    }

    #[test]
    fn messages_name_the_host_but_never_the_password() {
        assert_eq!(
            target_of("rediss://user:hunter2@cache.example:6380/0"),
            "rediss://cache.example:6380"
        );
        assert_eq!(target_of("redis://127.0.0.1"), "redis://127.0.0.1:6379");
    }
}
