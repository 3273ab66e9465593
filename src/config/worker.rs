//! `[worker]`: how a worker process runs, caches subscriptions and bounds the messages in hand.
//! Defaults and their documentation: `[worker]` in `config/default.toml`.

use super::value::{Bounded, Count, Period, MIB};
use super::ConfigError;
use serde::Deserialize;
use std::time::Duration;

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

/// `[worker]` as the layers hold it, every value already in its range.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorker {
    shutdown_grace: Period,
    threads: Count,
    /// At least 1 MiB: below it the cache would hold almost nothing.
    cache_max_bytes: Bounded<MIB, { u64::MAX }>,
    cache_ttl: Period,
    /// 1 MiB to what a `u32` counts.
    max_in_flight_bytes: Bounded<MIB, { u32::MAX as u64 }>,
    store_check_interval: Period,
    /// `"0,2"`, or empty for every partition; checked against `amqp.partitions` in `settle`.
    partitions: String,
}

impl RawWorker {
    /// `partitions_of`: `amqp.partitions`, which `worker.partitions` must stay within.
    pub(super) fn settle(self, partitions_of: u16) -> Result<WorkerSettings, ConfigError> {
        Ok(WorkerSettings {
            partitions: chosen_partitions(&self.partitions, partitions_of)?,
            shutdown_grace: self.shutdown_grace.into(),
            threads: self.threads.into(),
            cache_max_bytes: self.cache_max_bytes.into(),
            cache_ttl: self.cache_ttl.into(),
            max_in_flight_bytes: self.max_in_flight_bytes.into(),
            store_check_interval: self.store_check_interval.into(),
        })
    }
}

/// `"0,2"` → `[0, 2]`; empty → every partition. Each must exist under `amqp.partitions`.
fn chosen_partitions(text: &str, of: u16) -> Result<Option<Vec<u16>>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut chosen = Vec::new();
    for part in text.split(',') {
        let n: u16 = part.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "worker.partitions",
                format!("{part:?} is not a partition number (e.g. \"0,2\")"),
            )
        })?;
        if n >= of {
            return Err(ConfigError::invalid(
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
