//! One typed settings tree (DESIGN §6): built-in defaults (`config/default.toml`) → the `--config`
//! file → `HOOKRELAY__<SECTION>__<KEY>` environment variables; validated once, naming the key.

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
    pub prefix: String,
    pub prefetch: u16,
    pub publish_timeout: Duration,
    pub delivery_limit: u32,
    pub reconnect_timeout: Duration,
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
        Ok(Settings {
            amqp: AmqpSettings {
                url: parse_url("amqp.url", &raw.amqp.url, &["amqp", "amqps"])?,
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
    fn the_secret_key_is_optional_and_32_bytes_of_base64() {
        assert_eq!(load(&[]).unwrap().redis.secret_key, None);
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let s = load(&[("HOOKRELAY__REDIS__SECRET_KEY", key)]).unwrap();
        let expected: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(s.redis.secret_key, Some(SecretKey(expected)));
        assert!(!format!("{s:?}").contains("AAEC"));
    }
}
