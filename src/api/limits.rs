//! What keeps one client from wedging or flooding the API (issue 9's abuse cases):
//! - every request ends within `api.request_timeout`: 504 in the error shape, never a hang;
//! - test-sends make outbound requests on the caller's behalf, so an account has at most
//!   `api.test_sends_per_account` in flight (429 beyond), and the server [`MAX_TEST_SENDS`] (503);
//! - failed sign-ins (a bearer token that is not valid) are limited per client address:
//!   `api.failed_signin_limit` per `api.failed_signin_window`, then 429 with `Retry-After` for
//!   every token from that address (a valid one too: answering it would tell a guesser it found
//!   one) until the window ends. The address is the peer's, or, when the peer is one of
//!   `api.trusted_proxies`, the client its `X-Forwarded-For` names.
//!
//! All state is bounded: the test-send map holds only accounts with a test-send in flight (at
//! most [`MAX_TEST_SENDS`]); the sign-in windows live in a `moka` cache with a capacity and a TTL
//! of one window, so idle addresses are forgotten without a sweeper task.

use super::error::ApiError;
use crate::config::ApiSettings;
use crate::event::AccountId;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Test-sends in flight on one API server, all accounts together.
pub const MAX_TEST_SENDS: usize = 256;

/// Client addresses whose failed sign-ins are remembered; past it the least used are forgotten
/// (which can only lift a limit early, never impose one).
const MAX_TRACKED_ADDRESSES: u64 = 100_000;

/// `X-Forwarded-For` entries looked at, from the right; a longer chain is not believed further.
const MAX_FORWARDED_HOPS: usize = 16;

/// The API's limits, shared by all requests.
pub struct Limits {
    pub request_timeout: Duration,
    pub test_sends: Arc<TestSends>,
    pub signins: SigninLimiter,
    trusted_proxies: Vec<IpAddr>,
}

impl Limits {
    pub fn new(settings: &ApiSettings) -> Self {
        Limits {
            request_timeout: settings.request_timeout,
            test_sends: Arc::new(TestSends::new(
                settings.test_sends_per_account,
                MAX_TEST_SENDS,
            )),
            signins: SigninLimiter::new(
                settings.failed_signin_limit,
                settings.failed_signin_window,
            ),
            trusted_proxies: settings.trusted_proxies.clone(),
        }
    }

    /// The client address of a request; None when the router is served without connect info
    /// (then nothing is limited by address).
    pub fn client_of(&self, parts: &Parts) -> Option<IpAddr> {
        let ConnectInfo(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
        Some(client_address(
            peer.ip(),
            &parts.headers,
            &self.trusted_proxies,
        ))
    }
}

/// The peer, unless it is a trusted proxy: then the rightmost `X-Forwarded-For` entry that is
/// not a trusted proxy (entries further left were written by the client and prove nothing). An
/// entry that is not an address ends the walk at the last trusted hop.
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let canonical = |ip: IpAddr| ip.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| canonical(*t) == canonical(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev().take(MAX_FORWARDED_HOPS) {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => return client,
        }
    }
    client
}

/// Middleware: stops a request that runs past `limit` (dropping its future cancels whatever it
/// waited on) and answers 504.
pub async fn request_timeout(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timed_out(limit).into_response(),
    }
}

/// Test-sends in flight per account. A counter per account rather than a semaphore: a caller
/// over the limit is answered at once (it would otherwise wait, then time out), and the entry is
/// removed when its last test-send ends, so idle accounts take no memory.
pub struct TestSends {
    per_account: usize,
    total_limit: usize,
    in_flight: Mutex<InFlight>,
}

#[derive(Default)]
struct InFlight {
    total: usize,
    by_account: HashMap<AccountId, usize>,
}

/// A test-send's place; dropping it (also when the request is cancelled) frees it.
pub struct TestSendSlot {
    sends: Arc<TestSends>,
    account: AccountId,
}

