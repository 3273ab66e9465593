//! hookrelay delivers platform events from RabbitMQ to merchants' webhook URLs.
//!
//! Upstream services publish an envelope ([`event`]) to the `<prefix>.events` topic exchange.
//! Stateless workers ([`worker`]) consume it, look up the account's webhooks ([`subscription`],
//! kept in Redis and cached in each worker), sign and POST the event to each matching URL
//! ([`delivery`]), wait out failures in the broker's delay queues, and park what finally fails in
//! dead-letter queues ([`broker::topology`]). The public contract is `docs/design.md`.
//!
//! # Layout
//! - [`config`]: one typed settings tree: defaults → file → environment, parsed once; one
//!   module per section (`config/amqp.rs`, `config/redis.rs`, …).
//! - [`event`]: the envelope and the 27 event types; parsing into an event or a poison reason.
//! - [`subscription`]: webhooks, the Redis store (atomic rules via Lua) and the worker's cache.
//! - [`broker`]: the queue topology and the confirmed publisher (also the library API
//!   [`broker::publisher::EventPublisher`] for upstream Rust services).
//! - [`delivery`]: the HTTP client, wire formats, signing, SSRF guard and retry policy.
//! - [`worker`]: consume → look up → deliver → ack | retry | dead-letter.
//! - [`messages`]: what travels on the queues: delivery jobs, dead letters, their headers.
//! - [`operational`]: events for the platform (`webhook.failing`, `.disabled`, `.recovered`,
//!   `delivery.dead_lettered`) on `<prefix>.operational`, decided once across workers.
//! - [`dlq`]: `hookrelay dlq`: list, show, replay and purge dead letters without reordering them.
//! - [`listen`]: a local receiver that verifies and prints deliveries.
//! - [`api`]: `hookrelay api`, the admin HTTP API (bearer tokens, OpenAPI) and the Webhooks page.
//! - [`ops`], [`metrics`], [`telemetry`], [`shutdown`]: health/metrics endpoints, every metric
//!   family, logs, signals.
//! - [`bench`]: `hookrelay bench`, throughput and latency against the broker's ceiling.
//! - [`cli`]: the subcommands of the `hookrelay` binary.

pub mod api;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dlq;
pub mod event;
pub mod listen;
pub mod messages;
pub mod metrics;
pub mod operational;
pub mod ops;
#[cfg(test)]
mod properties;
pub mod shutdown;
pub mod subscription;
pub mod telemetry;
pub mod worker;

/// Prints a JSON document on stdout (the `--json` output of every command).
pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}

/// `len` random characters of `[A-Za-z0-9]`, for ids.
pub fn random_token(len: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), len)
}
