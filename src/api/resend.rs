//! Enqueuing a fresh round of attempts (a merchant's "resend") on `<prefix>.deliveries`, with
//! publisher confirms. The API holds one broker connection, opened on first use and again after
//! it was lost, so that every other route works while the broker is away. It does not declare
//! queues: the workers own the topology, and a publish before any worker declared it is returned
//! as unroutable (an error), never lost silently.

use crate::broker::publisher::{PublishError, Publisher};
use crate::broker::topology::Topology;
use crate::config::Settings;
use crate::messages::DeliveryJob;
use std::time::Duration;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error("cannot reach RabbitMQ: {0}")]
    Connect(#[from] crate::broker::ConnectError),
    #[error("cannot open a channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error("RabbitMQ did not take the delivery: {0}")]
    Publish(#[from] PublishError),
}

pub struct Resender {
    connector: crate::broker::Connector,
    timeout: Duration,
    topology: Topology,
    // A tokio Mutex: it is held across the connect, so that concurrent resends share one.
    current: Mutex<Option<(lapin::Connection, Publisher)>>,
}

impl Resender {
    pub fn new(settings: &Settings) -> Self {
        Resender {
            connector: crate::broker::Connector::new(&settings.amqp),
            timeout: settings.amqp.publish_timeout,
            topology: Topology::from_settings(settings),
            current: Mutex::new(None),
        }
    }

    /// Publishes `job` for a fresh round of attempts; Ok only once the broker confirmed it.
    pub async fn enqueue(&self, job: &DeliveryJob) -> Result<(), ResendError> {
        let publisher = self.publisher().await?;
        job.publish_fresh(&publisher, &self.topology, None).await?;
        Ok(())
    }

    async fn publisher(&self) -> Result<Publisher, ResendError> {
        let mut current = self.current.lock().await;
        if let Some((conn, publisher)) = current.as_ref() {
            if conn.status().connected() && publisher.channel().status().connected() {
                return Ok(publisher.clone());
            }
        }
        let conn = self
            .connector
            .connect("hookrelay api (resend)")
            .await?
            .connection;
        let publisher = Publisher::new(&conn, self.timeout)
            .await
            .map_err(ResendError::Channel)?;
        *current = Some((conn, publisher.clone()));
        Ok(publisher)
    }

    /// The broker's nodes, the deployment's names and the confirm timeout, for routes that
    /// open a short connection of their own (the status route's dead-letter pass).
    pub fn broker(&self) -> (&crate::broker::Connector, &Topology, Duration) {
        (&self.connector, &self.topology, self.timeout)
    }

    /// Closes the connection, if one is open.
    pub async fn close(&self) {
        if let Some((conn, _)) = self.current.lock().await.take() {
            let _ = conn.close(200, "api shutting down".into()).await;
        }
    }
}
