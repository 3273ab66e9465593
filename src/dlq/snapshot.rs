//! Reading a dead-letter queue without losing or reordering it.
//!
//! What does not work, as seen on RabbitMQ 3.10: `basic.get` and an immediate requeue hands back
//! the head of a quorum queue again and again (it never gets past the first message); messages
//! taken with `basic.get` and handed back by closing the channel come back in no particular
//! order; a multiple nack hands back more than 32 messages in hash order (an Erlang map's).
//!
//! What works: a [`Snapshot`] consumes the queue on a channel of its own with a prefetch of the
//! queue's depth and acks nothing while reading. Closing the channel hands every unacked message
//! back at once, and the quorum queue puts a consumer's messages back sorted by the order it
//! delivered them (`return_all` in `rabbit_fifo`, the same on 3.10 and 4.x) at the front of the
//! queue, so the order is what it was. Acking a message (after its replay was confirmed, or to
//! purge it) removes just that one; the others keep their places.
//!
//! The broker applies a closed channel's returns a moment after it confirmed the close, so the
//! queue reports those messages as held (not ready) until then. A snapshot therefore counts the
//! queue only once no consumer holds it (waiting a little for one just closed), and its release
//! waits until its own consumer is gone: when `release` returns, the messages are back.
//!
//! Each return counts as a delivery toward the queue's `x-delivery-limit` (every return on 3.x,
//! every acquisition on 4.x), which is why the dead-letter queues are declared with a high
//! limit. Two `dlq` commands reading the same queue at once each see only what the other does
//! not hold, and their returns may interleave: run one at a time.

use super::letter::{DeadLetter, DlqQueue};
use super::DlqError;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, Queue};
use std::time::Duration;

/// The most messages one snapshot holds: `basic.qos` takes a 16-bit prefetch count.
pub const MAX_MESSAGES: u32 = u16::MAX as u32;

/// How long to wait for consumers that hold the queue (another `dlq` command, or the returns of
/// one just closed) to go before counting it anyway.
const QUIET: Duration = Duration::from_secs(5);

/// How long to wait for the next of the counted messages before taking the rest as held by
/// someone else (another `dlq` command) or removed meanwhile.
const IDLE: Duration = Duration::from_secs(3);

/// A dead letter held unacked, with its delivery tag on the snapshot's channel.
pub struct Held {
    pub tag: u64,
    pub letter: DeadLetter,
}

/// Messages of one dead-letter queue, held unacked on a channel of their own until
/// [`Snapshot::release`].
pub struct Snapshot {
    pub queue: DlqQueue,
    pub name: String,
    /// The messages kept, in queue order.
    pub held: Vec<Held>,
    /// How many messages were in the queue, and how many were read.
    pub depth: u32,
    pub read: u32,
    /// Consumers other than ours when the snapshot was taken.
    others: u32,
    /// The channel that consumes (closing it hands back what it holds) and one to count on.
    channel: Channel,
    probe: Channel,
    _consumer: Option<Consumer>,
}

impl Snapshot {
    /// Reads `name` in order, keeping the letters `keep` accepts, until the queue's depth was
    /// read or `limit` letters were kept. Nothing is acked: [`Snapshot::release`] must follow.
    pub async fn take(
        conn: &Connection,
        queue: DlqQueue,
        name: &str,
        keep: impl Fn(&DeadLetter) -> bool,
        limit: Option<usize>,
    ) -> Result<Snapshot, DlqError> {
        let probe = conn.create_channel().await?;
        let counted = match quiet(&probe, name, 0).await {
            Ok(q) => q,
            // A failed passive declare closes the channel; nothing is held.
            Err(e) => return Err(DlqError::NoQueue(name.to_owned(), e)),
        };
        if counted.consumer_count() > 0 {
            tracing::warn!(queue = %name, consumers = counted.consumer_count(),
                "another consumer holds part of the queue; reading what it does not hold");
        }
        let mut snapshot = Snapshot {
            queue,
            name: name.to_owned(),
            held: Vec::new(),
            depth: counted.message_count(),
            read: 0,
            others: counted.consumer_count(),
            channel: conn.create_channel().await?,
            probe,
            _consumer: None,
        };
        let depth = snapshot.depth;
        if depth == 0 || limit == Some(0) {
            return Ok(snapshot);
        }
        if let Err(e) = snapshot.read_all(keep, limit).await {
            // Nothing was acked: whatever the close says, every message is back.
            let _ = snapshot.release().await;
            return Err(e);
        }
        Ok(snapshot)
    }

    async fn read_all(
        &mut self,
        keep: impl Fn(&DeadLetter) -> bool,
        limit: Option<usize>,
    ) -> Result<(), DlqError> {
        let wanted = self.depth.min(MAX_MESSAGES);
        // Exactly the depth: while reading, the broker sends no more than was counted. (What it
        // sends later, when acks free the prefetch, is handed back in order with the rest.)
        self.channel
            .basic_qos(wanted as u16, BasicQosOptions::default())
            .await?;
        let mut consumer = self
            .channel
            .basic_consume(
                self.name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        while self.read < wanted && limit.is_none_or(|l| self.held.len() < l) {
            let delivery = match tokio::time::timeout(IDLE, consumer.next()).await {
                Err(_) => {
                    tracing::warn!(queue = %self.name, read = self.read, depth = self.depth,
                        "the rest of the queue did not arrive; another consumer may hold it");
                    break;
                }
                Ok(None) => return Err(DlqError::ConsumerEnded(self.name.clone())),
                Ok(Some(delivery)) => delivery?,
            };
            self.read += 1;
            let letter = DeadLetter::read(self.queue, &delivery.properties, &delivery.data);
            if keep(&letter) {
                self.held.push(Held {
                    tag: delivery.delivery_tag,
                    letter,
                });
            }
        }
        self._consumer = Some(consumer);
        Ok(())
    }

    /// True when the queue held more than one snapshot can read.
    pub fn truncated(&self) -> bool {
        self.depth > MAX_MESSAGES
    }

    /// Removes one held message from the queue.
    pub async fn ack(&self, tag: u64) -> Result<(), DlqError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await?;
        Ok(())
    }

    /// Closes the channel: every message not acked goes back, in its order. Returns once the
    /// broker has taken them back. An error means the channel had already ended (every unacked
    /// message went back with it), so acks sent shortly before may not have been applied.
    pub async fn release(self) -> Result<(), lapin::Error> {
        // The close handshake also means the broker processed the acks sent before it.
        let closed = self.channel.close(200, "dlq done".into()).await;
        match quiet(&self.probe, &self.name, self.others).await {
            Ok(q) if q.consumer_count() > self.others => {
                tracing::warn!(queue = %self.name, "the broker has not yet taken back what was read")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, queue = %self.name, "counting after release"),
        }
        let _ = self.probe.close(200, "dlq done".into()).await;
        closed
    }
}

/// Counts `name` once at most `consumers` consumers hold it, or after [`QUIET`] as it is then.
async fn quiet(probe: &Channel, name: &str, consumers: u32) -> Result<Queue, lapin::Error> {
    let deadline = tokio::time::Instant::now() + QUIET;
    loop {
        let q = probe
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        if q.consumer_count() <= consumers || tokio::time::Instant::now() >= deadline {
            return Ok(q);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
