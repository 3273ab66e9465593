//! `[api]`: the admin API's listener, its token, its request bounds and whom it trusts to name
//! the client. Defaults and their documentation: `[api]` in `config/default.toml`.

use super::listener::ConnectionLimits;
use super::value::{Bounded, Count, ListenAddr, Period};
use super::ConfigError;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

/// `[api]` as the layers hold it, every value already in its range. `admin_token` is checked
/// where the API starts (`api::start`): the other commands run without one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    listen: ListenAddr,
    admin_token: String,
    request_timeout: Period,
    test_sends_per_account: Count,
    failed_signin_limit: Bounded<1, { u32::MAX as u64 }>,
    failed_signin_window: Period,
    trusted_proxies: TrustedProxies,
    max_connections: Count,
    header_read_timeout: Period,
    idle_timeout: Period,
}

impl RawApi {
    pub(super) fn settle(self) -> Result<ApiSettings, ConfigError> {
        Ok(ApiSettings {
            listen: self.listen.into(),
            admin_token: self.admin_token,
            request_timeout: self.request_timeout.into(),
            test_sends_per_account: self.test_sends_per_account.into(),
            failed_signin_limit: self.failed_signin_limit.into(),
            failed_signin_window: self.failed_signin_window.into(),
            trusted_proxies: self.trusted_proxies.0,
            connections: ConnectionLimits::new(
                self.max_connections,
                self.header_read_timeout,
                self.idle_timeout,
            ),
        })
    }
}

/// `api.trusted_proxies`: IP addresses (no ranges); blank entries (a trailing comma in the
/// environment) are skipped.
#[derive(Deserialize)]
#[serde(try_from = "Vec<String>")]
struct TrustedProxies(Vec<IpAddr>);

impl TryFrom<Vec<String>> for TrustedProxies {
    type Error = String;

    fn try_from(texts: Vec<String>) -> Result<Self, String> {
        texts
            .iter()
            .map(|text| text.trim())
            .filter(|text| !text.is_empty())
            .map(|text| {
                text.parse()
                    .map_err(|_| format!("{text:?} is not an IP address like 10.0.0.5"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}
