//! What one HTTP listener lets its clients hold: `api.max_connections`,
//! `api.header_read_timeout`, `api.idle_timeout` and the same three keys of `[ops]`. Both
//! sections list the keys themselves (serde's `flatten` cannot go with `deny_unknown_fields`)
//! and build [`ConnectionLimits`] from them here.

use super::value::{Count, Period};
use std::time::Duration;

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

impl ConnectionLimits {
    pub(super) fn new(
        max_connections: Count,
        header_read_timeout: Period,
        idle_timeout: Period,
    ) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max_connections.into(),
            header_read_timeout: header_read_timeout.into(),
            idle_timeout: idle_timeout.into(),
        }
    }
}
