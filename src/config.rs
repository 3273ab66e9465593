//! One typed settings tree (DESIGN §6): built-in defaults (`config/default.toml`) → the `--config`
//! file → `HOOKRELAY__<SECTION>__<KEY>` environment variables; validated once, naming the key.

use crate::broker::connect::Node;
use crate::broker::tls::{self, TlsConfig};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// The defaults, documented key by key in the repository's `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The most work-queue partitions: far past what a 9-node cluster uses (docs/partitions.md), and
/// small enough that probing for partitions left over from a larger count stays cheap.
pub const MAX_PARTITIONS: u16 = 64;

fn parse_partitions(n: u16) -> Result<u16, ConfigError> {
    if !(1..=MAX_PARTITIONS).contains(&n) {
        return Err(invalid(
            "amqp.partitions",
            format!("must be 1 to {MAX_PARTITIONS}"),
        ));
    }
    Ok(n)
}

/// `"0,2"` → `[0, 2]`; empty → every partition. Each must exist under `amqp.partitions`.
fn parse_worker_partitions(text: &str, of: u16) -> Result<Option<Vec<u16>>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut chosen = Vec::new();
    for part in text.split(',') {
        let n: u16 = part.trim().parse().map_err(|_| {
            invalid(
                "worker.partitions",
                format!("{part:?} is not a partition number (e.g. \"0,2\")"),
            )
        })?;
        if n >= of {
            return Err(invalid(
                "worker.partitions",
                format!(
                    "partition {n} does not exist: amqp.partitions is {of} (0 to {})",
                    of.saturating_sub(1)
                ),
            ));
        }
        chosen.push(n);
    }
    chosen.sort_unstable();
    chosen.dedup();
    Ok(Some(chosen))
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub delivery: DeliverySettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub api: ApiSettings,
    pub ops: OpsSettings,
}

#[derive(Clone, Debug)]
pub struct AmqpSettings {
    pub url: String,
    /// `amqp.urls` as configured (empty: `url` alone).
    pub urls: Vec<String>,
    /// The nodes to connect to: `urls` when set, else `url`.
    pub nodes: Vec<Node>,
    /// `[amqp.tls]` as configured, so that child processes (bench workers) get the same.
    pub tls_files: TlsFiles,
    /// Built when a node is `amqps`: the system's roots or `ca_file`, and a client certificate.
    pub tls: Option<TlsConfig>,
    pub prefix: String,
    pub prefetch: u16,
    pub publish_timeout: Duration,
    pub delivery_limit: u32,
    pub reconnect_timeout: Duration,
    /// The AMQP heartbeat: two of them without a frame from the broker end the connection.
    pub heartbeat: Duration,
    /// How long a worker's follow-up publish may wait for its confirm while the broker blocks
    /// publishers (memory or disk alarm), before it is abandoned.
    pub blocked_timeout: Duration,
    /// `amqp.partitions`: work queues per kind (1 = the unnumbered names of DESIGN §4).
    pub partitions: u16,
}

/// The PEM files of a `[….tls]` section; empty strings for unset.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Single mode: the server. Sentinel mode: the scheme, credentials and database used to
    /// reach the master the sentinels name (its host is not used).
    pub url: String,
    pub mode: RedisMode,
    /// Cluster: seed nodes. Sentinel: the sentinels. Empty in single mode.
    pub urls: Vec<String>,
    /// Sentinel: the monitored master's name.
    pub sentinel_master: String,
    pub tls: RedisTls,
    pub prefix: String,
    pub lookup_timeout: Duration,
    /// Encrypts webhook secrets at rest; `None` (the key is empty) keeps them in plain text.
    pub secret_key: Option<SecretKey>,
    /// Replicas that must confirm an API or CLI write (Redis `WAIT`) before it succeeds; 0: none.
    pub min_replicas: u32,
}

impl RedisSettings {
    /// These settings as `HOOKRELAY__REDIS__*` variables, for a child process (bench's workers)
    /// that must reach the same Redis the same way whatever layer they came from.
    pub fn to_env(&self) -> Vec<(String, String)> {
        use base64::Engine;
        let path = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let mode = match self.mode {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        };
        let secret_key = self
            .secret_key
            .as_ref()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k.0))
            .unwrap_or_default();
        [
            ("URL", self.url.clone()),
            ("MODE", mode.to_owned()),
            ("URLS", self.urls.join(",")),
            ("SENTINEL_MASTER", self.sentinel_master.clone()),
            ("PREFIX", self.prefix.clone()),
            (
                "LOOKUP_TIMEOUT",
                humantime::format_duration(self.lookup_timeout).to_string(),
            ),
            ("SECRET_KEY", secret_key),
            ("MIN_REPLICAS", self.min_replicas.to_string()),
            ("TLS__CA_FILE", path(&self.tls.ca_file)),
            ("TLS__CERT_FILE", path(&self.tls.cert_file)),
            ("TLS__KEY_FILE", path(&self.tls.key_file)),
        ]
        .into_iter()
        .map(|(k, v)| (format!("HOOKRELAY__REDIS__{k}"), v))
        .collect()
    }
}

