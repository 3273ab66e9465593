//! The one way hookrelay reaches RabbitMQ: worker sessions, the publisher library, the CLI, the
//! API and the bench all connect through a [`Connector`].
//!
//! - **Nodes.** `amqp.urls` (or `amqp.url` alone) are tried in order, each attempt bounded by
//!   [`ATTEMPT_TIMEOUT`], starting with the node after the last one that failed or was lost, so
//!   that after a node dies everyone moves on instead of waiting on it first every time. lapin's
//!   own recovery knows one URI, so it is not used.
//! - **TLS.** An `amqps://` URL is connected with rustls, always: the stream is built here, and on
//!   the `amqps` branch there is no way to a plain socket (lapin's own path falls back to plain
//!   text when no TLS feature is compiled in). The trust roots are `amqp.tls.ca_file` alone when it
//!   is set, the system's otherwise; `cert_file`/`key_file` add a client certificate.
//! - **Version.** lapin does not keep the broker's server properties, so before each connection a
//!   short probe on its own socket reads the broker's `connection.start` (the first frame a broker
//!   sends, before any authentication) and [`super::version`] refuses brokers older than 3.10.
//!   The probe costs one extra TCP (and TLS) handshake, and the broker logs it as "client
//!   unexpectedly closed TCP connection"; so a node's version is kept until a connection to it
//!   fails or is lost (a restarted node may come back as another version).
//! - **Liveness.** Every connection asks for `amqp.heartbeat`, and its socket gets keepalive and
//!   a user timeout ([`super::socket`]), so a partition ends it within about two heartbeats
//!   instead of the kernel's minutes. [`Connected::severer`] cuts it when a close cannot be sent.
//!
//! One file, though long: opening a connection, probing the node's version and keeping a
//! connection alive are one job, "a usable connection to some node of amqp.urls".

pub use super::socket::Severer;
use super::version::{self, VersionError};
/// What `amqp.url(s)` and `[amqp.tls]` parse into; re-exported, as the broker connects with them.
pub use crate::config::amqp::Node;
pub use crate::config::tls::{TlsConfig, TlsError};
use crate::config::AmqpSettings;
use async_rs::traits::Reactor;
use async_rs::{Tokio, TokioRuntime};
use backon::{ExponentialBuilder, Retryable};
use futures_util::{AsyncReadExt, AsyncWriteExt};
use lapin::protocol::{connection::AMQPMethod, AMQPClass};
use lapin::tcp::AsyncTcpStream;
use lapin::types::FieldTable;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One node's TCP connect, TLS handshake, version probe and AMQP handshake together. A node that
/// accepts TCP but never answers (booting, overloaded, a black-holed address) must not hold the
/// others up for long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The heartbeat when none is configured (`amqp.heartbeat`'s default).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// `connection.start` is a few hundred bytes; anything much larger is not a broker talking.
const MAX_START_FRAME: usize = 64 * 1024;

type Stream = AsyncTcpStream<<Tokio as Reactor>::TcpStream>;

/// Which node of the list a connection went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeId(usize);

/// A connection, and the node it is on (to report it lost with [`Connector::lost`]).
#[derive(Debug)]
pub struct Connected {
    pub connection: Connection,
    pub node: NodeId,
    /// The broker's version, from its server properties.
    pub version: String,
    /// Shuts the connection down at its socket (when a close cannot be sent).
    pub severer: Severer,
}

/// Why one node could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("cannot connect: {0}")]
    Tcp(io::Error),
    #[error("TLS with {host} failed: {source}")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("not an AMQP URL: {0}")]
    Url(String),
    #[error("an amqps:// node needs a TLS configuration")]
    NoTlsConfig,
    #[error("TLS configuration: {0}")]
    TlsSetup(TlsError),
    #[error("no AMQP greeting from the broker: {0}")]
    Greeting(io::Error),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("AMQP handshake: {0}")]
    Amqp(lapin::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl AttemptError {
    /// Trying again will not help: a certificate that does not verify, a broker too old.
    fn is_permanent(&self) -> bool {
        match self {
            // rustls reports certificate and protocol failures as InvalidData.
            AttemptError::Tls { source, .. } => source.kind() == io::ErrorKind::InvalidData,
            AttemptError::Version(_)
            | AttemptError::Url(_)
            | AttemptError::NoTlsConfig
            | AttemptError::TlsSetup(_) => true,
            _ => false,
        }
    }
}

/// No node could be used; says why for each.
#[derive(Debug, thiserror::Error)]
pub struct ConnectError {
    pub failures: Vec<(String, AttemptError)>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no RabbitMQ node could be used: ")?;
        for (i, (node, e)) in self.failures.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{node}: {e}")?;
        }
        Ok(())
    }
}

