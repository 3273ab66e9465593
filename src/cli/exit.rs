//! Exit statuses by cause, the `sysexits` convention that `rabbitmqctl` also follows, so that
//! scripts and supervisors can tell a typo from a broker that is down:
//!
//! | status | cause |
//! |---|---|
//! | 0 | success |
//! | 1 | the command ran and failed: no such dead letter or webhook, letters left unreplayed |
//! | 64 | usage: unknown flag, bad value, nothing selected, `purge` without `--yes` |
//! | 65 | data refused: an invalid URL or event list, the 10-webhook limit, a duplicate URL, an envelope `publish --check` refuses, a bad line of an import |
//! | 69 | service unavailable: RabbitMQ or Redis cannot be reached |
//! | 75 | temporary failure: the broker or Redis failed or timed out mid-command, or fewer replicas than `redis.min_replicas` confirmed a write; try again |
//! | 78 | configuration: an invalid or unreadable configuration; no store (marker) where it points; the exchanges and queues not declared; `amqp.partitions` > 1 without the consistent-hash plugin, or a change of it that would leave messages behind |
//! | 130 | interrupted by SIGINT or SIGTERM (after saying how far it got) |

use crate::config::ConfigError;
use crate::dlq::DlqError;
use crate::subscription::store::{KeyCheckError, StoreError};
use std::process::ExitCode;

pub const USAGE: u8 = 64;
pub const DATA: u8 = 65;
pub const UNAVAILABLE: u8 = 69;
pub const TEMPFAIL: u8 = 75;
pub const CONFIG: u8 = 78;
pub const INTERRUPTED: u8 = 130;

/// A command line that asks for something impossible (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// RabbitMQ or Redis could not be reached at all (exit 69).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {service} ({key})")]
pub struct Unavailable {
    pub service: &'static str,
    pub key: &'static str,
    #[source]
    pub source: anyhow::Error,
}

impl Unavailable {
    pub fn rabbitmq(source: impl Into<anyhow::Error>) -> Unavailable {
        Unavailable {
            service: "RabbitMQ",
            key: "amqp.url",
            source: source.into(),
        }
    }

    pub fn redis(source: impl Into<anyhow::Error>) -> Unavailable {
        Unavailable {
            service: "Redis",
            key: "redis.url",
            source: source.into(),
        }
    }
}

/// The exchange or queue a command needs does not exist (exit 78): the topology was never
/// declared on this broker and prefix. A set-up step, so one line that says which, and no retry.
#[derive(Debug, thiserror::Error)]
#[error("{0} does not exist on the broker: run `hookrelay topology declare` first (a worker also declares it when it starts)")]
pub struct NotDeclared(pub String);

/// A signal stopped the command; what it did is printed before (exit 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted: {0}")]
pub struct Interrupted(pub String);

/// The exit status for an error: the first cause in its chain that names one.
pub fn status_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(code) = status_of_cause(cause) {
            return code;
        }
    }
    1
}

/// One cause's status: by its type first, then by its variant where the type has several.
fn status_of_cause(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    status_of_type(cause)
        .or_else(|| cause.downcast_ref::<DlqError>().map(dlq_status))
        .or_else(|| cause.downcast_ref::<StoreError>().map(store_status))
        .or_else(|| cause.downcast_ref::<KeyCheckError>().map(key_check_status))
}

/// The causes whose type alone says the status.
fn status_of_type(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    if cause.is::<Usage>() {
        return Some(USAGE);
    }
    if cause.is::<Unavailable>() {
        return Some(UNAVAILABLE);
    }
    if cause.is::<Interrupted>() {
        return Some(INTERRUPTED);
    }
    if cause.is::<ConfigError>()
        || cause.is::<NotDeclared>()
        || cause.is::<crate::subscription::marker::StoreMissing>()
    {
        return Some(CONFIG);
    }
    // A URL the API's guard refuses; `publish --check`: the envelope a worker would dead-letter;
    // a bad line of an import.
    if cause.is::<crate::api::webhooks::UrlRefused>()
        || cause.is::<crate::event::Poison>()
        || cause.is::<crate::subscription::backup::Refusal>()
    {
        return Some(DATA);
    }
    // The consistent-hash plugin missing, or a change of amqp.partitions that would strand
    // messages: set-up steps, like a topology never declared.
    if let Some(e) = cause.downcast_ref::<crate::broker::partitions::TopologyError>() {
        if e.is_permanent() {
            return Some(CONFIG);
        }
    }
    if cause.is::<lapin::Error>()
        || cause.is::<crate::broker::publisher::PublishError>()
        || cause.is::<std::io::Error>()
    {
        return Some(TEMPFAIL);
    }
    None
}

fn dlq_status(e: &DlqError) -> u8 {
    match e {
        DlqError::Connect(_) => UNAVAILABLE,
        DlqError::NothingSelected => USAGE,
        DlqError::Interrupted => INTERRUPTED,
        DlqError::NotFound(_) => 1,
        // A closed pipe: the reader went away; nothing to retry.
        DlqError::Output(_) => 1,
        DlqError::NoQueue(..) => UNAVAILABLE,
        DlqError::ConsumerEnded(_)
        | DlqError::Unconfirmed(_)
        | DlqError::Amqp(_)
        | DlqError::Store(_) => TEMPFAIL,
    }
}

fn store_status(e: &StoreError) -> u8 {
    match e {
        StoreError::NotFound(_) => 1,
        StoreError::LimitReached(_) | StoreError::DuplicateUrl { .. } => DATA,
        StoreError::Url(_) | StoreError::Unreadable(_) => DATA,
        StoreError::Connect(_) => UNAVAILABLE,
        StoreError::Redis(_) | StoreError::Timeout(_) => TEMPFAIL,
        // On the primary, not yet on redis.min_replicas replicas: worth trying again later.
        StoreError::Unconfirmed { .. } => TEMPFAIL,
        // No store where the configuration points: init, restore, or fix the settings.
        StoreError::Missing(_) => CONFIG,
    }
}

fn key_check_status(e: &KeyCheckError) -> u8 {
    match e {
        KeyCheckError::Store(_) => TEMPFAIL,
        // The wrong redis.secret_key (or none) for what is stored: a configuration error.
        _ => CONFIG,
    }
}

/// Runs the `hookrelay` command line and turns the outcome into an exit status; errors are one
/// line on stderr.
pub fn run_main() -> ExitCode {
    use clap::Parser;
    let cli = match super::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; everything else is usage.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { USAGE } else { 0 });
        }
    };
    match super::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("hookrelay: {e:#}");
            ExitCode::from(status_of(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_cause_deep_in_the_chain_names_the_status() {
        let down: anyhow::Error = Unavailable::rabbitmq(std::io::Error::other("refused")).into();
        assert_eq!(status_of(&down.context("listing")), UNAVAILABLE);
        let usage = anyhow::Error::new(Usage("add --yes".into()));
        assert_eq!(status_of(&usage), USAGE);
        let config: anyhow::Error = ConfigError::Invalid {
            key: "amqp.url",
            message: "bad".into(),
        }
        .into();
        assert_eq!(status_of(&config), CONFIG);
        let nothing: Result<(), DlqError> = Err(DlqError::NothingSelected);
        assert_eq!(status_of(&nothing.context("purging").unwrap_err()), USAGE);
        let timeout: anyhow::Error = StoreError::Timeout(std::time::Duration::from_secs(1)).into();
        assert_eq!(status_of(&timeout), TEMPFAIL);
        assert_eq!(status_of(&anyhow::anyhow!("something else")), 1);
    }
}
