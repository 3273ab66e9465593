//! Webhook subscriptions (DESIGN §5): the [`Webhook`] model with newtypes that only hold valid
//! values, the Redis [`store`], the in-worker [`cache`], and the export/import line format
//! ([`backup`]).

pub mod attempts;
pub mod backup;
pub mod cache;
pub mod connection;
pub mod health;
pub mod marker;
mod record;
mod scripts;
pub mod secret;
pub mod store;

use crate::event::{AccountId, EventType};
use chrono::{DateTime, Utc};
pub use secret::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// At most this many webhooks per account, enabled or not (the InPlayer rule).
pub const MAX_WEBHOOKS_PER_ACCOUNT: usize = 10;

/// A webhook id: `wh_` and 1..64 alphanumerics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookId(String);

impl WebhookId {
    pub fn generate() -> Self {
        WebhookId(format!("wh_{}", crate::random_token(24)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WebhookId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<WebhookId> for String {
    fn from(id: WebhookId) -> String {
        id.0
    }
}

impl FromStr for WebhookId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ok = s.strip_prefix("wh_").is_some_and(|rest| {
            (1..=64).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if ok {
            Ok(WebhookId(s.to_owned()))
        } else {
            Err(format!("{s:?} is not a webhook id (wh_...)"))
        }
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which event types a webhook receives: all (`["*"]`) or a non-empty set, as a bit set of the
/// 27 labels so that matching on the hot path is one AND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFilter {
    All,
    Only(u32),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("events must not be empty: list event types, or \"*\" for all")]
    Empty,
    #[error("\"*\" must stand alone in events")]
    StarNotAlone,
    #[error("unknown event type {0:?} (see `hookrelay events`)")]
    Unknown(String),
}

impl EventFilter {
    pub fn parse<S: AsRef<str>>(labels: &[S]) -> Result<Self, FilterError> {
        match labels {
            [] => Err(FilterError::Empty),
            [only] if only.as_ref() == "*" => Ok(EventFilter::All),
            _ => {
                let mut bits = 0u32;
                for label in labels {
                    let label = label.as_ref().trim();
                    if label == "*" {
                        return Err(FilterError::StarNotAlone);
                    }
                    let t: EventType = label
                        .parse()
                        .map_err(|_| FilterError::Unknown(label.to_owned()))?;
                    bits |= 1 << t.index();
                }
                Ok(EventFilter::Only(bits))
            }
        }
    }

    pub fn matches(self, t: EventType) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Only(bits) => bits & (1 << t.index()) != 0,
        }
    }

    pub fn labels(self) -> Vec<String> {
        match self {
            EventFilter::All => vec!["*".to_owned()],
            EventFilter::Only(_) => EventType::ALL
                .iter()
                .filter(|t| self.matches(**t))
                .map(|t| t.label().to_owned())
                .collect(),
        }
    }
}

impl Serialize for EventFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.labels().serialize(s)
    }
}

impl<'de> Deserialize<'de> for EventFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let labels = Vec::<String>::deserialize(d)?;
        EventFilter::parse(&labels).map_err(serde::de::Error::custom)
    }
}

/// The body format a webhook receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Standard,
    Inplayer,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standard" => Ok(Format::Standard),
            "inplayer" => Ok(Format::Inplayer),
            other => Err(format!(
                "format {other:?} is neither \"standard\" nor \"inplayer\""
            )),
        }
    }
}

/// The most deliveries per second a webhook may ask for.
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// A webhook's rate limit: deliveries per second to its URL across all workers together,
/// 1..=[`MAX_RATE_LIMIT`] (DESIGN §5). No limit is `None` where it is used, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub struct RateLimit(u32);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate_limit must be a whole number of deliveries per second from 1 to {MAX_RATE_LIMIT}, or null for no limit")]
pub struct RateLimitError;

impl RateLimit {
    pub fn new(per_second: u64) -> Result<Self, RateLimitError> {
        match u32::try_from(per_second) {
            Ok(n @ 1..=MAX_RATE_LIMIT) => Ok(RateLimit(n)),
            _ => Err(RateLimitError),
        }
    }

    pub fn per_second(self) -> u32 {
        self.0
    }
}

impl TryFrom<u64> for RateLimit {
    type Error = RateLimitError;