impl ConnectError {
    /// Every node failed in a way that retrying cannot fix (see [`AttemptError`]): start-up
    /// should stop with the reason rather than retry.
    pub fn is_permanent(&self) -> bool {
        !self.failures.is_empty() && self.failures.iter().all(|(_, e)| e.is_permanent())
    }
}

/// Connects to the first usable node of a list; cheap to clone, clones share where to start.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<Node>,
    tls: Option<TlsConfig>,
    /// The node to try first: the one after the last that failed or was lost.
    first: AtomicUsize,
    /// Each node's version, once probed and accepted; forgotten when the node fails or is lost.
    versions: Mutex<Vec<Option<String>>>,
    /// Asked of the broker at every connection, and the sockets' keepalive.
    heartbeat: Duration,
}

impl Connector {
    /// From validated settings: at least one node, and a TLS configuration if any is `amqps`.
    pub fn new(amqp: &AmqpSettings) -> Connector {
        Connector::with_nodes(amqp.nodes.clone(), amqp.tls.clone()).with_heartbeat(amqp.heartbeat)
    }

    /// The heartbeat to ask for (whole seconds; [`DEFAULT_HEARTBEAT`] otherwise).
    pub fn with_heartbeat(self, heartbeat: Duration) -> Connector {
        let inner = Inner {
            nodes: self.inner.nodes.clone(),
            tls: self.inner.tls.clone(),
            first: AtomicUsize::new(self.inner.first.load(Ordering::Acquire)),
            versions: Mutex::new(vec![None; self.inner.nodes.len()]),
            heartbeat,
        };
        Connector {
            inner: Arc::new(inner),
        }
    }

    pub fn with_nodes(nodes: Vec<Node>, tls: Option<TlsConfig>) -> Connector {
        assert!(!nodes.is_empty(), "a connector needs at least one node");
        Connector {
            inner: Arc::new(Inner {
                versions: Mutex::new(vec![None; nodes.len()]),
                nodes,
                tls,
                first: AtomicUsize::new(0),
                heartbeat: DEFAULT_HEARTBEAT,
            }),
        }
    }

    /// One URL; an `amqps` one trusts the system's roots.
    pub fn for_url(url: &str) -> Result<Connector, ConnectError> {
        let fail = |e: AttemptError| ConnectError {
            failures: vec![(url.to_owned(), e)],
        };
        let node = Node::parse(url).map_err(|e| fail(AttemptError::Url(e)))?;
        let tls = match node.is_tls() {
            true => Some(TlsConfig::new(None, None).map_err(|e| fail(AttemptError::TlsSetup(e)))?),
            false => None,
        };
        Ok(Connector::with_nodes(vec![node], tls))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.inner.nodes
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.inner.nodes[id.0]
    }