impl TestSends {
    pub fn new(per_account: usize, total_limit: usize) -> Self {
        TestSends {
            per_account,
            total_limit,
            in_flight: Mutex::new(InFlight::default()),
        }
    }

    /// A slot for one test-send of `account`, or the error to answer: 429 when the account has
    /// its limit in flight, 503 when the server has.
    pub fn try_take(self: &Arc<Self>, account: &AccountId) -> Result<TestSendSlot, ApiError> {
        // Held for a few map operations only, never across an await.
        let mut in_flight = self
            .in_flight
            .lock()
            .expect("never poisoned: no panics inside");
        let mine = in_flight.by_account.get(account).copied().unwrap_or(0);
        if mine >= self.per_account {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_test_sends",
                format!(
                    "this account already has {mine} test-sends in flight, the most it may have \
                     (api.test_sends_per_account); wait for one to finish"
                ),
            )
            .retry_after(Duration::from_secs(1)));
        }
        if in_flight.total >= self.total_limit {
            return Err(ApiError::unavailable(
                "the server has too many test-sends in flight; try again shortly",
            )
            .retry_after(Duration::from_secs(1)));
        }
        in_flight.total += 1;
        *in_flight.by_account.entry(account.clone()).or_insert(0) += 1;
        Ok(TestSendSlot {
            sends: self.clone(),
            account: account.clone(),
        })
    }

    #[cfg(test)]
    fn tracked_accounts(&self) -> usize {
        self.in_flight.lock().unwrap().by_account.len()
    }
}

impl Drop for TestSendSlot {
    fn drop(&mut self) {
        let mut in_flight = self
            .sends
            .in_flight
            .lock()
            .expect("never poisoned: no panics inside");
        in_flight.total -= 1;
        if let Some(n) = in_flight.by_account.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                in_flight.by_account.remove(&self.account);
            }
        }
    }
}

/// Failed sign-ins per client address, in fixed windows that start at an address's first
/// attempt. Chosen over `governor`'s keyed limiter because only failures count (a request is
/// known to have failed after the token was looked up) and because moka bounds the entries by
/// itself; `moka` is also the worker's subscription cache.
pub struct SigninLimiter {
    allowed: u32,
    window: Duration,
    by_address: moka::sync::Cache<IpAddr, Arc<Window>>,
}

struct Window {
    started: Instant,
    /// Failures, plus sign-ins under way (see [`SigninAttempt`]).
    counted: AtomicU32,
}

/// One sign-in under way. It counts as a failure from the start, so that many guesses sent at
/// once cannot all be checked before the first failure is counted; [`SigninAttempt::succeeded`]
/// takes it back. A request stopped mid-check (its timeout) keeps the count: rare, and erring
/// towards the limit.
pub struct SigninAttempt {
    window: Option<Arc<Window>>,
}

impl SigninLimiter {
    pub fn new(allowed: u32, window: Duration) -> Self {
        SigninLimiter {
            allowed,
            window,
            by_address: moka::sync::Cache::builder()
                .max_capacity(MAX_TRACKED_ADDRESSES)
                .time_to_live(window)
                .build(),
        }
    }

    /// Starts a sign-in from `client` (None: the address is unknown, nothing is limited), or
    /// the 429 to answer when the address has no attempts left in this window.
    pub fn attempt(&self, client: Option<IpAddr>) -> Result<SigninAttempt, ApiError> {
        let Some(client) = client else {
            return Ok(SigninAttempt { window: None });
        };
        let window = self.by_address.get_with(key(client), || {
            Arc::new(Window {
                started: Instant::now(),
                counted: AtomicU32::new(0),
            })
        });
        let before = window.counted.fetch_add(1, Ordering::AcqRel);
        if before >= self.allowed {
            window.counted.fetch_sub(1, Ordering::AcqRel);
            let left = self.window.saturating_sub(window.started.elapsed());
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failed_signins",
                format!(
                    "too many invalid tokens from this address; try again in {} s",
                    left.as_secs().max(1)
                ),
            )
            .retry_after(left));
        }
        Ok(SigninAttempt {
            window: Some(window),
        })
    }
}