/// How hookrelay reaches Redis (`redis.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    Single,
    Cluster,
    Sentinel,
}

/// `[redis.tls]`: PEM files for `rediss://` URLs; `None` = the system's roots / no client cert.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

/// The 32-byte key of `redis.secret_key`; its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

#[derive(Clone, Debug)]
pub struct DeliverySettings {
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_event_bytes: usize,
    /// Nesting of objects and arrays allowed in an envelope's `data`.
    pub max_event_depth: usize,
    pub rotation_grace: Duration,
    pub disable_after: Duration,
    pub allow_private_targets: bool,
    pub allow_http: bool,
    pub max_in_flight_per_webhook: usize,
    /// Share of `max_in_flight` one target origin (scheme, host, port) may hold.
    pub max_in_flight_per_origin: usize,
    /// Share of `max_in_flight` one account may hold.
    pub max_in_flight_per_account: usize,
    pub max_in_flight: usize,
}

#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub shutdown_grace: Duration,
    /// Runtime threads of a worker process; 1 = a single-threaded runtime.
    pub threads: usize,
    /// Bound on the subscription cache's estimated size.
    pub cache_max_bytes: u64,
    /// How long a cached account is trusted without a change announcement.
    pub cache_ttl: Duration,
    /// Bound on the bytes of the messages being handled at once (parsed, formatted, sent).
    pub max_in_flight_bytes: u32,
    /// How often a running worker reads the store's marker (DESIGN §5 "The store").
    pub store_check_interval: Duration,
    /// `worker.partitions`: the partitions this worker consumes, ascending (all when unset).
    pub partitions: Option<Vec<u16>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub admin_token: String,
    /// Every request ends within this (504 otherwise).
    pub request_timeout: Duration,
    /// Test-sends one account may have in flight.
    pub test_sends_per_account: usize,
    /// Invalid tokens one client address may send per `failed_signin_window`.
    pub failed_signin_limit: u32,
    pub failed_signin_window: Duration,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpAddr>,
    pub connections: ConnectionLimits,
}

#[derive(Clone, Debug)]
pub struct OpsSettings {
    pub listen: SocketAddr,
    pub connections: ConnectionLimits,
}

/// What one HTTP listener lets its clients hold (`api.*` and `ops.*`), so that connections that
/// send nothing cannot pile up until the process runs out of file descriptors.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Open connections at most; at the bound the oldest idle one makes way for a new one.
    pub max_connections: usize,
    /// A request head must arrive whole within this, from the moment the server waits for it.
    pub header_read_timeout: Duration,
    /// A connection without a request in hand on which no byte moves for this long is closed.
    pub idle_timeout: Duration,
}

/// What the layers hold before validation: durations and addresses are still text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    amqp: RawAmqp,
    redis: RawRedis,
    delivery: RawDelivery,
    worker: RawWorker,
    log: RawLog,
    api: RawApi,
    ops: RawOps,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmqp {
    url: String,
    urls: Vec<String>,
    tls: TlsFiles,
    prefix: String,
    prefetch: u16,
    publish_timeout: String,
    delivery_limit: u32,
    reconnect_timeout: String,
    heartbeat: String,
    blocked_timeout: String,
    partitions: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    mode: String,
    urls: Vec<String>,
    sentinel_master: String,
    tls: RawRedisTls,
    prefix: String,
    lookup_timeout: String,
    secret_key: String,
    min_replicas: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisTls {
    ca_file: String,
    cert_file: String,
    key_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    retry_schedule: Vec<String>,
    timeout: String,
    connect_timeout: String,
    max_event_bytes: usize,
    max_event_depth: usize,
    rotation_grace: String,
    disable_after: String,
    allow_private_targets: bool,
    allow_http: bool,
    max_in_flight_per_webhook: usize,
    max_in_flight_per_origin: usize,
    max_in_flight_per_account: usize,
    max_in_flight: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    shutdown_grace: String,
    threads: usize,
    cache_max_bytes: u64,
    cache_ttl: String,
    max_in_flight_bytes: u64,
    store_check_interval: String,
    partitions: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: String,
    admin_token: String,
    request_timeout: String,
    test_sends_per_account: usize,
    failed_signin_limit: u32,
    failed_signin_window: String,
    trusted_proxies: Vec<String>,
    max_connections: usize,
    header_read_timeout: String,
    idle_timeout: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    listen: String,
    max_connections: usize,
    header_read_timeout: String,
    idle_timeout: String,
}

/// The longest duration any key takes: far beyond any sensible setting, and far below what
/// would overflow a clock or a timer when added to now.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// The longest retry step: the broker's per-message expiration is a 32-bit count of
/// milliseconds (about 49 days), and a step's jitter adds up to 20 %.
pub const MAX_RETRY_STEP: Duration = Duration::from_secs(30 * 86_400);

/// Parses `"500ms"`, `"5s"`, `"2h"`, `"5d"`; zero and anything over [`MAX_DURATION`] are
/// refused here, at start-up, rather than overflowing later.
pub fn parse_duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| invalid(key, format!("{text:?} is not a duration like \"5s\": {e}")))?;
    if d.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    if d > MAX_DURATION {
        return Err(invalid(
            key,
            format!("{text:?} is longer than the most allowed, 366 days"),
        ));
    }
    Ok(d)
}