    /// Tries each node once, in order from the one after the last failure. `name` is shown in
    /// the management UI, so that on-call can tell workers, publishers and commands apart.
    pub async fn connect(&self, name: &str) -> Result<Connected, ConnectError> {
        let n = self.inner.nodes.len();
        let start = self.inner.first.load(Ordering::Acquire) % n;
        let mut failures = Vec::new();
        for i in (start..n).chain(0..start) {
            let node = &self.inner.nodes[i];
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(i, name)).await;
            match attempt.unwrap_or(Err(AttemptError::Timeout(ATTEMPT_TIMEOUT))) {
                Ok((connection, version, severer)) => {
                    self.inner.first.store(i, Ordering::Release);
                    tracing::debug!(node = %node, %version, name, "connected to RabbitMQ");
                    return Ok(Connected {
                        connection,
                        node: NodeId(i),
                        version,
                        severer,
                    });
                }
                Err(e) => {
                    tracing::debug!(node = %node, error = %e, "RabbitMQ node not usable");
                    self.forget_version(i);
                    failures.push((node.to_string(), e));
                    self.inner.first.store((i + 1) % n, Ordering::Release);
                }
            }
        }
        Err(ConnectError { failures })
    }

    /// As [`Connector::connect`], going round the nodes again with exponential backoff for up
    /// to `budget`; gives up at once on a permanent failure.
    pub async fn connect_within(
        &self,
        name: &str,
        budget: Duration,
    ) -> Result<Connected, ConnectError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(budget));
        (|| self.connect(name))
            .retry(backoff)
            .when(|e| !e.is_permanent())
            .await
    }

    /// The connection on `node` was lost: the next connect starts with the node after it
    /// (unless another connect has moved on already).
    pub fn lost(&self, node: NodeId) {
        self.forget_version(node.0);
        let n = self.inner.nodes.len();
        let _ = self.inner.first.compare_exchange(
            node.0,
            (node.0 + 1) % n,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    fn forget_version(&self, i: usize) {
        let mut versions = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        versions[i] = None;
    }

    async fn attempt(
        &self,
        i: usize,
        name: &str,
    ) -> Result<(Connection, String, Severer), AttemptError> {
        let node = &self.inner.nodes[i];
        let runtime = lapin::runtime::default_runtime().map_err(AttemptError::Amqp)?;
        let tls = self.inner.tls.clone();
        // A std Mutex: held for a clone, never across an await.
        let known = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())[i]
            .clone();
        let version = match known {
            Some(version) => version,
            None => {
                let (mut probe, _) =
                    open_stream(&runtime, node.uri(), tls.as_ref(), self.inner.heartbeat).await?;
                let properties = server_properties(&mut probe)
                    .await
                    .map_err(AttemptError::Greeting)?;
                drop(probe);
                version::check(&properties)?
            }
        };
        let heartbeat = self.inner.heartbeat;
        // lapin may call `connect` more than once; the last socket it opened is the connection's.
        let opened: Arc<Mutex<Option<Severer>>> = Arc::default();
        let connect = {
            let opened = opened.clone();
            async move |uri: AMQPUri, runtime: TokioRuntime| {
                let (stream, severer) = open_stream(&runtime, &uri, tls.as_ref(), heartbeat)
                    .await
                    .map_err(|e| lapin::Error::from(io::Error::other(e)))?;
                *opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(severer);
                Ok(stream)
            }
        };
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let mut uri = node.uri().clone();
        // Whole seconds, at most u16::MAX: the configuration checks both.
        uri.query.heartbeat = Some(heartbeat.as_secs().clamp(1, u64::from(u16::MAX)) as u16);
        let connection = Connection::connector(uri, runtime, connect, properties)
            .await
            .map_err(AttemptError::Amqp)?;
        let severer = opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("a connected connection opened its socket through `connect`");
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())[i] = Some(version.clone());
        Ok((connection, version, severer))
    }
}

/// TCP to the node (keepalive set, see [`super::socket`]), then TLS for `amqps`. There is
/// deliberately no branch from `amqps` to a plain stream: without a TLS configuration, an
/// `amqps` node is an error.
async fn open_stream(
    runtime: &TokioRuntime,
    uri: &AMQPUri,
    tls: Option<&TlsConfig>,
    heartbeat: Duration,
) -> Result<(Stream, Severer), AttemptError> {
    let host = uri.authority.host.as_str();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, uri.authority.port))
        .await
        .map_err(AttemptError::Tcp)?
        .collect();
    let stream = Stream::connect(runtime, addrs)
        .await
        .map_err(AttemptError::Tcp)?;
    let severer = match &stream {
        Stream::Plain(tcp) => super::socket::tune(tcp.get_ref(), heartbeat),
        _ => unreachable!("Stream::connect makes a plain stream"),
    }
    .map_err(AttemptError::Tcp)?;
    let stream = match uri.scheme {
        AMQPScheme::AMQP => stream,
        AMQPScheme::AMQPS => {
            let tls = tls.ok_or(AttemptError::NoTlsConfig)?;
            stream
                .into_rustls(tls.connector(), host)
                .await
                .map_err(|source| AttemptError::Tls {
                    host: host.to_owned(),
                    source,
                })?
        }
    };
    Ok((stream, severer))
}