impl SigninAttempt {
    /// The token was valid (or could not be checked): this attempt is not a failure.
    pub fn succeeded(mut self) {
        if let Some(window) = self.window.take() {
            window.counted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What one client is: its IPv4 address, or the /64 of its IPv6 address (a single host
/// usually holds a whole /64, so counting addresses would let it rotate through them).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(s: &str) -> AccountId {
        s.parse().unwrap()
    }

    #[test]
    fn an_account_has_at_most_its_limit_of_test_sends_and_idle_accounts_are_forgotten() {
        let sends = Arc::new(TestSends::new(2, 3));
        let a1 = sends.try_take(&account("a")).unwrap();
        let a2 = sends.try_take(&account("a")).unwrap();
        let refused = sends.try_take(&account("a")).err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        let b1 = sends.try_take(&account("b")).unwrap();
        let full = sends.try_take(&account("c")).err().unwrap();
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);

        drop(a1);
        let a3 = sends.try_take(&account("a")).unwrap();
        drop((a2, a3, b1));
        assert_eq!(sends.tracked_accounts(), 0);
        assert!(sends.try_take(&account("c")).is_ok());
    }

    #[test]
    fn failed_signins_are_limited_per_address_until_the_window_ends() {
        let limiter = SigninLimiter::new(2, Duration::from_millis(300));
        let guesser: Option<IpAddr> = Some("203.0.113.9".parse().unwrap());
        let other: Option<IpAddr> = Some("198.51.100.1".parse().unwrap());

        limiter.attempt(guesser).unwrap().succeeded(); // a valid token costs nothing
        drop(limiter.attempt(guesser).unwrap()); // failed
        drop(limiter.attempt(guesser).unwrap()); // failed
        let refused = limiter.attempt(guesser).err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.unwrap() <= Duration::from_millis(300));
        assert!(
            limiter.attempt(other).is_ok(),
            "other addresses are not affected"
        );
        assert!(
            limiter.attempt(None).is_ok(),
            "an unknown address is not limited"
        );

        std::thread::sleep(Duration::from_millis(350));
        assert!(limiter.attempt(guesser).is_ok(), "a new window");
    }

    #[test]
    fn attempts_under_way_count_until_they_succeed() {
        let limiter = SigninLimiter::new(2, Duration::from_secs(60));
        let client = Some("203.0.113.9".parse().unwrap());
        let first = limiter.attempt(client).unwrap();
        let second = limiter.attempt(client).unwrap();
        assert!(limiter.attempt(client).is_err(), "two already under way");
        first.succeeded();
        second.succeeded();
        assert!(limiter.attempt(client).is_ok());
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let trusted: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "10.0.0.5".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        let proxy = ip("127.0.0.1");
        let cases = [
            (proxy, with(&[]), "127.0.0.1"),
            (proxy, with(&["203.0.113.9"]), "203.0.113.9"),
            // The client wrote the left part; the proxies appended the right.
            (proxy, with(&["1.2.3.4, 203.0.113.9"]), "203.0.113.9"),
            (
                proxy,
                with(&["1.2.3.4", "203.0.113.9, 10.0.0.5"]),
                "203.0.113.9",
            ),
            (proxy, with(&["203.0.113.9, garbage"]), "127.0.0.1"),
            (
                ip("::ffff:127.0.0.1"),
                with(&["203.0.113.9"]),
                "203.0.113.9",
            ),
            // Anyone else's header is ignored.
            (ip("198.51.100.1"), with(&["203.0.113.9"]), "198.51.100.1"),
        ];
        for (peer, headers, client) in cases {
            assert_eq!(
                client_address(peer, &headers, &trusted),
                ip(client),
                "{peer} {headers:?}"
            );
        }
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
