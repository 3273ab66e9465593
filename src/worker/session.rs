//! One connection session with the broker: two connections (consume, publish), the topology
//! declared, a confirmed publisher, and a consumer per work queue. A session ends on shutdown or
//! when anything of it is lost; the worker then opens a new one. Messages whose handlers were
//! cut off are not lost: unacked, the broker hands them out again.

use super::handle::{Ctx, HandleError};
use crate::broker::acks::{AckBatcher, Settle};
use crate::broker::connect::{Connector, NodeId};
use crate::broker::publisher::Publisher;
use crate::broker::topology::Topology;
use crate::config::Settings;
use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the session checks that both connections are still up.
const WATCH: Duration = Duration::from_millis(500);

/// Opening a session (two connections, the declarations, the consumers) must not hold a
/// reconnect forever; each connection attempt has its own, shorter bound in the connector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Closing a lost connection waits for an answer that may never come.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(1);

/// Which work queue a consumer reads.
#[derive(Clone, Copy, Debug)]
enum Queue {
    Events,
    Deliveries,
}

struct Consuming {
    queue: Queue,
    channel: Channel,
    consumer: Consumer,
    acks: AckBatcher,
    /// Ends once every handle to `acks` is gone and the last acks are sent.
    flushed: JoinHandle<()>,
}

pub struct Session {
    /// Both connections are on this node (the connector stays on a node that works).
    pub node: NodeId,
    consume_conn: Connection,
    publish_conn: Connection,
    consumers: Vec<Consuming>,
}

/// How a session ended.
pub enum Ended {
    Shutdown,
    Lost(anyhow::Error),
}

impl Session {
    /// Connects, declares and starts consuming. `ctx` gets this session's publisher.
    pub async fn open(
        settings: &Settings,
        connector: &Connector,
        topology: &Topology,
        make_ctx: impl FnOnce(Publisher) -> Arc<Ctx>,
    ) -> anyhow::Result<(Session, Arc<Ctx>)> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Self::open_now(settings, connector, topology, make_ctx),
        )
        .await
        .context("the broker did not complete the handshake in time")?
    }

    async fn open_now(
        settings: &Settings,
        connector: &Connector,
        topology: &Topology,
        make_ctx: impl FnOnce(Publisher) -> Arc<Ctx>,
    ) -> anyhow::Result<(Session, Arc<Ctx>)> {
        // Named with the prefix, so on-call can tell deployments apart in the management UI.
        let name = |role: &str| format!("hookrelay worker {} ({role})", topology.prefix);
        let first = connector.connect(&name("consume")).await?;
        let publish_conn = connector.connect(&name("publish")).await?.connection;
        let (consume_conn, node) = (first.connection, first.node);
        tracing::info!(node = %connector.node(node), version = %first.version, "connected to RabbitMQ");
        let declare = consume_conn.create_channel().await?;
        topology
            .declare(&declare)
            .await
            .context("declaring the exchanges and queues")?;
        let _ = declare.close(200, "declared".into()).await;
        let ctx = make_ctx(Publisher::new(&publish_conn, settings.amqp.publish_timeout).await?);
        let prefetch = settings.amqp.prefetch;
        let consumers = vec![
            consume(
                &consume_conn,
                Queue::Events,
                &topology.events_queue(),
                prefetch,
            )
            .await?,
            consume(
                &consume_conn,
                Queue::Deliveries,
                &topology.deliveries_queue(),
                prefetch,
            )
            .await?,
        ];
        Ok((
            Session {
                node,
                consume_conn,
                publish_conn,
                consumers,
            },
            ctx,
        ))
    }

    /// Hands each message to a handler task until shutdown or until the session is lost. A
    /// message waits for its size in `in_hand` (`worker.max_in_flight_bytes`) first, so what is
    /// being parsed, formatted and sent at once is bounded in bytes, whatever the payloads.
    pub async fn run(
        &mut self,
        ctx: &Arc<Ctx>,
        in_hand: &InHand,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut watch = tokio::time::interval(WATCH);
        let (first, rest) = self.consumers.split_at_mut(1);
        let (events, deliveries) = (&mut first[0], &mut rest[0]);
        loop {
            let (queue, next, acks) = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = watch.tick() => {
                    if !self.consume_conn.status().connected() || !self.publish_conn.status().connected() {
                        return Ended::Lost(anyhow::anyhow!("a broker connection was closed"));
                    }
                    continue;
                }
                next = events.consumer.next() => (events.queue, next, &events.acks),
                next = deliveries.consumer.next() => (deliveries.queue, next, &deliveries.acks),
            };
            match next {
                Some(Ok(delivery)) => {
                    let bytes = tokio::select! {
                        // Unsettled, the message goes back to the queue with the channel.
                        _ = shutdown.cancelled() => return Ended::Shutdown,
                        bytes = in_hand.take(delivery.data.len()) => bytes,
                    };
                    tracker.spawn(handle_one(
                        delivery,
                        queue,
                        ctx.clone(),
                        acks.clone(),
                        bytes,
                    ));
                }
                Some(Err(e)) => {
                    return Ended::Lost(
                        anyhow::Error::new(e).context(format!("consuming {queue:?}")),
                    )
                }
                None => {
                    return Ended::Lost(anyhow::anyhow!("the broker ended the {queue:?} consumer"))
                }
            }
        }
    }

    /// Stops the broker from sending more: what was prefetched but not started goes back
    /// untouched when the channel closes.
    pub async fn stop_consuming(&self) {
        for c in &self.consumers {
            let cancel = c
                .channel
                .basic_cancel(c.consumer.tag(), BasicCancelOptions::default());
            // A broker that is gone cannot answer; closing the channel later does the same.
            let _ = tokio::time::timeout(ABANDON_TIMEOUT, cancel).await;
        }
    }

    /// After the handlers are done: sends the last acks, then closes the consumers' channels and
    /// both connections, in that order.
    pub async fn close(self) {
        let mut channels = Vec::with_capacity(self.consumers.len());
        for c in self.consumers {
            drop(c.acks);
            if tokio::time::timeout(Duration::from_secs(5), c.flushed)
                .await
                .is_err()
            {
                tracing::warn!("could not send the last acks in time; the broker will redeliver");
            }
            channels.push(c.channel);
        }
        let close = async {
            // Each channel is closed and awaited before its connection. A channel that is only
            // dropped asks lapin to close it later; when the connection is already closing by
            // then, lapin logs `ERROR Connection error … invalid channel state: Closing` for a
            // stop that went as planned.
            for channel in &channels {
                let _ = channel.close(200, "shutdown".into()).await;
            }
            let _ = self.consume_conn.close(200, "shutdown".into()).await;
            let _ = self.publish_conn.close(200, "shutdown".into()).await;
        };
        if tokio::time::timeout(Duration::from_secs(5), close)
            .await
            .is_err()
        {
            tracing::warn!("the broker did not confirm closing the connections");
        }
    }

    /// A lost session: closes what may still be open, waiting at most a moment for the broker.
    pub async fn abandon(self) {
        let close = async {
            let _ = self.consume_conn.close(320, "reconnecting".into()).await;
            let _ = self.publish_conn.close(320, "reconnecting".into()).await;
        };
        let _ = tokio::time::timeout(ABANDON_TIMEOUT, close).await;
    }
}

