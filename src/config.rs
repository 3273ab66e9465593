//! One typed settings tree (DESIGN §6): built-in defaults (`config/default.toml`) → the `--config`
//! file → `HOOKRELAY__<SECTION>__<KEY>` environment variables; validated once, naming the key.

use crate::broker::connect::Node;
use crate::broker::tls::{self, TlsConfig};
use serde::Deserialize;
use std::net::SocketAddr;
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
    pub url: String,
    pub prefix: String,
    pub lookup_timeout: Duration,
    /// Encrypts webhook secrets at rest; `None` (the key is empty) keeps them in plain text.
    pub secret_key: Option<SecretKey>,
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
    pub rotation_grace: Duration,
    pub disable_after: Duration,
    pub allow_private_targets: bool,
    pub allow_http: bool,
    pub max_in_flight_per_webhook: usize,
    pub max_in_flight: usize,
}

#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub shutdown_grace: Duration,
    /// Runtime threads of a worker process; 1 = a single-threaded runtime.
    pub threads: usize,
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
}

#[derive(Clone, Debug)]
pub struct OpsSettings {
    pub listen: SocketAddr,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    prefix: String,
    lookup_timeout: String,
    secret_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    retry_schedule: Vec<String>,
    timeout: String,
    connect_timeout: String,
    max_event_bytes: usize,
    rotation_grace: String,
    disable_after: String,
    allow_private_targets: bool,
    allow_http: bool,
    max_in_flight_per_webhook: usize,
    max_in_flight: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    shutdown_grace: String,
    threads: usize,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    listen: String,
}

/// Parses `"500ms"`, `"5s"`, `"2h"`, `"5d"`; zero is refused.
pub fn parse_duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| invalid(key, format!("{text:?} is not a duration like \"5s\": {e}")))?;
    if d.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
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
        let raw: Raw = builder
            .add_source(
                config::Environment::with_prefix("HOOKRELAY")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("delivery.retry_schedule")
                    .with_list_parse_key("amqp.urls")
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()?
            .try_deserialize()?;
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Settings, ConfigError> {
        let retry_schedule = raw
            .delivery
            .retry_schedule
            .iter()
            .map(|s| parse_duration("delivery.retry_schedule", s))
            .collect::<Result<Vec<_>, _>>()?;
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
            },
            redis: RedisSettings {
                url: parse_url("redis.url", &raw.redis.url, &["redis", "rediss", "unix"])?,
                prefix: parse_prefix("redis.prefix", &raw.redis.prefix)?,
                lookup_timeout: parse_duration("redis.lookup_timeout", &raw.redis.lookup_timeout)?,
                secret_key: parse_secret_key("redis.secret_key", &raw.redis.secret_key)?,
            },
            delivery: DeliverySettings {
                retry_schedule,
                timeout: parse_duration("delivery.timeout", &raw.delivery.timeout)?,
                connect_timeout: parse_duration(
                    "delivery.connect_timeout",
                    &raw.delivery.connect_timeout,
                )?,
                max_event_bytes: raw.delivery.max_event_bytes,
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
            },
            log: LogSettings { format },
            api: ApiSettings {
                listen: parse_addr("api.listen", &raw.api.listen)?,
                admin_token: raw.api.admin_token,
            },
            ops: OpsSettings {
                listen: parse_addr("ops.listen", &raw.ops.listen)?,
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
    fn defaults_match_the_documented_contract() {
        let s = load(&[]).unwrap();
        assert_eq!(s.amqp.prefix, "hookrelay");
        assert_eq!(s.delivery.retry_schedule.len(), 9);
        assert_eq!(s.delivery.retry_schedule[1], Duration::from_secs(300));
        assert_eq!(s.delivery.timeout, Duration::from_secs(15));
        assert_eq!(s.delivery.disable_after, Duration::from_secs(5 * 86_400));
        assert_eq!(s.delivery.max_event_bytes, 262_144);
        assert!(!s.delivery.allow_private_targets);
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
