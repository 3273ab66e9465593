//! RabbitMQ: the [`topology`] of DESIGN §4, a confirmed [`publisher`], and the [`connect`]or
//! every part of hookrelay reaches the broker through (cluster nodes, TLS, version guard).

pub mod acks;
pub mod connect;
pub mod headers;
pub mod partitions;
pub mod properties;
pub mod publisher;
pub mod socket;
pub mod topology;
pub mod version;

pub use connect::{ConnectError, Connected, Connector};

/// Opens a connection to one URL named `name` (shown in the management UI), through a
/// [`Connector`] of that one node; an `amqps` URL trusts the system's roots.
pub async fn connect(url: &str, name: &str) -> Result<lapin::Connection, ConnectError> {
    Ok(Connector::for_url(url)?.connect(name).await?.connection)
}

/// Whether the broker refused an operation because the exchange or queue it names does not exist
/// (`NOT_FOUND`): the topology was not declared. That is a set-up step left out, not an outage,
/// so another try, or another node of the cluster, would get the same answer.
pub fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}
