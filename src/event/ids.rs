//! The two ids an envelope carries, as newtypes that can only hold a valid value: an event id
//! becomes the `webhook-id` header, an account id a Redis hash tag, so both are short tokens.

use std::fmt;
use std::str::FromStr;

/// An event id: 1..128 of `[A-Za-z0-9_-]`; it becomes the `webhook-id` header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventId(String);

/// An account id: 1..128 of `[A-Za-z0-9_.:-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

fn valid_token(s: &str, extra: &[u8]) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

impl EventId {
    pub fn parse(s: &str) -> Option<Self> {
        valid_token(s, b"_-").then(|| EventId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh random id (`evt_` + 20 alphanumerics) for events published without one.
    pub fn generate() -> Self {
        EventId(format!("evt_{}", crate::random_token(20)))
    }
}

impl AccountId {
    pub fn parse(s: &str) -> Option<Self> {
        valid_token(s, b"_.:-").then(|| AccountId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AccountId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountId::parse(s)
            .ok_or_else(|| format!("invalid account id {s:?}: use 1 to 128 of A-Z a-z 0-9 _ . : -"))
    }
}
