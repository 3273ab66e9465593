//! `[redis]`: where the subscriptions are (one server, a cluster or a master named by
//! sentinels), how they are reached (`[redis.tls]`), their key prefix, and the key that seals
//! webhook secrets. Defaults and their documentation: `[redis]` in `config/default.toml`.

use super::value::{Period, Prefix};
use super::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

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
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let secret_key = self
            .secret_key
            .as_ref()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k.0))
            .unwrap_or_default();
        [
            ("URL", self.url.clone()),
            ("MODE", self.mode.as_str().to_owned()),
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RedisMode {
    Single,
    Cluster,
    Sentinel,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

impl TryFrom<String> for RedisMode {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        [RedisMode::Single, RedisMode::Cluster, RedisMode::Sentinel]
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not one of \"single\", \"cluster\", \"sentinel\""))
    }
}

/// `[redis.tls]`: PEM files for `rediss://` URLs; `None` = the system's roots / no client cert.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The 32-byte key of `redis.secret_key`; its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// `[redis]` as the layers hold it, every value already valid on its own; what depends on
/// `mode` is checked in [`RawRedis::settle`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    url: RedisUrl,
    mode: RedisMode,
    urls: RedisUrls,
    sentinel_master: String,
    tls: RawRedisTls,
    prefix: Prefix,
    lookup_timeout: Period,
    secret_key: OptionalSecretKey,
    min_replicas: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisTls {
    ca_file: OptionalPath,
    cert_file: OptionalPath,
    key_file: OptionalPath,
}

impl RawRedis {
    pub(super) fn settle(self) -> Result<RedisSettings, ConfigError> {
        self.check_urls_fit_the_mode()?;
        let sentinel_master = self.sentinel_master.trim().to_owned();
        if self.mode == RedisMode::Sentinel && sentinel_master.is_empty() {
            return Err(ConfigError::invalid(
                "redis.sentinel_master",
                "must name the master the sentinels monitor (their `sentinel monitor <name> ...`)",
            ));
        }
        let tls = self.tls()?;
        Ok(RedisSettings {
            url: self.url.0,
            mode: self.mode,
            urls: self.urls.0.into_iter().map(|u| u.0).collect(),
            sentinel_master,
            tls,
            prefix: self.prefix.into(),
            lookup_timeout: self.lookup_timeout.into(),
            secret_key: self.secret_key.0,
            min_replicas: self.min_replicas,
        })
    }

    /// Single mode takes `url` alone (a unix socket too); cluster and sentinel take `urls`, all
    /// TLS or all plain text, and a `url` with an address (cluster nodes and masters are named by
    /// address, so never a socket).
    fn check_urls_fit_the_mode(&self) -> Result<(), ConfigError> {
        let urls = &self.urls.0;
        match self.mode {
            RedisMode::Single if !urls.is_empty() => Err(ConfigError::invalid(
                "redis.urls",
                "is only for redis.mode \"cluster\" or \"sentinel\"; single mode uses redis.url",
            )),
            RedisMode::Cluster | RedisMode::Sentinel if urls.is_empty() => {
                Err(ConfigError::invalid(
                    "redis.urls",
                    "must list the cluster's seed nodes (cluster) or the sentinels (sentinel)",
                ))
            }
            RedisMode::Cluster | RedisMode::Sentinel if self.url.is_socket() => Err(
                ConfigError::invalid("redis.url", "scheme must be one of redis, rediss"),
            ),
            _ if (1..urls.len()).contains(&self.urls.tls_count()) => Err(ConfigError::invalid(
                "redis.urls",
                "mixes redis:// and rediss://: the nodes are all reached over TLS or all in plain \
                 text",
            )),
            _ => Ok(()),
        }
    }

