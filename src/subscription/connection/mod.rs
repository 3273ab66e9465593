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
//! - `mod.rs`: [`RedisConn`], connecting in each mode, TLS settings, error messages.
//! - `renewing.rs`: [`Renewing`], the sentinel and cluster connections that are replaced.
//! - `redirect.rs`: following a slot migration per command on a cluster.
//! - `nodes.rs`: the version guard and a cluster's masters.
//! - `scan.rs`: [`KeyPages`], the keyspace a page at a time; `WAIT` on the master of a write.

mod nodes;
mod redirect;
mod renewing;
mod scan;

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

/// The system's trust roots and no client certificate.
fn system_roots() -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: None,
    }
}

/// `[redis.tls]` read from disk; an unreadable file names its key.
fn certificates(tls: &RedisTls) -> Result<TlsCertificates, ConnectError> {
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| ConnectError::File {
            key,
            path: path.to_owned(),
            source,
        })
    };
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read("redis.tls.ca_file", path)?),
        None => None,
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("redis.tls.cert_file", cert)?,
            client_key: read("redis.tls.key_file", key)?,
        }),
        // The configuration accepts both or neither.
        _ => None,
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// A client for `url`: with the certificates for `rediss://` (TLS, verified), plain otherwise.
/// Its sockets get TCP keepalive and a user timeout (see [`crate::broker::socket`]): Redis has
/// no heartbeat, and a partition would otherwise go unnoticed until the kernel gives up.
fn client_for(url: &str, certs: &TlsCertificates) -> Result<Client, RedisError> {
    let info = url.into_connection_info()?;
    let info = info
        .clone()
        .set_tcp_settings(tcp_settings(info.tcp_settings()));
    if url.starts_with("rediss:") {
        Client::build_with_tls(info, certs.clone())
    } else {
        Client::open(info)
    }
}

/// Keepalive probing after 10 s of silence, and unacknowledged data for 20 s ends the
/// connection: the broker's default heartbeat, so that both notice a partition alike.
fn tcp_settings(given: &redis::io::tcp::TcpSettings) -> redis::io::tcp::TcpSettings {
    let quiet = crate::broker::connect::DEFAULT_HEARTBEAT;
    given
        .clone()
        .set_keepalive(crate::broker::socket::keepalive(quiet))
        .set_user_timeout(quiet * 2)
}

/// `scheme://host:port` of a URL, without credentials, for messages (also the store marker's).
pub(crate) fn target_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "unix" => format!("unix:{}", u.path()),
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().unwrap_or(6379)
        ),
        Err(_) => "an unparsable URL".to_owned(),
    }
}

fn redis_error(target: &str, error: RedisError) -> ConnectError {
    // rustls names the problem ("invalid peer certificate: UnknownIssuer") but not the setting.
    let text = error.to_string();
    let hint = if text.contains("CertificateRequired") {
        " (the server requires a client certificate: set redis.tls.cert_file and key_file)"
    } else if text.contains("certificate") {
        " (the server's TLS certificate does not verify against redis.tls.ca_file, or against \
         the system's trust roots when that is empty)"
    } else {
        ""
    };
    ConnectError::Redis {
        target: target.to_owned(),
        error,
        hint,
    }
}

async fn timed<T>(
    target: &str,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|e| redis_error(target, e)),
        Err(_) => Err(ConnectError::Timeout {
            target: target.to_owned(),
            timeout,
        }),
    }
}

async fn connect_single(
    url: &str,
    certs: TlsCertificates,
    timeout: Duration,
) -> Result<RedisConn, ConnectError> {
    let target = target_of(url);
    let client = client_for(url, &certs).map_err(|e| redis_error(&target, e))?;
    // One plain connection first: the ConnectionManager retries a failed connect with backoff,
    // which would turn a certificate error into a timeout; this one says what went wrong.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut probe = timed(
        &target,
        timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await?;
    timed(
        &target,
        timeout,
        redis::cmd("PING").query_async::<()>(&mut probe),
    )
    .await?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let conn = timed(
        &target,
        timeout,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await?;
    Ok(RedisConn::Single {
        conn,
        client: Arc::new(client),
    })
}

async fn connect_cluster(
    urls: &[String],
    certs: TlsCertificates,
    timeout: Duration,
) -> Result<RedisConn, ConnectError> {
    let target = format!(
        "the cluster of {}",
        urls.iter()
            .map(|u| target_of(u))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tls = urls.iter().all(|u| u.starts_with("rediss:"));
    // No retries in the client: `Redirecting` follows ASK, MOVED and TRYAGAIN per command
    // (see redirect.rs), and the callers retry the rest, as in the other modes.
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(0);
    if tls {
        builder = builder.tls(TlsMode::Secure).certs(certs.clone());
    }
    let client = builder.build().map_err(|e| redis_error(&target, e))?;
    let conn = ClusterConn::new(Cluster { client }, timeout, 0);
    timed(&target, timeout, conn.connection()).await?;
    let seeds = urls
        .iter()
        .map(|u| client_for(u, &certs))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| redis_error(&target, e))?;
    Ok(RedisConn::Cluster {
        conn,
        seeds: seeds.into(),
    })
}

async fn connect_sentinel(
    settings: &RedisSettings,
    certs: TlsCertificates,
) -> Result<RedisConn, ConnectError> {
    let timeout = settings.lookup_timeout;
    let target = format!(
        "master {:?} of the sentinels {}",
        settings.sentinel_master,
        settings
            .urls
            .iter()
            .map(|u| target_of(u))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let fail = |e| redis_error(&target, e);
    let sentinels = settings
        .urls
        .iter()
        .map(|u| u.as_str().into_connection_info().map(|i| i.addr().clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let sentinel_tls = settings.urls.iter().all(|u| u.starts_with("rediss:"));
    // The master: TLS when redis.url or the sentinels say rediss (never plain text because one
    // of them was left at its default); credentials and database from redis.url.
    let master_tls = sentinel_tls || settings.url.starts_with("rediss:");
    let master = settings.url.as_str().into_connection_info().map_err(fail)?;
    let first_sentinel = settings.urls[0]
        .as_str()
        .into_connection_info()
        .map_err(fail)?;
    let mut builder = SentinelClientBuilder::new(
        sentinels,
        &settings.sentinel_master,
        SentinelServerType::Master,
    )
    .map_err(fail)?
    .set_client_to_redis_db(master.redis_settings().db());
    if let Some(user) = master.redis_settings().username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = master.redis_settings().password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = first_sentinel.redis_settings().username() {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = first_sentinel.redis_settings().password() {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if master_tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_redis_certificates(certs.clone());
    }
    if sentinel_tls {
        builder = builder
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_certificates(certs);
    }
    let client = builder.build().map_err(fail)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let conn = SentinelConn::new(
        MasterOfSentinels { client, config },
        timeout,
        master.redis_settings().db(),
    );
    timed(&target, timeout, conn.connection()).await?;
    Ok(RedisConn::Sentinel(conn))
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