    fn try_from(n: u64) -> Result<Self, RateLimitError> {
        RateLimit::new(n)
    }
}

impl From<RateLimit> for u32 {
    fn from(r: RateLimit) -> u32 {
        r.0
    }
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    fn from_str(s: &str) -> Result<Self, RateLimitError> {
        RateLimit::new(s.trim().parse().map_err(|_| RateLimitError)?)
    }
}

/// Longest webhook URL, in characters of its normalised form (what is stored and sent).
pub const MAX_URL_LEN: usize = 2048;

/// A target URL: absolute http(s) with a host, no credentials, at most [`MAX_URL_LEN`]
/// characters, normalised so that one endpoint has one spelling (the duplicate-URL rule compares
/// these): no `#fragment` (never sent anyway), no empty `?`, no trailing dot on the host, and the
/// `url` crate's own normalisation (lower-case host, default port dropped, percent-encoding).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(url::Url);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url is not a valid absolute URL: {0}")]
    Unparseable(String),
    #[error("url must use https (http only when delivery.allow_http is set)")]
    Scheme,
    #[error("url must not carry a user name or password")]
    Credentials,
    #[error(
        "url is longer than {MAX_URL_LEN} characters once normalised (e.g. `{{` is sent as %7B)"
    )]
    TooLong,
}