async fn consume(
    conn: &Connection,
    queue: Queue,
    name: &str,
    prefetch: u16,
) -> anyhow::Result<Consuming> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            name.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (acks, flushed) = AckBatcher::start(channel.clone());
    Ok(Consuming {
        queue,
        channel,
        consumer,
        acks,
        flushed,
    })
}

/// The bytes of the messages being handled (`worker.max_in_flight_bytes`), shared by the
/// worker's sessions.
#[derive(Clone)]
pub struct InHand {
    bytes: Arc<Semaphore>,
    bound: u32,
}

impl InHand {
    pub fn new(bound: u32) -> Self {
        InHand {
            bytes: Arc::new(Semaphore::new(bound as usize)),
            bound,
        }
    }

    /// Waits until a message of `len` bytes fits; one larger than the bound waits for all of it.
    async fn take(&self, len: usize) -> OwnedSemaphorePermit {
        let weight = u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.bound);
        self.bytes
            .clone()
            .acquire_many_owned(weight)
            .await
            .expect("the semaphore is never closed")
    }
}

async fn handle_one(
    delivery: Delivery,
    queue: Queue,
    ctx: Arc<Ctx>,
    acks: AckBatcher,
    _bytes: OwnedSemaphorePermit,
) {
    let result = match queue {
        Queue::Events => ctx.handle_event(&delivery).await,
        Queue::Deliveries => ctx.handle_retry(&delivery).await,
    };
    let settle = match result {
        Ok(()) => Settle::Ack,
        Err(e) => {
            if !matches!(e, HandleError::ShuttingDown) {
                tracing::warn!(error = %e, "message not settled; handing it back");
            }
            Settle::Requeue
        }
    };
    acks.settle(delivery.delivery_tag, settle);
}
