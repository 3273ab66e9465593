//! One connection session with the broker: two connections (consume, publish), the topology
//! declared, a confirmed publisher, and a consumer (on a channel of its own) per work queue:
//! with `amqp.partitions` N > 1, one per partition this worker takes (`worker.partitions`),
//! `amqp.prefetch` split between those of one kind. A session ends on shutdown or
//! when anything of it is lost; the worker then opens a new one. Messages whose handlers were
//! cut off are not lost: unacked, the broker hands them out again.
//!
//! A session also watches the broker: `connection.blocked` on the publish connection (the one
//! that publishes, so the one the broker blocks) pauses consumption until `connection.unblocked`
//! ([`super::pause`]), and a probe on the consume connection every half heartbeat ends the
//! session when the broker stops answering, so that a partition is noticed (and the worker
//! reconnects) within about two heartbeats, not when the kernel gives up.

use super::handle::{Ctx, HandleError};
use super::pause::{Pauses, Reason};
use crate::broker::acks::{AckBatcher, Settle};
use crate::broker::connect::{Connector, NodeId};
use crate::broker::publisher::Publisher;
use crate::broker::topology::Topology;
use crate::config::Settings;
use anyhow::Context;
use futures_util::stream::{self, SelectAll};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionStatus, Consumer, Event};
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
    tag: ShortString,
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
    /// Every consumer's deliveries, tagged with the index of its [`Consuming`]; a consumer the
    /// broker ended yields `None` once.
    incoming: SelectAll<Tagged>,
    /// Follows `connection.blocked`/`unblocked` on the publish connection.
    blocked: JoinHandle<()>,
    /// Ends (with the reason) when the broker stops answering the consume connection.
    silence: JoinHandle<anyhow::Error>,
    pauses: Pauses,
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
        pauses: &Pauses,
        make_ctx: impl FnOnce(Publisher) -> Arc<Ctx>,
    ) -> anyhow::Result<(Session, Arc<Ctx>)> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Self::open_now(settings, connector, topology, pauses, make_ctx),
        )
        .await
        .context("the broker did not complete the handshake in time")?
    }

    async fn open_now(
        settings: &Settings,
        connector: &Connector,
        topology: &Topology,
        pauses: &Pauses,
        make_ctx: impl FnOnce(Publisher) -> Arc<Ctx>,
    ) -> anyhow::Result<(Session, Arc<Ctx>)> {
        // Named with the prefix, so on-call can tell deployments apart in the management UI.
        let name = |role: &str| format!("hookrelay worker {} ({role})", topology.prefix);
        let first = connector.connect(&name("consume")).await?;
        let publish = connector.connect(&name("publish")).await?;
        let publish_conn = publish.connection;
        // Listening before the first publish, so that no notice is missed.
        let blocked = tokio::spawn(follow_blocked(
            publish_conn.events_listener(),
            pauses.clone(),
        ));
        let (consume_conn, node) = (first.connection, first.node);
        tracing::info!(node = %connector.node(node), version = %first.version, "connected to RabbitMQ");
        crate::broker::partitions::prepare(topology, &consume_conn).await?;
        let publisher = Publisher::new(&publish_conn, settings.amqp.publish_timeout)
            .await?
            .holding_while_blocked(settings.amqp.blocked_timeout, publish.severer);
        let ctx = make_ctx(publisher);
        let silence = tokio::spawn(probe(
            consume_conn.create_channel().await?,
            consume_conn.status().clone(),
            settings.amqp.heartbeat,
        ));
        let taken = taken_partitions(topology.partitions, settings.worker.partitions.as_deref());
        let mut consumers = Vec::new();
        let mut incoming = SelectAll::new();
        for (queue, name, prefetch) in work_queues(topology, &taken, settings.amqp.prefetch) {
            let (consuming, consumer) = consume(&consume_conn, queue, &name, prefetch).await?;
            incoming.push(tagged(consumers.len(), consumer));
            consumers.push(consuming);
        }
        tracing::info!(partitions = ?taken, of = topology.partitions, "consuming");
        Ok((
            Session {
                node,
                consume_conn,
                publish_conn,
                consumers,
                incoming,
                blocked,
                silence,
                pauses: pauses.clone(),
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
        mut store_ok: tokio::sync::watch::Receiver<bool>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut watch = tokio::time::interval(WATCH);
        let mut pause = self.pauses.watch();
        loop {
            // Paused, the consumers are not read: what the broker sent waits in them, unacked, and
            // goes back to the queue if the session ends. Two reasons pause: the store's marker is
            // missing (`store_ok`), or the broker blocks publishers (`pause`).
            let store_paused = !*store_ok.borrow_and_update();
            let taking = *pause.borrow_and_update() == 0 && !store_paused;
            let (index, next) = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                silent = &mut self.silence => {
                    return Ended::Lost(silent.unwrap_or_else(|e| anyhow::anyhow!("the broker probe failed: {e}")));
                }
                _ = watch.tick() => match self.connection_lost(ctx) {
                    Some(lost) => return Ended::Lost(lost),
                    None => continue,
                },
                _ = store_ok.changed(), if store_paused => continue,
                _ = pause.changed() => continue,
                next = self.incoming.next(), if taking => match next {
                    Some(tagged) => tagged,
                    None => return Ended::Lost(anyhow::anyhow!("no consumer is left")),
                },
            };
            let queue = self.consumers[index].queue;
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    return Ended::Lost(
                        anyhow::Error::new(e).context(format!("consuming {queue:?}")),
                    )
                }
                None => {
                    return Ended::Lost(anyhow::anyhow!("the broker ended the {queue:?} consumer"))
                }
            };
            if let Err(ended) = self
                .hand_off(delivery, index, ctx, in_hand, tracker, shutdown)
                .await
            {
                return ended;
            }
        }
    }

    /// Why the session is lost, if a connection or the publish channel closed.
    fn connection_lost(&self, ctx: &Ctx) -> Option<anyhow::Error> {
        if !self.consume_conn.status().connected() || !self.publish_conn.status().connected() {
            return Some(anyhow::anyhow!("a broker connection was closed"));
        }
        // Closed after a publish was abandoned: the next session has a new one.
        if !ctx.publisher.channel().status().connected() {
            return Some(anyhow::anyhow!("the publish channel was closed"));
        }
        None
    }

    /// Waits for the message's size in `in_hand`, then gives it to a handler task of its own.
    async fn hand_off(
        &self,
        delivery: Delivery,
        index: usize,
        ctx: &Arc<Ctx>,
        in_hand: &InHand,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<(), Ended> {
        let bytes = tokio::select! {
            // Unsettled, the message goes back to the queue with the channel.
            _ = shutdown.cancelled() => return Err(Ended::Shutdown),
            bytes = in_hand.take(delivery.data.len()) => bytes,
        };
        let consuming = &self.consumers[index];
        tracker.spawn(handle_one(
            delivery,
            consuming.queue,
            ctx.clone(),
            consuming.acks.clone(),
            bytes,
        ));
        Ok(())
    }

    /// Stops the broker from sending more: what was prefetched but not started goes back
    /// untouched when the channel closes.
    pub async fn stop_consuming(&self) {
        for c in &self.consumers {
            let cancel = c
                .channel
                .basic_cancel(c.tag.clone(), BasicCancelOptions::default());
            // A broker that is gone cannot answer; closing the channel later does the same.
            let _ = tokio::time::timeout(ABANDON_TIMEOUT, cancel).await;
        }
    }

    /// Stops watching the broker; a new session learns afresh whether it blocks.
    fn unwatch(&self) {
        self.blocked.abort();
        self.silence.abort();
        if self.pauses.set(Reason::BrokerBlocked, false) {
            crate::metrics::broker_blocked(false);
        }
    }

    /// After the handlers are done: sends the last acks, closes each consumer channel once the
    /// broker has them, then closes both connections.
    pub async fn close(self) {
        self.unwatch();
        for c in self.consumers {
            drop(c.acks);
            if tokio::time::timeout(Duration::from_secs(5), c.flushed)
                .await
                .is_err()
            {
                tracing::warn!("could not send the last acks in time; the broker will redeliver");
            }
            close_channel(&c.channel).await;
        }
        let close = async {
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
        self.unwatch();
        let close = async {
            let _ = self.consume_conn.close(320, "reconnecting".into()).await;
            let _ = self.publish_conn.close(320, "reconnecting".into()).await;
        };
        let _ = tokio::time::timeout(ABANDON_TIMEOUT, close).await;
    }
}

/// Closes a consumer channel and waits for the broker's close-ok, which it sends only after it
/// has processed every earlier frame of the channel: the acks just sent are then settled.
///
/// Left to lapin, the channel would be closed when its last handle drops, by a task racing our
/// connection close; the loser fails on a channel already closing, lapin turns that into a
/// connection error and drops the socket without a close, and the broker then discards acks it
/// had read but not yet processed and redelivers those messages: a clean stop delivered the last
/// few events twice. A channel closed here is no longer open when its handles drop.
async fn close_channel(channel: &Channel) {
    let close = channel.close(200, "shutdown".into());
    match tokio::time::timeout(Duration::from_secs(5), close).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "closing a consumer channel failed; the broker may redeliver its last messages"),
        Err(_) => tracing::warn!("the broker did not confirm closing a consumer channel; it may redeliver its last messages"),
    }
}

