//! `[ops]`: the listener of `/metrics`, `/healthz` and `/readyz`, and what its clients may hold.
//! Defaults and their documentation: `[ops]` in `config/default.toml`.

use super::listener::ConnectionLimits;
use super::value::{Count, ListenAddr, Period};
use super::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Clone, Debug)]
pub struct OpsSettings {
    pub listen: SocketAddr,
    pub connections: ConnectionLimits,
}

/// `[ops]` as the layers hold it, every value already in its range.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOps {
    listen: ListenAddr,
    max_connections: Count,
    header_read_timeout: Period,
    idle_timeout: Period,
}

impl RawOps {
    pub(super) fn settle(self) -> Result<OpsSettings, ConfigError> {
        Ok(OpsSettings {
            listen: self.listen.into(),
            connections: ConnectionLimits::new(
                self.max_connections,
                self.header_read_timeout,
                self.idle_timeout,
            ),
        })
    }
}