    /// `[redis.tls]`: a client certificate with its key, and only where a URL of the mode is
    /// `rediss://`.
    fn tls(&self) -> Result<RedisTls, ConfigError> {
        let tls = RedisTls {
            ca_file: self.tls.ca_file.0.clone(),
            cert_file: self.tls.cert_file.0.clone(),
            key_file: self.tls.key_file.0.clone(),
        };
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => Err(ConfigError::invalid(
                "redis.tls.key_file",
                "must be set with redis.tls.cert_file (a client certificate needs its key)",
            )),
            (None, Some(_)) => Err(ConfigError::invalid(
                "redis.tls.cert_file",
                "must be set with redis.tls.key_file (a client key needs its certificate)",
            )),
            // Certificates configured for a plain-text URL would suggest TLS where there is none.
            _ if tls != RedisTls::default() && !self.uses_tls() => Err(ConfigError::invalid(
                "redis.tls",
                "certificate files are set, but no Redis URL of this mode uses rediss://",
            )),
            _ => Ok(tls),
        }
    }

    fn uses_tls(&self) -> bool {
        let urls_tls = self.urls.tls_count() > 0;
        match self.mode {
            RedisMode::Single => self.url.is_tls(),
            RedisMode::Cluster => urls_tls,
            // The sentinels (urls) and the master (url's scheme) may each be TLS.
            RedisMode::Sentinel => self.url.is_tls() || urls_tls,
        }
    }
}

/// A `redis://`, `rediss://` or `unix://` URL. `#insecure` (the redis crate's "skip certificate
/// checks") is refused: hookrelay always verifies the server's certificate.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct RedisUrl(String);

impl RedisUrl {
    fn is_tls(&self) -> bool {
        self.0.starts_with("rediss:")
    }

    fn is_socket(&self) -> bool {
        self.0.starts_with("unix:")
    }
}

impl TryFrom<String> for RedisUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let url = url::Url::parse(&text).map_err(|e| format!("not a URL: {e}"))?;
        if !["redis", "rediss", "unix"].contains(&url.scheme()) {
            return Err("scheme must be one of redis, rediss, unix".into());
        }
        if url.fragment().is_some() {
            return Err(
                "a URL fragment (e.g. #insecure) is not supported: certificates are always \
                 verified"
                    .into(),
            );
        }
        Ok(RedisUrl(text))
    }
}

/// `redis.urls`: cluster nodes or sentinels, named by address (never a unix socket); blank
/// entries (an empty variable in the environment) are skipped.
#[derive(Deserialize)]
#[serde(try_from = "Vec<String>")]
struct RedisUrls(Vec<RedisUrl>);

impl RedisUrls {
    fn tls_count(&self) -> usize {
        self.0.iter().filter(|u| u.is_tls()).count()
    }
}

impl TryFrom<Vec<String>> for RedisUrls {
    type Error = String;

    fn try_from(texts: Vec<String>) -> Result<Self, String> {
        let urls = texts
            .into_iter()
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
            .map(RedisUrl::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        match urls.iter().any(RedisUrl::is_socket) {
            true => Err("scheme must be one of redis, rediss".into()),
            false => Ok(RedisUrls(urls)),
        }
    }
}

/// A file path; blank means none.
#[derive(Deserialize)]
#[serde(from = "String")]
struct OptionalPath(Option<PathBuf>);

impl From<String> for OptionalPath {
    fn from(text: String) -> Self {
        let text = text.trim();
        OptionalPath((!text.is_empty()).then(|| PathBuf::from(text)))
    }
}

/// `redis.secret_key`: blank means no key; otherwise base64 of exactly 32 bytes.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct OptionalSecretKey(Option<SecretKey>);

impl TryFrom<String> for OptionalSecretKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        use base64::Engine;
        if text.trim().is_empty() {
            return Ok(OptionalSecretKey(None));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "is not base64 (make one with `openssl rand -base64 32`)")?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("decodes to {} bytes; it must be 32", b.len()))?;
        Ok(OptionalSecretKey(Some(SecretKey(bytes))))
    }
}