/// Sends the AMQP 0-9-1 protocol header and reads the broker's `connection.start`.
async fn server_properties(stream: &mut Stream) -> io::Result<FieldTable> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
    stream.flush().await?;
    // Frame header: type (1 = method), channel (2 bytes), payload size (4 bytes).
    let mut header = [0u8; 7];
    stream.read_exact(&mut header).await?;
    if header[0] != 1 {
        // A broker that speaks another protocol version answers with its own header ("AMQP…").
        return Err(invalid("not an AMQP 0-9-1 broker"));
    }
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if size > MAX_START_FRAME {
        return Err(invalid("the first frame is implausibly large"));
    }
    // The payload, then the frame-end octet 0xCE.
    let mut payload = vec![0u8; size + 1];
    stream.read_exact(&mut payload).await?;
    if payload[size] != 0xCE {
        return Err(invalid("malformed frame"));
    }
    match lapin::protocol::parse_class(&payload[..size]) {
        Ok((_, AMQPClass::Connection(AMQPMethod::Start(start)))) => Ok(start.server_properties),
        _ => Err(invalid("the first frame is not connection.start")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(urls: &[&str]) -> Vec<Node> {
        urls.iter().map(|u| Node::parse(u).unwrap()).collect()
    }

    #[test]
    fn a_node_label_never_shows_the_credentials() {
        let node = Node::parse("amqps://user:s3cret@rabbit.example:5671/%2f").unwrap();
        assert_eq!(node.to_string(), "amqps://rabbit.example:5671");
        assert!(!format!("{node:?}").contains("s3cret"));
        assert!(node.is_tls());
        assert_eq!(
            Node::parse("amqp://localhost").unwrap().to_string(),
            "amqp://localhost:5672"
        );
    }

    #[test]
    fn a_lost_node_moves_the_next_connect_to_the_following_one() {
        let c = Connector::with_nodes(nodes(&["amqp://a", "amqp://b", "amqp://c"]), None);
        c.lost(NodeId(0));
        assert_eq!(c.inner.first.load(Ordering::Acquire), 1);
        // A second report of the same loss (the other connection of a session) changes nothing.
        c.lost(NodeId(0));
        assert_eq!(c.inner.first.load(Ordering::Acquire), 1);
        c.lost(NodeId(1));
        c.lost(NodeId(2));
        assert_eq!(c.inner.first.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn an_amqps_node_without_a_tls_configuration_is_never_connected_in_plain_text() {
        // A listener that would accept a plain connection: the connector must not use it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let c = Connector::with_nodes(nodes(&[&format!("amqps://127.0.0.1:{port}")]), None);
        let err = c.connect("test").await.unwrap_err();
        assert!(
            matches!(err.failures[..], [(_, AttemptError::NoTlsConfig)]),
            "{err}"
        );
        assert!(err.is_permanent());
    }

    #[tokio::test]
    async fn an_amqps_node_that_answers_in_plain_text_is_refused_by_tls() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A "broker" that answers whatever it gets with a plain connection.start-like frame.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0a\xce")
                    .await;
            }
        });
        let tls = TlsConfig::new(None, None).unwrap();
        let c = Connector::with_nodes(nodes(&[&format!("amqps://127.0.0.1:{port}")]), Some(tls));
        let err = c.connect("test").await.unwrap_err();
        assert!(
            matches!(&err.failures[..], [(_, AttemptError::Tls { host, .. })] if host == "127.0.0.1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn every_node_is_tried_and_each_failure_is_reported() {
        // Two ports nobody listens on (bound, then released).
        let mut urls = Vec::new();
        for _ in 0..2 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            urls.push(format!(
                "amqp://127.0.0.1:{}",
                l.local_addr().unwrap().port()
            ));
        }
        let c = Connector::with_nodes(nodes(&[&urls[0], &urls[1]]), None);
        let err = c.connect("test").await.unwrap_err();
        assert_eq!(err.failures.len(), 2);
        assert!(!err.is_permanent());
        let text = err.to_string();
        assert!(text.contains(&urls[0]) && text.contains(&urls[1]), "{text}");
    }
}