/// `keys` names max_connections, header_read_timeout and idle_timeout of one listener.
fn parse_connection_limits(
    keys: [&'static str; 3],
    max_connections: usize,
    header_read_timeout: &str,
    idle_timeout: &str,
) -> Result<ConnectionLimits, ConfigError> {
    if max_connections == 0 {
        return Err(invalid(keys[0], "must be at least 1"));
    }
    Ok(ConnectionLimits {
        max_connections,
        header_read_timeout: parse_duration(keys[1], header_read_timeout)?,
        idle_timeout: parse_duration(keys[2], idle_timeout)?,
    })
}

/// AMQP negotiates the heartbeat in whole seconds (a u16).
fn parse_heartbeat(text: &str) -> Result<Duration, ConfigError> {
    let key = "amqp.heartbeat";
    let d = parse_duration(key, text)?;
    if d.subsec_nanos() != 0 || d > Duration::from_secs(u64::from(u16::MAX)) {
        return Err(invalid(
            key,
            format!("{text:?} must be whole seconds, at most 65535"),
        ));
    }
    Ok(d)
}

fn parse_prefix(key: &'static str, text: &str) -> Result<String, ConfigError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(invalid(
            key,
            format!("{text:?} must be 1 to 64 of A-Z a-z 0-9 - _ ."),
        ))
    }
}

/// Empty means no key; otherwise base64 of exactly 32 bytes.
fn parse_secret_key(key: &'static str, text: &str) -> Result<Option<SecretKey>, ConfigError> {
    use base64::Engine;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| {
            invalid(
                key,
                "is not base64 (make one with `openssl rand -base64 32`)",
            )
        })?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        invalid(key, format!("decodes to {} bytes; it must be 32", b.len()))
    })?;
    Ok(Some(SecretKey(bytes)))
}

fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("{text:?} is not an address like 127.0.0.1:9090"),
        )
    })
}

fn parse_url(key: &'static str, text: &str, schemes: &[&str]) -> Result<String, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| invalid(key, format!("not a URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(invalid(
            key,
            format!("scheme must be one of {}", schemes.join(", ")),
        ));
    }
    Ok(text.to_owned())
}

fn parse_redis(raw: RawRedis) -> Result<RedisSettings, ConfigError> {
    let mode = match raw.mode.as_str() {
        "single" => RedisMode::Single,
        "cluster" => RedisMode::Cluster,
        "sentinel" => RedisMode::Sentinel,
        other => {
            return Err(invalid(
                "redis.mode",
                format!("{other:?} is not one of \"single\", \"cluster\", \"sentinel\""),
            ))
        }
    };
    let url = parse_redis_url("redis.url", &raw.redis_url_schemes(mode), &raw.url)?;
    let urls: Vec<String> = raw
        .urls
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(|u| parse_redis_url("redis.urls", &["redis", "rediss"], u))
        .collect::<Result<_, _>>()?;
    match mode {
        RedisMode::Single if !urls.is_empty() => {
            return Err(invalid(
                "redis.urls",
                "is only for redis.mode \"cluster\" or \"sentinel\"; single mode uses redis.url",
            ))
        }
        RedisMode::Cluster | RedisMode::Sentinel if urls.is_empty() => {
            return Err(invalid(
                "redis.urls",
                "must list the cluster's seed nodes (cluster) or the sentinels (sentinel)",
            ))
        }
        _ => {}
    }
    let tls_urls = urls.iter().filter(|u| u.starts_with("rediss:")).count();
    if tls_urls != 0 && tls_urls != urls.len() {
        return Err(invalid(
            "redis.urls",
            "mixes redis:// and rediss://: the nodes are all reached over TLS or all in plain text",
        ));
    }
    let sentinel_master = raw.sentinel_master.trim().to_owned();
    if mode == RedisMode::Sentinel && sentinel_master.is_empty() {
        return Err(invalid(
            "redis.sentinel_master",
            "must name the master the sentinels monitor (their `sentinel monitor <name> ...`)",
        ));
    }
    let tls = parse_redis_tls(raw.tls)?;
    let url_tls = url.starts_with("rediss:");
    let tls_used_by_mode = match mode {
        RedisMode::Single => url_tls,
        RedisMode::Cluster => tls_urls > 0,
        // The sentinels (urls) and the master (url's scheme) may each be TLS.
        RedisMode::Sentinel => url_tls || tls_urls > 0,
    };
    if tls != RedisTls::default() && !tls_used_by_mode {
        // Certificates configured for a plain-text URL would suggest TLS where there is none.
        return Err(invalid(
            "redis.tls",
            "certificate files are set, but no Redis URL of this mode uses rediss://",
        ));
    }
    Ok(RedisSettings {
        url,
        mode,
        urls,
        sentinel_master,
        tls,
        prefix: parse_prefix("redis.prefix", &raw.prefix)?,
        lookup_timeout: parse_duration("redis.lookup_timeout", &raw.lookup_timeout)?,
        secret_key: parse_secret_key("redis.secret_key", &raw.secret_key)?,
        min_replicas: raw.min_replicas,
    })
}

