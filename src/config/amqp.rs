//! `[amqp]`: the RabbitMQ nodes and how to reach them (`[amqp.tls]` in [`super::tls`]), the
//! names' prefix, and the bounds of publishing and consuming.
//! Defaults and their documentation: `[amqp]` in `config/default.toml`.

use super::tls::{TlsConfig, TlsFiles, TlsKeys};
use super::value::{Bounded, Period, Prefix};
use super::ConfigError;
use lapin::uri::{AMQPScheme, AMQPUri};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// The most work-queue partitions: far past what a 9-node cluster uses (docs/partitions.md), and
/// small enough that probing for partitions left over from a larger count stays cheap.
pub const MAX_PARTITIONS: u16 = 64;

#[derive(Clone, Debug)]
pub struct AmqpSettings {
    pub url: String,
    /// `amqp.urls` as configured (empty: `url` alone).
    pub urls: Vec<String>,
    /// The nodes to connect to: `urls` when set, else `url`.
    pub nodes: Vec<Node>,
    /// `[amqp.tls]` as configured, so that child processes (bench workers) get the same.
    pub tls_files: TlsFiles,
    /// Built when a node is `amqps`: the system's roots or `ca_file`, and a client certificate.
    pub tls: Option<TlsConfig>,
    pub prefix: String,
    pub prefetch: u16,
    pub publish_timeout: Duration,
    pub delivery_limit: u32,
    pub reconnect_timeout: Duration,
    /// The AMQP heartbeat: two of them without a frame from the broker end the connection.
    pub heartbeat: Duration,
    /// How long a worker's follow-up publish may wait for its confirm while the broker blocks
    /// publishers (memory or disk alarm), before it is abandoned.
    pub blocked_timeout: Duration,
    /// `amqp.partitions`: work queues per kind (1 = the unnumbered names of DESIGN §4).
    pub partitions: u16,
}

/// `[amqp]` as the layers hold it, every value already in its range. `url` stays text: it is
/// used (and so parsed) only when `urls` is empty, as it always was.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAmqp {
    url: String,
    urls: Vec<AmqpUrl>,
    tls: TlsFiles,
    prefix: Prefix,
    prefetch: Bounded<1, { u16::MAX as u64 }>,
    publish_timeout: Period,
    delivery_limit: Bounded<1, { u32::MAX as u64 }>,
    reconnect_timeout: Period,
    heartbeat: Heartbeat,
    blocked_timeout: Period,
    /// 1 to [`MAX_PARTITIONS`].
    partitions: Bounded<1, { MAX_PARTITIONS as u64 }>,
}

const AMQP_TLS: TlsKeys = TlsKeys {
    ca_file: "amqp.tls.ca_file",
    cert_file: "amqp.tls.cert_file",
    key_file: "amqp.tls.key_file",
};

impl RawAmqp {
    pub(super) fn settle(self) -> Result<AmqpSettings, ConfigError> {
        let (nodes, tls) = self.nodes_and_tls()?;
        Ok(AmqpSettings {
            urls: self.urls.into_iter().map(|u| u.text).collect(),
            url: self.url,
            nodes,
            tls_files: self.tls,
            tls,
            prefix: self.prefix.into(),
            prefetch: self.prefetch.into(),
            publish_timeout: self.publish_timeout.into(),
            delivery_limit: self.delivery_limit.into(),
            reconnect_timeout: self.reconnect_timeout.into(),
            heartbeat: self.heartbeat.0,
            blocked_timeout: self.blocked_timeout.into(),
            // At most MAX_PARTITIONS (64): it fits a u16.
            partitions: self.partitions.get() as u16,
        })
    }

    /// `amqp.urls` (or `amqp.url`) as nodes, all `amqps` or all `amqp`, and `[amqp.tls]` read
    /// and checked now when they are `amqps`.
    fn nodes_and_tls(&self) -> Result<(Vec<Node>, Option<TlsConfig>), ConfigError> {
        let (key, nodes) = match self.urls.is_empty() {
            true => {
                let url = AmqpUrl::try_from(self.url.clone())
                    .map_err(|e| ConfigError::invalid("amqp.url", e))?;
                ("amqp.url", vec![url.node])
            }
            false => (
                "amqp.urls",
                self.urls.iter().map(|u| u.node.clone()).collect(),
            ),
        };
        let tls_nodes = nodes.iter().filter(|n| n.is_tls()).count();
        if tls_nodes == 0 {
            if self.tls.any() {
                // Someone who configured certificates meant TLS: never fall back to plain text.
                return Err(ConfigError::invalid(
                    key,
                    "[amqp.tls] is configured but the URL is amqp:// (plain text); use amqps://",
                ));
            }
            return Ok((nodes, None));
        }
        if tls_nodes != nodes.len() {
            return Err(ConfigError::invalid(
                key,
                "mixes amqps:// and plain amqp:// nodes; use amqps:// for all",
            ));
        }
        let tls = self.tls.load(&AMQP_TLS)?;
        Ok((nodes, Some(tls)))
    }
}

/// One broker node: its parsed URL, and a label without the credentials for messages and logs.
#[derive(Clone)]
pub struct Node {
    uri: AMQPUri,
    label: String,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({})", self.label)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl Node {
    pub fn parse(url: &str) -> Result<Node, String> {
        let uri: AMQPUri = url.parse()?;
        let scheme = match uri.scheme {
            AMQPScheme::AMQP => "amqp",
            AMQPScheme::AMQPS => "amqps",
        };
        let label = format!("{scheme}://{}:{}", uri.authority.host, uri.authority.port);
        Ok(Node { uri, label })
    }

    pub fn is_tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The parsed URL, credentials included: for connecting only, never for messages.
    pub(crate) fn uri(&self) -> &AMQPUri {
        &self.uri
    }
}

/// An `amqp://` or `amqps://` URL that lapin can connect to, with its text as written.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct AmqpUrl {
    text: String,
    node: Node,
}

impl TryFrom<String> for AmqpUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let url = url::Url::parse(&text).map_err(|e| format!("not a URL: {e}"))?;
        if !["amqp", "amqps"].contains(&url.scheme()) {
            return Err("scheme must be one of amqp, amqps".into());
        }
        let node = Node::parse(&text)?;
        Ok(AmqpUrl { text, node })
    }
}

/// `amqp.heartbeat`: AMQP negotiates it in whole seconds (a u16).
#[derive(Deserialize)]
#[serde(try_from = "Period")]
struct Heartbeat(Duration);

impl TryFrom<Period> for Heartbeat {
    type Error = String;

    fn try_from(p: Period) -> Result<Self, String> {
        let d = Duration::from(p);
        if d.subsec_nanos() != 0 || d > Duration::from_secs(u64::from(u16::MAX)) {
            return Err(format!(
                "{} must be whole seconds, at most 65535",
                humantime::format_duration(d)
            ));
        }
        Ok(Heartbeat(d))
    }
}