/// Follows the broker's `connection.blocked` / `connection.unblocked` notices: one WARN line
/// with the broker's reason, `hookrelay_broker_blocked`, and the pause of consumption.
async fn follow_blocked(events: impl futures_util::Stream<Item = Event>, pauses: Pauses) {
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Event::ConnectionBlocked(reason) if pauses.set(Reason::BrokerBlocked, true) => {
                crate::metrics::broker_blocked(true);
                tracing::warn!(%reason, "the broker is blocking publishers (memory or disk alarm); holding the messages in hand and taking no new ones until it unblocks");
            }
            Event::ConnectionUnblocked if pauses.set(Reason::BrokerBlocked, false) => {
                crate::metrics::broker_blocked(false);
                tracing::info!("the broker unblocked publishers; consuming again");
            }
            _ => {}
        }
    }
}

/// Asks the broker for an answer (`basic.qos` on a channel of its own, which changes nothing)
/// every half heartbeat; returns when one does not come within a heartbeat. lapin's own
/// heartbeat check gives up only after two heartbeats of silence, checked every half one. The
/// consume connection never publishes, so the broker does not block it; if it ever did, lapin
/// would send nothing on it, and the probe waits rather than take that for a partition.
async fn probe(channel: Channel, status: ConnectionStatus, heartbeat: Duration) -> anyhow::Error {
    let mut every = tokio::time::interval(heartbeat / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if status.blocked() {
            continue;
        }
        let ask = channel.basic_qos(0, BasicQosOptions::default());
        match tokio::time::timeout(heartbeat, ask).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return anyhow::Error::new(e).context("probing the broker"),
            Err(_) => return anyhow::anyhow!("the broker did not answer within {heartbeat:?}"),
        }
    }
}