impl RawRedis {
    /// A unix socket can only be a single server: cluster nodes and masters are named by address.
    fn redis_url_schemes(&self, mode: RedisMode) -> Vec<&'static str> {
        match mode {
            RedisMode::Single => vec!["redis", "rediss", "unix"],
            RedisMode::Cluster | RedisMode::Sentinel => vec!["redis", "rediss"],
        }
    }
}

/// A Redis URL; `#insecure` (the redis crate's "skip certificate checks") is refused: hookrelay
/// always verifies the server's certificate.
fn parse_redis_url(key: &'static str, schemes: &[&str], text: &str) -> Result<String, ConfigError> {
    let text = parse_url(key, text, schemes)?;
    if url::Url::parse(&text).is_ok_and(|u| u.fragment().is_some()) {
        return Err(invalid(
            key,
            "a URL fragment (e.g. #insecure) is not supported: certificates are always verified",
        ));
    }
    Ok(text)
}

fn parse_redis_tls(raw: RawRedisTls) -> Result<RedisTls, ConfigError> {
    let path = |text: &str| {
        let text = text.trim();
        (!text.is_empty()).then(|| std::path::PathBuf::from(text))
    };
    let tls = RedisTls {
        ca_file: path(&raw.ca_file),
        cert_file: path(&raw.cert_file),
        key_file: path(&raw.key_file),
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => Err(invalid(
            "redis.tls.key_file",
            "must be set with redis.tls.cert_file (a client certificate needs its key)",
        )),
        (None, Some(_)) => Err(invalid(
            "redis.tls.cert_file",
            "must be set with redis.tls.key_file (a client key needs its certificate)",
        )),
        _ => Ok(tls),
    }
}

