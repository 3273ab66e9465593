//! RabbitMQ: the [`topology`] of DESIGN §4, a confirmed [`publisher`], and the [`connect`]or
//! every part of hookrelay reaches the broker through (cluster nodes, TLS, version guard).

pub mod acks;
pub mod connect;
pub mod headers;
pub mod publisher;
pub mod socket;
pub mod tls;
pub mod topology;
pub mod version;

pub use connect::{ConnectError, Connected, Connector};

/// Opens a connection to one URL named `name` (shown in the management UI), through a
/// [`Connector`] of that one node; an `amqps` URL trusts the system's roots.
pub async fn connect(url: &str, name: &str) -> Result<lapin::Connection, ConnectError> {
    Ok(Connector::for_url(url)?.connect(name).await?.connection)
}