/// A consumer's deliveries, then `None` once when the broker ended it, tagged with its index.
/// `Sync` as well, because the session is borrowed across awaits of the worker's task.
type Tagged = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = (usize, Option<lapin::Result<Delivery>>)> + Send + Sync>,
>;

/// The partitions this worker takes: `worker.partitions` (checked against `amqp.partitions`
/// when the settings were read), or every one.
fn taken_partitions(partitions: u16, chosen: Option<&[u16]>) -> Vec<u16> {
    match chosen {
        Some(chosen) => chosen.iter().copied().filter(|p| *p < partitions).collect(),
        None => (0..partitions).collect(),
    }
}

/// Each work queue to consume with its prefetch: `prefetch` is the worker's total per kind,
/// split evenly over the partitions taken (the first ones get the remainder), and at least 1
/// each, since 0 would mean "unlimited" to the broker.
fn work_queues(topology: &Topology, taken: &[u16], prefetch: u16) -> Vec<(Queue, String, u16)> {
    let k = taken.len().max(1) as u16;
    let share = |i: usize| (prefetch / k + u16::from((i as u16) < prefetch % k)).max(1);
    let mut queues = Vec::new();
    for (i, p) in taken.iter().enumerate() {
        queues.push((Queue::Events, topology.events_queue_of(*p), share(i)));
    }
    for (i, p) in taken.iter().enumerate() {
        queues.push((
            Queue::Deliveries,
            topology.deliveries_queue_of(*p),
            share(i),
        ));
    }
    queues
}

async fn consume(
    conn: &Connection,
    queue: Queue,
    name: &str,
    prefetch: u16,
) -> anyhow::Result<(Consuming, Consumer)> {
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
    let consuming = Consuming {
        queue,
        channel,
        tag: consumer.tag(),
        acks,
        flushed,
    };
    Ok((consuming, consumer))
}

/// `consumer`'s deliveries tagged with `index`, ending with one `None` for the end.
fn tagged(index: usize, consumer: Consumer) -> Tagged {
    let deliveries = consumer
        .map(move |d| (index, Some(d)))
        .chain(stream::once(std::future::ready((index, None))));
    Box::pin(deliveries)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_is_split_over_the_partitions_taken_so_the_total_stays_amqp_prefetch() {
        let t = Topology::new("hr", &[], 20).with_partitions(4);
        let taken = taken_partitions(4, None);
        let queues = work_queues(&t, &taken, 1022);
        let events: Vec<_> = queues
            .iter()
            .filter(|(q, ..)| matches!(q, Queue::Events))
            .collect();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].1, "hr.events.0");
        assert_eq!(
            events.iter().map(|(.., n)| u32::from(*n)).sum::<u32>(),
            1022
        );
        assert_eq!(
            events.iter().map(|(.., n)| *n).collect::<Vec<_>>(),
            [256, 256, 255, 255]
        );
        assert_eq!(queues.len(), 8);
    }

    #[test]
    fn a_worker_limited_to_some_partitions_consumes_only_those() {
        let t = Topology::new("hr", &[], 20).with_partitions(4);
        let taken = taken_partitions(4, Some(&[0, 2]));
        let names: Vec<_> = work_queues(&t, &taken, 10)
            .into_iter()
            .map(|(_, name, n)| (name, n))
            .collect();
        assert_eq!(
            names,
            [
                ("hr.events.0".to_owned(), 5),
                ("hr.events.2".to_owned(), 5),
                ("hr.deliveries.0".to_owned(), 5),
                ("hr.deliveries.2".to_owned(), 5)
            ]
        );
    }

    #[test]
    fn one_partition_consumes_the_unnumbered_queues_with_the_whole_prefetch() {
        let t = Topology::new("hr", &[], 20);
        let names: Vec<_> = work_queues(&t, &taken_partitions(1, None), 1024)
            .into_iter()
            .map(|(_, name, n)| (name, n))
            .collect();
        assert_eq!(
            names,
            [
                ("hr.events".to_owned(), 1024),
                ("hr.deliveries".to_owned(), 1024)
            ]
        );
    }
}
