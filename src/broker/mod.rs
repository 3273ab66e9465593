//! RabbitMQ: the [`topology`] of DESIGN §4 and a confirmed [`publisher`].

pub mod acks;
pub mod headers;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

/// Opens a connection named `name` (shown in the management UI, so on-call can tell
/// workers, publishers and `dlq` commands apart).
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await
}
