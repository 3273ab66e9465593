//! The value types that keys of several sections parse into, each valid by construction
//! (`#[serde(try_from = …)]`, "parse, don't validate"): a [`Period`] is a duration longer than
//! zero and at most [`MAX_DURATION`], a [`Bounded`] an integer within its bounds, a [`Prefix`] a
//! name part that is safe in queue and key names, a [`ListenAddr`] a socket address. A refused
//! value's message is the `try_from` error; the `config` crate adds the key's path and
//! [`super::ConfigError`] puts the key first.

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The longest duration any key takes: far beyond any sensible setting, and far below what
/// would overflow a clock or a timer when added to now.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// A mebibyte, the least of the byte bounds.
pub const MIB: u64 = 1 << 20;

/// A duration written like `"500ms"`, `"5s"`, `"1m 30s"`, `"2h"`, `"5d"`: humantime's syntax as
/// `humantime-serde` reads it (blanks around it are skipped, as before). Zero and anything over
/// [`MAX_DURATION`] are refused here, at start-up, rather than overflowing later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "humantime_serde::Serde<Duration>")]
pub struct Period(Duration);

impl TryFrom<humantime_serde::Serde<Duration>> for Period {
    type Error = String;

    fn try_from(written: humantime_serde::Serde<Duration>) -> Result<Self, String> {
        let d = written.into_inner();
        if d.is_zero() {
            return Err("must be longer than zero".into());
        }
        if d > MAX_DURATION {
            return Err(format!(
                "{} is longer than the most allowed, 366 days",
                humantime::format_duration(d)
            ));
        }
        Ok(Period(d))
    }
}

impl From<Period> for Duration {
    fn from(p: Period) -> Duration {
        p.0
    }
}

/// An integer from `MIN` to `MAX`, written as a plain number. It converts into the integer type
/// whose range `MAX` is (`u16`, `u32`, `usize`) or into `u64`, so that no caller casts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

/// At least one, of a count held in a `usize` (connections, requests, threads).
pub type Count = Bounded<1, { usize::MAX as u64 }>;

impl<const MIN: u64, const MAX: u64> TryFrom<u64> for Bounded<MIN, MAX> {
    type Error = String;

    fn try_from(n: u64) -> Result<Self, String> {
        match n {
            n if n < MIN => Err(format!("must be at least {MIN}")),
            n if n > MAX => Err(format!("must be at most {MAX}")),
            n => Ok(Bounded(n)),
        }
    }
}

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64> From<Bounded<MIN, MAX>> for u64 {
    fn from(b: Bounded<MIN, MAX>) -> u64 {
        b.0
    }
}

// The casts below cannot truncate: the value is at most the target type's MAX.
impl<const MIN: u64> From<Bounded<MIN, { usize::MAX as u64 }>> for usize {
    fn from(b: Bounded<MIN, { usize::MAX as u64 }>) -> usize {
        b.0 as usize
    }
}

impl<const MIN: u64> From<Bounded<MIN, { u32::MAX as u64 }>> for u32 {
    fn from(b: Bounded<MIN, { u32::MAX as u64 }>) -> u32 {
        b.0 as u32
    }
}

impl<const MIN: u64> From<Bounded<MIN, { u16::MAX as u64 }>> for u16 {
    fn from(b: Bounded<MIN, { u16::MAX as u64 }>) -> u16 {
        b.0 as u16
    }
}

/// The start of every queue or key name (`amqp.prefix`, `redis.prefix`): 1 to 64 characters that
/// need no quoting in a queue name, a Redis key or a metric label.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Prefix(String);

impl TryFrom<String> for Prefix {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        match ok {
            true => Ok(Prefix(text)),
            false => Err(format!("{text:?} must be 1 to 64 of A-Z a-z 0-9 - _ .")),
        }
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> String {
        p.0
    }
}

/// The address a listener binds (`api.listen`, `ops.listen`); port 0 means any free port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr(SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
            .map(ListenAddr)
            .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:9090"))
    }
}

impl From<ListenAddr> for SocketAddr {
    fn from(a: ListenAddr) -> SocketAddr {
        a.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(text: &str) -> Result<Duration, String> {
        let written = humantime_serde::Serde::from(
            humantime::parse_duration(text).map_err(|e| e.to_string())?,
        );
        Period::try_from(written).map(Duration::from)
    }

    #[test]
    fn a_bounded_number_says_which_bound_it_missed() {
        assert_eq!(
            Bounded::<1, 10_000>::try_from(0).unwrap_err(),
            "must be at least 1"
        );
        assert_eq!(
            Bounded::<1, 10_000>::try_from(10_001).unwrap_err(),
            "must be at most 10000"
        );
        let depth = Bounded::<1, 10_000>::try_from(10_000).unwrap();
        assert_eq!(depth.get(), 10_000);
        let prefetch: u16 = Bounded::<1, { u16::MAX as u64 }>::try_from(65_535)
            .unwrap()
            .into();
        assert_eq!(prefetch, u16::MAX);
    }

    #[test]
    fn a_period_is_longer_than_zero_and_at_most_366_days() {
        assert_eq!(period("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(period("366d"), Ok(MAX_DURATION));
        assert_eq!(period("0s").unwrap_err(), "must be longer than zero");
        assert!(period("367d").unwrap_err().contains("366 days"));
    }

    #[test]
    fn a_prefix_and_an_address_refuse_what_they_cannot_hold() {
        assert!(Prefix::try_from("hrt-a.b_c".to_owned()).is_ok());
        for bad in ["", "a b", "a:b", &"x".repeat(65)] {
            assert!(Prefix::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert!(ListenAddr::try_from("[::1]:0".to_owned()).is_ok());
        let err = ListenAddr::try_from("nowhere".to_owned()).unwrap_err();
        assert!(err.contains("127.0.0.1:9090"), "{err}");
    }
}
