//! One typed settings tree (DESIGN §6): built-in defaults (`config/default.toml`) → the `--config`
//! file → `HOOKRELAY__<SECTION>__<KEY>` environment variables; parsed once, naming the key.
//!
//! # Layout
//! One module per section, each owning the raw struct the layers deserialize into (every value
//! already a type that can only hold a valid one: "parse, don't validate"), the public settings
//! it becomes, and the checks that span its keys: [`amqp`] (with [`tls`] for `[amqp.tls]`),
//! [`redis`], [`delivery`], [`worker`], [`log`], [`api`] and [`ops`] (with [`listener`], the
//! limits both listeners share). [`value`] holds the types several sections use: durations,
//! bounded integers, prefixes, listen addresses. The defaults are written once, each with its
//! documentation, in `config/default.toml`, which is built into the binary.
//!
//! # Adding a key
//! 1. Document it with its default in its section of `config/default.toml` (every key has one
//!    there, so a missing key is never a surprise).
//! 2. In the section's module (`src/config/<section>.rs`): add the field to the public
//!    `<Section>Settings`, and to `Raw<Section>` typed as what it must be ([`value::Period`] for a
//!    duration, [`value::Bounded`] or [`value::Count`] for a bounded number, a newtype with
//!    `#[serde(try_from = …)]` for anything else), then carry it across in `Raw<Section>::settle`
//!    (with a check there only if it depends on another key: `ConfigError::invalid("section.key", …)`).
//! 3. A list read from the environment (comma-separated) also needs its
//!    `.with_list_parse_key("section.key")` in [`Settings::layers`].
//! 4. A test in this file's `tests` that the key's default loads and a bad value names the key.
//!
//! A new section is a new `src/config/<section>.rs` in the same shape, with one field in
//! [`Settings`], one in `Raw` and one line in `Settings::validate`.
//!
//! # Errors
//! A value its type refuses is reported by serde with the `try_from` message; the `config` crate
//! adds the key's path (`delivery.retry_schedule[2]`) and [`ConfigError::Value`] puts it first.
//! A check across keys names its key with [`ConfigError::Invalid`]. Both read
//! ``configuration key `amqp.prefetch`: must be at least 1``.

pub mod amqp;
pub mod api;
pub mod delivery;
pub mod listener;
pub mod log;
pub mod operational;
pub mod ops;
pub mod redis;
pub mod telemetry;
pub mod tls;
pub mod value;
pub mod worker;

pub use amqp::{AmqpSettings, Node, MAX_PARTITIONS};
pub use api::ApiSettings;
pub use delivery::{DeliverySettings, MAX_RETRY_STEP};
pub use listener::ConnectionLimits;
pub use log::{LogFormat, LogSettings};
pub use operational::OperationalSettings;
pub use ops::OpsSettings;
pub use redis::{RedisMode, RedisSettings, RedisTls, SecretKey};
pub use telemetry::TelemetrySettings;
pub use tls::{TlsConfig, TlsFiles};
pub use value::MAX_DURATION;
pub use worker::WorkerSettings;

use serde::Deserialize;
use std::path::Path;

/// The defaults, documented key by key in the repository's `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A check across keys (or at start of a command) failed; `key` is the one to change.
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// A value its key's type refuses: `key` is the path the `config` crate reports, e.g.
    /// `delivery.retry_schedule[2]`.
    #[error("configuration key `{key}`: {message}")]
    Value { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            message: message.into(),
        }
    }

    /// The `config` crate's report of a refused value, with its key first like every other
    /// configuration error; other load errors (an unreadable file) stay as they are.
    fn from_deserialize(e: config::ConfigError) -> ConfigError {
        let place =
            |origin: Option<String>| origin.map(|o| format!(" (in {o})")).unwrap_or_default();
        match e {
            config::ConfigError::At {
                error,
                origin,
                key: Some(key),
            } => ConfigError::Value {
                key,
                message: format!("{error}{}", place(origin)),
            },
            config::ConfigError::Type {
                origin,
                unexpected,
                expected,
                key: Some(key),
            } => ConfigError::Value {
                key,
                message: format!(
                    "invalid type: {unexpected}, expected {expected}{}",
                    place(origin)
                ),
            },
            other => ConfigError::Load(other),
        }
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
    pub operational: OperationalSettings,
    pub telemetry: TelemetrySettings,
}

/// What the layers hold, one raw struct per section: each value parsed on its own, before the
/// checks across keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    amqp: amqp::RawAmqp,
    redis: redis::RawRedis,
    delivery: delivery::RawDelivery,
    worker: worker::RawWorker,
    log: log::RawLog,
    api: api::RawApi,
    ops: ops::RawOps,
    operational: operational::RawOperational,
    telemetry: telemetry::RawTelemetry,
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
        let raw: Raw = Self::layers(file, env)?
            .try_deserialize()
            .map_err(ConfigError::from_deserialize)?;
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

    /// Each section's checks across its keys, in the order of the file.
    fn validate(raw: Raw) -> Result<Settings, ConfigError> {
        let amqp = raw.amqp.settle()?;
        let partitions = amqp.partitions;
        Ok(Settings {
            amqp,
            redis: raw.redis.settle()?,
            delivery: raw.delivery.settle()?,
            worker: raw.worker.settle(partitions)?,
            log: raw.log.settle()?,
            api: raw.api.settle()?,
            ops: raw.ops.settle()?,
            operational: raw.operational.settle(),
            telemetry: raw.telemetry.settle()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::Duration;

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
        assert_eq!(
            s.telemetry.otlp_endpoint, None,
            "tracing export is off by default"
        );
        assert_eq!(s.telemetry.sampling_ratio, 1.0);
        assert!(s.delivery.send_traceparent);
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

    #[test]
    fn a_value_its_type_refuses_names_its_key_first_and_says_why() {
        let err = load(&[("HOOKRELAY__AMQP__PREFETCH", "0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration key `amqp.prefetch`: must be at least 1"
        );
        let err = load(&[("HOOKRELAY__DELIVERY__RETRY_SCHEDULE", "5s,31d")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration key `delivery.retry_schedule[1]`: a step may be"),
            "{err}"
        );
        let err = load(&[("HOOKRELAY__WORKER__SHUTDOWN_GRACE", "0s")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration key `worker.shutdown_grace`: must be longer than zero"
        );
    }

    #[test]
    fn durations_are_read_as_before_with_blanks_and_compound_units() {
        let s = load(&[
            ("HOOKRELAY__DELIVERY__RETRY_SCHEDULE", "500ms, 1m 30s ,2h"),
            ("HOOKRELAY__REDIS__LOOKUP_TIMEOUT", " 1500ms "),
        ])
        .unwrap();
        let expected = [500, 90_000, 7_200_000].map(Duration::from_millis);
        assert_eq!(s.delivery.retry_schedule, expected);
        assert_eq!(s.redis.lookup_timeout, Duration::from_millis(1500));
        let err = load(&[("HOOKRELAY__AMQP__HEARTBEAT", "1500ms")]).unwrap_err();
        assert!(err.to_string().contains("amqp.heartbeat"), "{err}");
    }
}