/// `amqp.urls` (or `amqp.url`) as nodes, and `[amqp.tls]` read and checked now, so that a
/// missing file or bad PEM stops start-up naming its key rather than failing at connect.
fn parse_amqp_nodes(raw: &RawAmqp) -> Result<(Vec<Node>, Option<TlsConfig>), ConfigError> {
    let (key, urls) = match raw.urls.is_empty() {
        true => ("amqp.url", std::slice::from_ref(&raw.url)),
        false => ("amqp.urls", raw.urls.as_slice()),
    };
    let nodes = urls
        .iter()
        .map(|url| {
            parse_url(key, url, &["amqp", "amqps"])?;
            Node::parse(url).map_err(|e| invalid(key, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tls_nodes = nodes.iter().filter(|n| n.is_tls()).count();
    let files = &raw.tls;
    let any_file = [&files.ca_file, &files.cert_file, &files.key_file]
        .iter()
        .any(|f| !f.trim().is_empty());
    if tls_nodes == 0 {
        if any_file {
            // Someone who configured certificates meant TLS: never fall back to plain text.
            return Err(invalid(
                key,
                "[amqp.tls] is configured but the URL is amqp:// (plain text); use amqps://",
            ));
        }
        return Ok((nodes, None));
    }
    if tls_nodes != nodes.len() {
        return Err(invalid(
            key,
            "mixes amqps:// and plain amqp:// nodes; use amqps:// for all",
        ));
    }
    Ok((nodes, Some(parse_tls_files(&AMQP_TLS, files)?)))
}

/// The names of a TLS section's keys, for messages.
struct TlsKeys {
    ca_file: &'static str,
    cert_file: &'static str,
    key_file: &'static str,
}

const AMQP_TLS: TlsKeys = TlsKeys {
    ca_file: "amqp.tls.ca_file",
    cert_file: "amqp.tls.cert_file",
    key_file: "amqp.tls.key_file",
};

fn parse_tls_files(keys: &TlsKeys, files: &TlsFiles) -> Result<TlsConfig, ConfigError> {
    let (ca_key, cert_key, key_key) = (keys.ca_file, keys.cert_file, keys.key_file);
    let read = |key: &'static str, path: &str| -> Result<Option<Vec<u8>>, ConfigError> {
        match path.trim() {
            "" => Ok(None),
            path => std::fs::read(path)
                .map(Some)
                .map_err(|e| invalid(key, format!("cannot read {path:?}: {e}"))),
        }
    };
    let ca = read(ca_key, &files.ca_file)?
        .map(|pem| tls::parse_certificates(&pem).map_err(|e| invalid(ca_key, e.to_string())))
        .transpose()?;
    let client = match (
        read(cert_key, &files.cert_file)?,
        read(key_key, &files.key_file)?,
    ) {
        (None, None) => None,
        (Some(_), None) => return Err(invalid(key_key, "is empty but cert_file is set")),
        (None, Some(_)) => return Err(invalid(cert_key, "is empty but key_file is set")),
        (Some(cert), Some(key)) => Some((
            tls::parse_certificates(&cert).map_err(|e| invalid(cert_key, e.to_string()))?,
            tls::parse_private_key(&key).map_err(|e| invalid(key_key, e.to_string()))?,
        )),
    };
    TlsConfig::new(ca, client).map_err(|e| {
        let key = match e {
            tls::TlsError::BadIdentity(_) => cert_key,
            _ => ca_key,
        };
        invalid(key, e.to_string())
    })
}

impl Settings {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment passed in (tests set their own).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let raw: Raw = Self::layers(file, env)?.try_deserialize()?;
        Self::validate(raw)
    }

    /// The layers merged, before validation: what `hookrelay config show` prints (redacted).
    pub fn layers(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<config::Config, ConfigError> {
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("HOOKRELAY__"))
            .collect();
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        Ok(builder
            .add_source(
                config::Environment::with_prefix("HOOKRELAY")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("delivery.retry_schedule")
                    .with_list_parse_key("api.trusted_proxies")
                    .with_list_parse_key("redis.urls")
                    .with_list_parse_key("amqp.urls")
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()?)
    }

    fn validate(raw: Raw) -> Result<Settings, ConfigError> {
        let retry_schedule = raw
            .delivery
            .retry_schedule
            .iter()
            .map(|s| parse_duration("delivery.retry_schedule", s))
            .collect::<Result<Vec<_>, _>>()?;
        if retry_schedule.iter().any(|s| *s > MAX_RETRY_STEP) {
            return Err(invalid(
                "delivery.retry_schedule",
                "a step may be at most 30 days (the broker's message expiration is bounded)",
            ));
        }
        if retry_schedule.len() > 100 {
            return Err(invalid("delivery.retry_schedule", "at most 100 steps"));
        }
        if !(1..=10_000).contains(&raw.delivery.max_event_depth) {
            return Err(invalid("delivery.max_event_depth", "must be 1 to 10000"));
        }
        if raw.worker.cache_max_bytes < 1 << 20 {
            return Err(invalid(
                "worker.cache_max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !(1 << 20..=u64::from(u32::MAX)).contains(&raw.worker.max_in_flight_bytes) {
            return Err(invalid(
                "worker.max_in_flight_bytes",
                "must be 1048576 (1 MiB) to 4294967295",
            ));
        }
        if raw.amqp.prefetch == 0 {
            return Err(invalid("amqp.prefetch", "must be at least 1"));
        }
        if raw.amqp.delivery_limit == 0 {
            return Err(invalid("amqp.delivery_limit", "must be at least 1"));
        }
        if raw.delivery.max_event_bytes < 1024 {
            return Err(invalid("delivery.max_event_bytes", "must be at least 1024"));
        }
        let format = match raw.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is neither \"text\" nor \"json\""),
                ))
            }
        };
        let (nodes, tls) = parse_amqp_nodes(&raw.amqp)?;
        Ok(Settings {
            amqp: AmqpSettings {
                url: raw.amqp.url,
                urls: raw.amqp.urls,
                nodes,
                tls_files: raw.amqp.tls,
                tls,
                prefix: parse_prefix("amqp.prefix", &raw.amqp.prefix)?,
                prefetch: raw.amqp.prefetch,
                publish_timeout: parse_duration("amqp.publish_timeout", &raw.amqp.publish_timeout)?,
                delivery_limit: raw.amqp.delivery_limit,
                reconnect_timeout: parse_duration(
                    "amqp.reconnect_timeout",
                    &raw.amqp.reconnect_timeout,
                )?,
                heartbeat: parse_heartbeat(&raw.amqp.heartbeat)?,
                blocked_timeout: parse_duration("amqp.blocked_timeout", &raw.amqp.blocked_timeout)?,
                partitions: parse_partitions(raw.amqp.partitions)?,
            },
            redis: parse_redis(raw.redis)?,
            delivery: DeliverySettings {
                retry_schedule,
                timeout: parse_duration("delivery.timeout", &raw.delivery.timeout)?,
                connect_timeout: parse_duration(
                    "delivery.connect_timeout",
                    &raw.delivery.connect_timeout,
                )?,
                max_event_bytes: raw.delivery.max_event_bytes,
                max_event_depth: raw.delivery.max_event_depth,
                rotation_grace: parse_duration(
                    "delivery.rotation_grace",
                    &raw.delivery.rotation_grace,
                )?,
                disable_after: parse_duration(
                    "delivery.disable_after",
                    &raw.delivery.disable_after,
                )?,
                allow_private_targets: raw.delivery.allow_private_targets,
                allow_http: raw.delivery.allow_http,
                max_in_flight: match raw.delivery.max_in_flight {
                    0 => return Err(invalid("delivery.max_in_flight", "must be at least 1")),
                    n => n,
                },
                max_in_flight_per_webhook: match raw.delivery.max_in_flight_per_webhook {
                    0 => {
                        return Err(invalid(
                            "delivery.max_in_flight_per_webhook",
                            "must be at least 1",
                        ))
                    }
                    n => n,
                },
                max_in_flight_per_origin: match raw.delivery.max_in_flight_per_origin {
                    0 => {
                        return Err(invalid(
                            "delivery.max_in_flight_per_origin",
                            "must be at least 1",
                        ))
                    }
                    n => n,
                },
                max_in_flight_per_account: match raw.delivery.max_in_flight_per_account {
                    0 => {
                        return Err(invalid(
                            "delivery.max_in_flight_per_account",
                            "must be at least 1",
                        ))
                    }
                    n => n,
                },
            },
            worker: WorkerSettings {
                shutdown_grace: parse_duration(
                    "worker.shutdown_grace",
                    &raw.worker.shutdown_grace,
                )?,
                threads: match raw.worker.threads {
                    0 => return Err(invalid("worker.threads", "must be at least 1")),
                    n => n,
                },
                cache_max_bytes: raw.worker.cache_max_bytes,
                cache_ttl: parse_duration("worker.cache_ttl", &raw.worker.cache_ttl)?,
                // At most u32::MAX: checked above.
                max_in_flight_bytes: u32::try_from(raw.worker.max_in_flight_bytes)
                    .unwrap_or(u32::MAX),
                store_check_interval: match parse_duration(
                    "worker.store_check_interval",
                    &raw.worker.store_check_interval,
                )? {
                    d if d.is_zero() => {
                        return Err(invalid("worker.store_check_interval", "must be above 0"))
                    }
                    d => d,
                },
                partitions: parse_worker_partitions(&raw.worker.partitions, raw.amqp.partitions)?,
            },
            log: LogSettings { format },
            api: ApiSettings {
                listen: parse_addr("api.listen", &raw.api.listen)?,
                admin_token: raw.api.admin_token,
                request_timeout: parse_duration("api.request_timeout", &raw.api.request_timeout)?,
                test_sends_per_account: match raw.api.test_sends_per_account {
                    0 => return Err(invalid("api.test_sends_per_account", "must be at least 1")),
                    n => n,
                },
                failed_signin_limit: match raw.api.failed_signin_limit {
                    0 => return Err(invalid("api.failed_signin_limit", "must be at least 1")),
                    n => n,
                },
                failed_signin_window: parse_duration(
                    "api.failed_signin_window",
                    &raw.api.failed_signin_window,
                )?,
                trusted_proxies: raw
                    .api
                    .trusted_proxies
                    .iter()
                    .filter(|text| !text.trim().is_empty())
                    .map(|text| {
                        text.trim().parse().map_err(|_| {
                            invalid(
                                "api.trusted_proxies",
                                format!("{text:?} is not an IP address like 10.0.0.5"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
                connections: parse_connection_limits(
                    [
                        "api.max_connections",
                        "api.header_read_timeout",
                        "api.idle_timeout",
                    ],
                    raw.api.max_connections,
                    &raw.api.header_read_timeout,
                    &raw.api.idle_timeout,
                )?,
            },
            ops: OpsSettings {
                listen: parse_addr("ops.listen", &raw.ops.listen)?,
                connections: parse_connection_limits(
                    [
                        "ops.max_connections",
                        "ops.header_read_timeout",
                        "ops.idle_timeout",
                    ],
                    raw.ops.max_connections,
                    &raw.ops.header_read_timeout,
                    &raw.ops.idle_timeout,
                )?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_with_env(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn one_partition_is_the_default_and_a_worker_takes_every_partition_unless_told() {
        let s = load(&[]).unwrap();
        assert_eq!(s.amqp.partitions, 1);
        assert_eq!(s.worker.partitions, None);
        let s = load(&[
            ("HOOKRELAY__AMQP__PARTITIONS", "4"),
            ("HOOKRELAY__WORKER__PARTITIONS", "2, 0,2"),
        ])
        .unwrap();
        assert_eq!(s.worker.partitions, Some(vec![0, 2]));
    }

    #[test]
    fn partitions_out_of_range_are_refused_naming_the_key() {
        for (key, value, named) in [
            ("HOOKRELAY__AMQP__PARTITIONS", "0", "amqp.partitions"),
            ("HOOKRELAY__AMQP__PARTITIONS", "65", "amqp.partitions"),
            ("HOOKRELAY__WORKER__PARTITIONS", "1", "worker.partitions"),
            ("HOOKRELAY__WORKER__PARTITIONS", "0,x", "worker.partitions"),
        ] {
            let err = load(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let s = load(&[]).unwrap();
        assert_eq!(s.amqp.prefix, "hookrelay");
        assert_eq!(s.delivery.retry_schedule.len(), 9);
        assert_eq!(s.delivery.retry_schedule[1], Duration::from_secs(300));
        assert_eq!(s.delivery.timeout, Duration::from_secs(15));
        assert_eq!(s.delivery.disable_after, Duration::from_secs(5 * 86_400));
        assert_eq!(s.delivery.max_event_bytes, 262_144);
        assert!(!s.delivery.allow_private_targets);
        assert!(
            s.api.request_timeout > s.delivery.timeout,
            "a test-send can finish"
        );
        assert_eq!(s.api.test_sends_per_account, 2);
        assert_eq!(s.api.failed_signin_limit, 5);
        assert_eq!(s.api.failed_signin_window, Duration::from_secs(60));
        let loopback: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(s.api.trusted_proxies, loopback);
    }

    #[test]
    fn trusted_proxies_are_addresses_listed_comma_separated() {
        let s = load(&[("HOOKRELAY__API__TRUSTED_PROXIES", "10.0.0.5, fd00::7")]).unwrap();
        assert_eq!(s.api.trusted_proxies.len(), 2);
        let err = load(&[("HOOKRELAY__API__TRUSTED_PROXIES", "10.0.0.0/8")]).unwrap_err();
        assert!(err.to_string().contains("api.trusted_proxies"), "{err}");
    }

    #[test]
    fn environment_overrides_with_lists_comma_separated() {
        let s = load(&[
            ("HOOKRELAY__DELIVERY__RETRY_SCHEDULE", "500ms,2s"),
            ("HOOKRELAY__AMQP__PREFIX", "hrt-x"),
            ("HOOKRELAY__DELIVERY__ALLOW_HTTP", "true"),
        ])
        .unwrap();
        assert_eq!(
            s.delivery.retry_schedule,
            vec![Duration::from_millis(500), Duration::from_secs(2)]
        );
        assert_eq!(s.amqp.prefix, "hrt-x");
        assert!(s.delivery.allow_http);
    }

    #[test]
    fn an_invalid_value_names_its_key() {
        let err = load(&[("HOOKRELAY__DELIVERY__TIMEOUT", "soon")]).unwrap_err();
        assert!(err.to_string().contains("delivery.timeout"), "{err}");
        let err = load(&[("HOOKRELAY__OPS__LISTEN", "nowhere")]).unwrap_err();
        assert!(err.to_string().contains("ops.listen"), "{err}");
        let err = load(&[("HOOKRELAY__AMQP__PREFIX", "a b")]).unwrap_err();
        assert!(err.to_string().contains("amqp.prefix"), "{err}");
        let err = load(&[("HOOKRELAY__LOG__FORMAT", "xml")]).unwrap_err();
        assert!(err.to_string().contains("log.format"), "{err}");
        let err = load(&[("HOOKRELAY__REDIS__SECRET_KEY", "c2hvcnQ=")]).unwrap_err();
        assert!(err.to_string().contains("redis.secret_key"), "{err}");
        let err = load(&[("HOOKRELAY__WORKER__MAX_IN_FLIGHT_BYTES", "1000")]).unwrap_err();
        assert!(
            err.to_string().contains("worker.max_in_flight_bytes"),
            "{err}"
        );
    }

    #[test]
    fn redis_modes_need_their_keys_and_name_them() {
        let s = load(&[]).unwrap();
        assert_eq!(s.redis.mode, RedisMode::Single);
        assert!(s.redis.urls.is_empty());

        let s = load(&[
            ("HOOKRELAY__REDIS__MODE", "cluster"),
            (
                "HOOKRELAY__REDIS__URLS",
                "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
            ),
        ])
        .unwrap();
        assert_eq!(s.redis.mode, RedisMode::Cluster);
        assert_eq!(s.redis.urls.len(), 2);

        let refused = [
            (vec![("HOOKRELAY__REDIS__MODE", "replicated")], "redis.mode"),
            (vec![("HOOKRELAY__REDIS__MODE", "cluster")], "redis.urls"),
            (
                vec![("HOOKRELAY__REDIS__URLS", "redis://10.0.0.1:7000")],
                "redis.urls",
            ),
            (
                vec![
                    ("HOOKRELAY__REDIS__MODE", "sentinel"),
                    ("HOOKRELAY__REDIS__URLS", "redis://10.0.0.1:26379"),
                ],
                "redis.sentinel_master",
            ),
            (
                vec![
                    ("HOOKRELAY__REDIS__MODE", "cluster"),
                    ("HOOKRELAY__REDIS__URLS", "rediss://a:7000,redis://b:7000"),
                ],
                "redis.urls",
            ),
            (
                vec![
                    ("HOOKRELAY__REDIS__MODE", "cluster"),
                    ("HOOKRELAY__REDIS__URLS", "unix:///run/redis.sock"),
                ],
                "redis.urls",
            ),
        ];
        for (env, key) in refused {
            let err = load(&env).unwrap_err();
            assert!(err.to_string().contains(key), "{env:?}: {err}");
        }
    }

    #[test]
    fn redis_settings_survive_the_trip_through_the_environment() {
        let env = [
            ("HOOKRELAY__REDIS__MODE", "sentinel"),
            ("HOOKRELAY__REDIS__URL", "rediss://:pw@ignored:6379/2"),
            (
                "HOOKRELAY__REDIS__URLS",
                "rediss://10.0.0.1:26379,rediss://10.0.0.2:26379",
            ),
            ("HOOKRELAY__REDIS__SENTINEL_MASTER", "main"),
            ("HOOKRELAY__REDIS__TLS__CA_FILE", "/etc/ca.pem"),
            ("HOOKRELAY__REDIS__LOOKUP_TIMEOUT", "1500ms"),
            (
                "HOOKRELAY__REDIS__SECRET_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
        ];
        let original = load(&env).unwrap().redis;

        let copied = Settings::load_with_env(None, original.to_env())
            .unwrap()
            .redis;

        assert_eq!(format!("{copied:?}"), format!("{original:?}"));
        assert_eq!(copied.secret_key, original.secret_key);
    }

    #[test]
    fn tls_files_are_refused_where_nothing_would_use_them() {
        let err = load(&[("HOOKRELAY__REDIS__TLS__CA_FILE", "/etc/ca.pem")]).unwrap_err();
        assert!(err.to_string().contains("redis.tls"), "{err}");
        let err = load(&[
            ("HOOKRELAY__REDIS__URL", "rediss://cache:6380"),
            ("HOOKRELAY__REDIS__TLS__CERT_FILE", "/etc/client.pem"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("redis.tls.key_file"), "{err}");
        let err = load(&[("HOOKRELAY__REDIS__URL", "rediss://cache:6380/#insecure")]).unwrap_err();
        assert!(err.to_string().contains("redis.url"), "{err}");

        let s = load(&[
            ("HOOKRELAY__REDIS__URL", "rediss://cache:6380"),
            ("HOOKRELAY__REDIS__TLS__CA_FILE", "/etc/ca.pem"),
        ])
        .unwrap();
        assert_eq!(
            s.redis.tls.ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
    }

    #[test]
    fn amqp_urls_replace_url_and_come_comma_separated_from_the_environment() {
        let s = load(&[]).unwrap();
        assert_eq!(s.amqp.nodes.len(), 1);
        assert!(s.amqp.tls.is_none());
        let s = load(&[(
            "HOOKRELAY__AMQP__URLS",
            "amqp://a:5672/%2f,amqp://b:5673/%2f,amqp://c:5674/%2f",
        )])
        .unwrap();
        let nodes: Vec<String> = s.amqp.nodes.iter().map(|n| n.to_string()).collect();
        assert_eq!(nodes, ["amqp://a:5672", "amqp://b:5673", "amqp://c:5674"]);
        let err = load(&[("HOOKRELAY__AMQP__URLS", "amqp://a,http://b")]).unwrap_err();
        assert!(err.to_string().contains("amqp.urls"), "{err}");
    }

    #[test]
    fn an_amqps_url_gets_tls_and_tls_files_never_go_with_plain_text() {
        let s = load(&[("HOOKRELAY__AMQP__URL", "amqps://h/%2f")]).unwrap();
        assert!(
            s.amqp.tls.is_some(),
            "system roots for amqps without ca_file"
        );
        let err = load(&[("HOOKRELAY__AMQP__TLS__CA_FILE", "/etc/hostname")]).unwrap_err();
        assert!(err.to_string().contains("amqp.url"), "{err}");
        let err = load(&[("HOOKRELAY__AMQP__URLS", "amqps://a,amqp://b")]).unwrap_err();
        assert!(err.to_string().contains("mixes"), "{err}");
    }

    #[test]
    fn a_broken_tls_file_stops_start_up_naming_its_key() {
        let dir = std::env::temp_dir().join(format!("hookrelay-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let not_pem = not_pem.to_str().unwrap();
        let amqps = ("HOOKRELAY__AMQP__URL", "amqps://h/%2f");
        let cases = [
            (
                "HOOKRELAY__AMQP__TLS__CA_FILE",
                "/nonexistent/ca.pem",
                "amqp.tls.ca_file",
            ),
            ("HOOKRELAY__AMQP__TLS__CA_FILE", not_pem, "amqp.tls.ca_file"),
            (
                "HOOKRELAY__AMQP__TLS__CERT_FILE",
                not_pem,
                "amqp.tls.key_file",
            ),
            (
                "HOOKRELAY__AMQP__TLS__KEY_FILE",
                not_pem,
                "amqp.tls.cert_file",
            ),
        ];
        for (var, value, key) in cases {
            let err = load(&[amqps, (var, value)]).unwrap_err();
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
        let err = load(&[
            amqps,
            ("HOOKRELAY__AMQP__TLS__CERT_FILE", not_pem),
            ("HOOKRELAY__AMQP__TLS__KEY_FILE", not_pem),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("amqp.tls.cert_file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_secret_key_is_optional_and_32_bytes_of_base64() {
        assert_eq!(load(&[]).unwrap().redis.secret_key, None);
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let s = load(&[("HOOKRELAY__REDIS__SECRET_KEY", key)]).unwrap();
        let expected: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(s.redis.secret_key, Some(SecretKey(expected)));
        assert!(!format!("{s:?}").contains("AAEC"));
    }
}