impl WebhookUrl {
    pub fn parse(text: &str, allow_http: bool) -> Result<Self, UrlError> {
        // Bounds the parser's work; normalising can grow a URL at most threefold
        // (percent-encoding) and shrink it by dropping a fragment, so the real limit is below.
        if text.len() > 4 * MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let mut url =
            url::Url::parse(text.trim()).map_err(|e| UrlError::Unparseable(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            _ => return Err(UrlError::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        normalise(&mut url)?;
        if url.as_str().len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        Ok(WebhookUrl(url))
    }

    pub fn as_url(&self) -> &url::Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Drops what does not change the endpoint: the fragment, an empty query, trailing dots of the
/// host name ("example.com." is "example.com" to every resolver).
fn normalise(url: &mut url::Url) -> Result<(), UrlError> {
    url.set_fragment(None);
    if url.query() == Some("") {
        url.set_query(None);
    }
    let host = match url.host() {
        Some(url::Host::Domain(domain)) => Some(domain.trim_end_matches('.').to_owned()),
        Some(_) => None,
        None => return Err(UrlError::Unparseable("no host".into())),
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err(UrlError::Unparseable("no host".into()));
        }
        url.set_host(Some(&host))
            .map_err(|e| UrlError::Unparseable(e.to_string()))?;
    }
    Ok(())
}

impl TryFrom<String> for WebhookUrl {
    type Error = UrlError;

    /// Stored URLs were validated when written; the scheme rule was applied then.
    fn try_from(s: String) -> Result<Self, UrlError> {
        WebhookUrl::parse(&s, true)
    }
}

impl From<WebhookUrl> for String {
    fn from(u: WebhookUrl) -> String {
        u.0.into()
    }
}

/// A secret that was replaced, and until when it keeps signing.
#[derive(Clone, Debug)]
pub struct PreviousSecret {
    pub secret: Secret,
    pub until: DateTime<Utc>,
}

/// A merchant's webhook.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub id: WebhookId,
    pub account_id: AccountId,
    pub url: WebhookUrl,
    pub events: EventFilter,
    pub secret: Secret,
    pub previous_secret: Option<PreviousSecret>,
    pub format: Format,
    pub enabled: bool,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub disabled_reason: Option<String>,
    /// Deliveries per second across all workers; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
}

impl Webhook {
    /// The secrets that sign a delivery now: the current one, then the previous one while its
    /// rotation grace lasts.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&Secret> {
        let mut secrets = vec![&self.secret];
        if let Some(prev) = &self.previous_secret {
            if prev.until > now {
                secrets.push(&prev.secret);
            }
        }
        secrets
    }

    /// The public view: every field but the secret, unless `with_secret`.
    pub fn to_json(&self, with_secret: bool) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "account_id": self.account_id.as_str(),
            "url": self.url,
            "events": self.events,
            "format": self.format,
            "enabled": self.enabled,
            "description": self.description,
            "created_at": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "disabled_reason": self.disabled_reason,
            "rate_limit": self.rate_limit,
        });
        if with_secret {
            v["secret"] = self.secret.expose().into();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_takes_known_labels_or_a_lone_star() {
        assert_eq!(EventFilter::parse(&["*"]), Ok(EventFilter::All));
        let f = EventFilter::parse(&["payment.card.success", "customer.registered"]).unwrap();
        assert!(f.matches(EventType::PaymentCardSuccess));
        assert!(!f.matches(EventType::PaymentCardFailed));
        assert_eq!(
            f.labels(),
            vec!["payment.card.success", "customer.registered"]
        );
        assert_eq!(EventFilter::parse::<&str>(&[]), Err(FilterError::Empty));
        assert_eq!(
            EventFilter::parse(&["*", "payment.card.success"]),
            Err(FilterError::StarNotAlone)
        );
        assert!(matches!(
            EventFilter::parse(&["payment.cash"]),
            Err(FilterError::Unknown(_))
        ));
    }

    #[test]
    fn a_rate_limit_is_one_to_ten_thousand_per_second() {
        assert_eq!(RateLimit::new(1).unwrap().per_second(), 1);
        assert_eq!("10000".parse::<RateLimit>().unwrap().per_second(), 10_000);
        for bad in ["0", "10001", "-1", "1.5", "", "fast", "4294967297"] {
            assert_eq!(bad.parse::<RateLimit>(), Err(RateLimitError), "{bad:?}");
        }
        assert!(serde_json::from_str::<RateLimit>("0").is_err());
        assert_eq!(
            serde_json::to_string(&RateLimit::new(50).unwrap()).unwrap(),
            "50"
        );
    }

    #[test]
    fn urls_must_be_https_unless_http_is_allowed() {
        assert!(WebhookUrl::parse("https://example.com/hook", false).is_ok());
        assert_eq!(
            WebhookUrl::parse("http://example.com/hook", false),
            Err(UrlError::Scheme)
        );
        assert!(WebhookUrl::parse("http://example.com/hook", true).is_ok());
        assert_eq!(
            WebhookUrl::parse("ftp://example.com", true),
            Err(UrlError::Scheme)
        );
        assert!(WebhookUrl::parse("not a url", true).is_err());
        assert_eq!(
            WebhookUrl::parse("https://u:p@example.com", true),
            Err(UrlError::Credentials)
        );
    }

    #[test]
    fn one_endpoint_has_one_spelling() {
        let canonical = "https://example.com/hook?a=1";
        for spelling in [
            "https://example.com/hook?a=1#frag",
            "https://EXAMPLE.com./hook?a=1",
            "https://example.com:443/hook?a=1#",
            " https://example.com../hook?a=1 ",
        ] {
            assert_eq!(
                WebhookUrl::parse(spelling, false).unwrap().as_str(),
                canonical,
                "{spelling}"
            );
        }
        for (spelling, normal) in [
            ("https://example.com/hook?", "https://example.com/hook"),
            ("https://example.com/hook?#x", "https://example.com/hook"),
            ("https://example.com.", "https://example.com/"),
            ("https://93.184.216.34./h", "https://93.184.216.34/h"),
        ] {
            assert_eq!(WebhookUrl::parse(spelling, false).unwrap().as_str(), normal);
        }
        assert!(WebhookUrl::parse("https://./h", false).is_err());
    }

    #[test]
    fn the_length_limit_holds_for_the_normalised_url() {
        let braces = format!("https://example.com/{}", "{".repeat(2000));
        assert!(braces.len() <= MAX_URL_LEN);
        assert_eq!(WebhookUrl::parse(&braces, false), Err(UrlError::TooLong));
        let long_fragment = format!("https://example.com/h#{}", "x".repeat(3000));
        assert_eq!(
            WebhookUrl::parse(&long_fragment, false).unwrap().as_str(),
            "https://example.com/h"
        );
        let longest = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(
            WebhookUrl::parse(&longest, false).unwrap().as_str(),
            longest
        );
        let over = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 19));
        assert_eq!(WebhookUrl::parse(&over, false), Err(UrlError::TooLong));
        let stored = WebhookUrl::parse(&longest, false).unwrap();
        assert_eq!(
            WebhookUrl::try_from(String::from(stored.clone())),
            Ok(stored)
        );
    }
}
