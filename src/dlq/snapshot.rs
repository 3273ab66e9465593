//! Reading a dead-letter queue of any size without losing or reordering it.
//!
//! One file on purpose: what was tried on the broker, the rule chosen, and the code that keeps
//! it belong together (about 450 lines, held up as a model of how hookrelay code should read).
//!
//! What does not work, as seen on RabbitMQ 3.10: `basic.get` and an immediate requeue hands back
//! the head of a quorum queue again and again (it never gets past the first message); messages
//! taken with `basic.get` and handed back by closing the channel come back in no particular
//! order; a multiple nack hands back more than 32 messages in hash order (an Erlang map's).
//! Moving through the queue by republishing each message to its tail and acking it keeps a
//! cycle's order only while nobody else writes: a letter dead-lettered meanwhile lands in the
//! middle, and a crash between the republish and the ack leaves a copy. RabbitMQ streams would
//! give offsets, but the dead-letter queues are quorum queues (DESIGN §4) and must stay so.
//!
//! What works: the queue is held, unacked, by consumers of our own and handed back by closing
//! their channel. A quorum queue puts the messages of a consumer that went away back in the
//! order it delivered them (`return_all` sorts them by delivery) into its `returns`, which it
//! serves before everything else, so they are back at the front in their order. Acking a held
//! message (after its replay was confirmed, or to purge it) removes just that one; the others
//! keep their places.
//!
//! A consumer holds at most 65,535 messages (`basic.qos` takes a 16-bit prefetch count, and a
//! prefetch of 0 is 2,000 on a quorum queue), so the queue is read in windows: consumer `k` on
//! the same channel gets a prefetch of one window, and starts only once consumer `k - 1` holds
//! all of its window (so it has no credit left and the queue sends everything after it to `k`);
//! each full window's consumer is then cancelled, which on a quorum queue keeps what it holds
//! (credit 0, status `cancelled`) and lets acks remove messages without pulling in new ones.
//! An ack before that gives a consumer credit back, so a window may get a few letters more
//! than its size (the ones right after it, in order): a cancelled window is read to its end
//! before the next one starts. Windows are 8,192 letters by default ([`DEFAULT_WINDOW`]): the
//! broker sends a window at once and the client buffers what is not read yet, so a replay,
//! slower than the broker, buffers at most a window (a first try with 65,535-letter windows
//! used 190 MB for a replay and stalled once a window had been sent more than its size).
//!
//! Handing back: the channels are closed one at a time (on a normal end, and on SIGINT or
//! SIGTERM, which every `dlq` command handles), and the queue handles each closed channel as one
//! `down`, returning its consumers' messages consumer after consumer in the order of their keys:
//! on 3.10 `maps:keys` of the channel's consumers, keyed `{Tag, Pid}` and sorted for maps of up
//! to 32 keys; on 4.x explicitly sorted keys, the raft index of each consumer's registration.
//! Our consumer tags sort in window order (`hookrelay-dlq-00000`, `-00001`, …) and registration
//! follows window order, so both versions put the windows back in order. That is why a channel
//! carries at most [`WINDOWS_PER_CHANNEL`] = 32 windows (2,097,120 letters); a longer queue uses
//! further channels, each closed only once the broker took back the one before.
//!
//! What a crash does (the connection ends without the channels being closed, e.g. `kill -9`),
//! as seen on 3.10: the held letters go back to the *end* of the queue, in their order, behind
//! the letters never read. Nothing is lost and both parts keep their order (the queue is
//! rotated), but the held part no longer comes first. A single window behaves the same; only a
//! released snapshot keeps the queue exactly as it was.
//!
//! Acks need care too, as seen on 3.10: the quorum-queue client inside a channel keeps at most
//! 32 commands in flight to the queue and stashes further acks until earlier commands were
//! applied; when the channel closes, a stash not yet sent is dropped and those letters come
//! back although their replay was confirmed (the close handshake does not wait for it). So a
//! channel that acked stays open [`ACK_GRACE`] after its last ack, and a command that removed
//! letters compares the queue's count after its release with what it left: if more letters
//! are ready, it reads the queue again and removes, by id, any letter it had already removed
//! (a letter dead-lettered meanwhile has a new id and stays).
//!
//! A passive declare of a quorum queue on 3.10 answers 0 messages and 0 consumers when the
//! queue does not answer within 250 ms (a queue busy taking back 65,535 letters), so such an
//! answer is asked again before it is believed.
//!
//! The broker applies a closed channel's returns a moment after it confirmed the close, so the
//! queue reports those messages as held (not ready) until then. A snapshot therefore counts the
//! queue only once no consumer holds it (waiting a little for one just closed), and its release
//! waits until its own consumers are gone: when `release` returns, the messages are back.
//!
//! Each return counts as a delivery toward the queue's `x-delivery-limit` (every return on 3.x,
//! every acquisition on 4.x), which is why the dead-letter queues are declared with a high
//! limit. The broker keeps a small record per held message (not the body), so holding 500,000
//! letters costs it tens of megabytes while a command runs. Two `dlq` commands reading the same
//! queue at once each see only what the other does not hold, and their returns may interleave:
//! run one at a time.
//!
//! One file, though long: most of it is the paragraph above and the window logic it justifies;
//! splitting it would separate the code from the reason it is written that way.

use super::letter::{DeadLetter, DlqQueue};
use super::DlqError;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use std::time::Duration;

/// The most messages one consumer holds: `basic.qos` takes a 16-bit prefetch count.
pub const WINDOW: u32 = u16::MAX as u32;

/// The window used: the broker sends a window at once and the client buffers what is not read
/// yet, so a replay (slower than the broker) would buffer up to a window of letters; 8,192
/// keeps that to a few megabytes while 500,000 letters still fit in 62 windows (2 channels).
pub const DEFAULT_WINDOW: u32 = 8_192;

/// Windows per channel: RabbitMQ 3.10 returns a closed channel's consumers in the order of
/// `maps:keys`, which is sorted only for maps of up to 32 keys.
pub const WINDOWS_PER_CHANNEL: usize = 32;

/// How long to wait for consumers that hold the queue (another `dlq` command, or the returns of
/// one just closed) to go before counting it anyway.
const QUIET: Duration = Duration::from_secs(5);

/// How long a channel that acked stays open after its last ack. RabbitMQ's quorum-queue client
/// in the channel keeps at most 32 commands in flight and stashes further acks until earlier
/// ones were applied; a channel closed meanwhile drops the stash, and those letters come back.
const ACK_GRACE: Duration = Duration::from_millis(500);

/// How long to wait for the next of the counted messages before taking the rest as held by
/// someone else (another `dlq` command) or removed meanwhile.
const IDLE: Duration = Duration::from_secs(3);

/// The same for a window's first message: a queue sending 65,535 letters at once, or still
/// taking back a large release, can take seconds to start.
const FIRST_IDLE: Duration = Duration::from_secs(30);

/// Where a held message is: its channel and its delivery tag there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    channel: usize,
    delivery: u64,
}

/// A dead letter held unacked.
pub struct Held {
    pub tag: Tag,
    pub letter: DeadLetter,
}

/// One channel of a snapshot and how many of our consumers it carries.
struct Segment {
    channel: Channel,
    consumers: u32,
    /// Letters read on this channel, and of those acked.
    held: u32,
    acked: u32,
}

/// One dead-letter queue, read in order and held unacked until [`Snapshot::release`].
pub struct Snapshot {
    pub queue: DlqQueue,
    pub name: String,
    /// How many messages were in the queue when it was counted, and how many were read.
    pub depth: u32,
    pub read: u32,
    /// Consumers other than ours when the snapshot was taken.
    others: u32,
    window: u32,
    segments: Vec<Segment>,
    /// The window being read, how many it may hold and how many it got.
    current: Option<Consumer>,
    current_segment: usize,
    current_size: u32,
    current_read: u32,
    /// The current window was cancelled: it is read to its end, then the next one starts.
    cancelled: bool,
    windows: usize,
    /// True once the rest of the counted messages did not arrive (held by someone else).
    stalled: bool,
    /// A channel to count on.
    probe: Channel,
    last_ack: Option<tokio::time::Instant>,
}

impl Snapshot {
    /// Counts `name` and gets ready to read it; nothing is held yet.
    pub async fn open(
        conn: &Connection,
        queue: DlqQueue,
        name: &str,
    ) -> Result<Snapshot, DlqError> {
        Self::open_with_window(conn, queue, name, DEFAULT_WINDOW).await
    }

    /// As [`Snapshot::open`], with windows of `window` messages (tests use small ones to show
    /// that many windows keep the order).
    pub async fn open_with_window(
        conn: &Connection,
        queue: DlqQueue,
        name: &str,
        window: u32,
    ) -> Result<Snapshot, DlqError> {
        let window = window.clamp(1, WINDOW);
        let probe = conn.create_channel().await?;
        let counted = match quiet(&probe, name).await {
            Ok(q) => q,
            // A failed passive declare closes the channel; nothing is held.
            Err(e) => return Err(DlqError::NoQueue(name.to_owned(), e)),
        };
        if counted.consumers > 0 {
            tracing::warn!(queue = %name, consumers = counted.consumers,
                "another consumer holds part of the queue; reading what it does not hold");
        }
        let windows_needed = counted.messages.div_ceil(window) as usize;
        let mut segments = Vec::new();
        for _ in 0..windows_needed.div_ceil(WINDOWS_PER_CHANNEL).max(1) {
            segments.push(Segment {
                channel: conn.create_channel().await?,
                consumers: 0,
                held: 0,
                acked: 0,
            });
        }
        Ok(Snapshot {
            queue,
            name: name.to_owned(),
            depth: counted.messages,
            read: 0,
            others: counted.consumers,
            window,
            segments,
            current: None,
            current_segment: 0,
            current_size: 0,
            current_read: 0,
            cancelled: false,
            windows: 0,
            stalled: false,
            probe,
            last_ack: None,
        })
    }

    /// The next letter in queue order, held until [`Snapshot::release`]; `None` once the counted
    /// depth was read (letters dead-lettered after the count are left for the next command).
    pub async fn next(&mut self) -> Result<Option<Held>, DlqError> {
        loop {
            if self.read >= self.depth || self.stalled {
                return Ok(None);
            }
            if self.current.is_none() {
                self.next_window().await?;
            }
            if self.current_read >= self.current_size && !self.cancelled {
                // Acks give a consumer credit back, so a window may have been sent more than
                // its size (the letters right after it, in order): stop it, then read what it
                // got before the next window starts.
                let tag = self.current.as_ref().expect("a window is open").tag();
                self.segments[self.current_segment]
                    .channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await?;
                self.cancelled = true;
            }
            let consumer = self.current.as_mut().expect("a window is open");
            let idle = if self.current_read == 0 {
                FIRST_IDLE
            } else {
                IDLE
            };
            let delivery = match tokio::time::timeout(idle, consumer.next()).await {
                Err(_) => {
                    tracing::warn!(queue = %self.name, read = self.read, depth = self.depth,
                        "the rest of the queue did not arrive; another consumer may hold it");
                    self.stalled = true;
                    return Ok(None);
                }
                // A cancelled window ends once it handed over what it got.
                Ok(None) if self.cancelled => {
                    self.current = None;
                    continue;
                }
                Ok(None) => return Err(DlqError::ConsumerEnded(self.name.clone())),
                Ok(Some(delivery)) => delivery?,
            };
            self.read += 1;
            self.current_read += 1;
            self.segments[self.current_segment].held += 1;
            return Ok(Some(Held {
                tag: Tag {
                    channel: self.current_segment,
                    delivery: delivery.delivery_tag,
                },
                letter: DeadLetter::read(self.queue, &delivery.properties, &delivery.data),
            }));
        }
    }

    /// Starts the next window (the previous one, cancelled, keeps what it holds).
    async fn next_window(&mut self) -> Result<(), DlqError> {
        let segment = self.windows / WINDOWS_PER_CHANNEL;
        if segment >= self.segments.len() {
            // Counted windows are all used: the depth only shrinks while we read.
            return Err(DlqError::ConsumerEnded(self.name.clone()));
        }
        let size = (self.depth - self.read).min(self.window);
        self.current_segment = segment;
        let segment = &mut self.segments[segment];
        // At most what is left of the count: until acks give credit back, the broker sends no
        // more than was counted.
        segment
            .channel
            .basic_qos(size as u16, BasicQosOptions::default())
            .await?;
        let consumer = segment
            .channel
            .basic_consume(
                self.name.as_str().into(),
                format!("hookrelay-dlq-{:05}", self.windows).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        segment.consumers += 1;
        self.windows += 1;
        self.current = Some(consumer);
        self.current_size = size;
        self.current_read = 0;
        self.cancelled = false;
        Ok(())
    }

    /// True when the counted messages were not all read (another consumer holds some).
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// Removes one held message from the queue.
    pub async fn ack(&mut self, tag: Tag) -> Result<(), DlqError> {
        let segment = &mut self.segments[tag.channel];
        segment
            .channel
            .basic_ack(tag.delivery, BasicAckOptions { multiple: false })
            .await?;
        segment.acked += 1;
        self.last_ack = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// Closes the channels in order: every message not acked goes back, in its order. Returns
    /// once the broker has taken them back, with how many more letters are ready than this
    /// snapshot left (see [`Released`]). An error means a channel had already ended (every
    /// unacked message went back with it), so acks sent shortly before may not have been
    /// applied.
    pub async fn release(self) -> Result<Released, lapin::Error> {
        let mut result = Ok(());
        let mut later: u32 = self.segments.iter().map(|s| s.consumers).sum();
        // Letters never read stayed ready; each closed channel adds what it held, not acked.
        let mut ready = self.depth - self.read;
        let mut counted = None;
        for segment in &self.segments {
            later -= segment.consumers;
            ready += segment.held - segment.acked;
            if segment.acked > 0 {
                // Acks still stashed in the channel when it closes are lost (see the module
                // documentation): give the queue time to apply the last ones.
                if let Some(at) = self.last_ack {
                    tokio::time::sleep_until(at + ACK_GRACE).await;
                }
            }
            // The close handshake also means the broker processed the acks sent before it.
            let closed = segment.channel.close(200, "dlq done".into()).await;
            result = result.and(closed);
            // The next channel's returns must not overtake this one's: wait until the broker
            // dropped this channel's consumers and counts its letters as ready again.
            let patience = QUIET + Duration::from_millis(u64::from(segment.held) / 10);
            let wanted = Counted {
                consumers: self.others + later,
                messages: ready,
            };
            match settle(&self.probe, &self.name, wanted, patience).await {
                Ok(c) => counted = Some(c),
                Err(e) => tracing::debug!(error = %e, queue = %self.name, "counting after release"),
            }
        }
        let _ = self.probe.close(200, "dlq done".into()).await;
        let surplus = counted.map_or(0, |c| c.messages.saturating_sub(ready));
        if surplus > 0 && self.segments.iter().any(|s| s.acked > 0) {
            tracing::debug!(queue = %self.name, surplus, "more letters ready than left");
        }
        result.map(|()| Released {
            surplus,
            acked: self.segments.iter().map(|s| s.acked).sum(),
        })
    }
}

/// What a release found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Released {
    /// Letters ready beyond those this snapshot left: letters dead-lettered meanwhile, or
    /// acks the broker dropped (a command that removed letters then looks again, by id).
    pub surplus: u32,
    /// Letters this snapshot removed.
    pub acked: u32,
}

/// What a passive declare reports of a queue.
#[derive(Clone, Copy, Debug)]
struct Counted {
    consumers: u32,
    messages: u32,
}

/// Counts `name`. RabbitMQ 3.10 answers a passive declare of a quorum queue with 0 messages and
/// 0 consumers when the queue's leader does not answer within 250 ms (a busy queue, e.g. one
/// taking back 65,535 letters), so a 0/0 answer is asked again before it is believed.
async fn count(probe: &Channel, name: &str) -> Result<Counted, lapin::Error> {
    let mut tries = 0;
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
        tries += 1;
        let counted = Counted {
            consumers: q.consumer_count(),
            messages: q.message_count(),
        };
        if counted.consumers > 0 || counted.messages > 0 || tries == 3 {
            return Ok(counted);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Waits until at most `wanted.consumers` hold `name` and at least `wanted.messages` are
/// ready, or `patience` ran out (then warns); returns the last count.
async fn settle(
    probe: &Channel,
    name: &str,
    wanted: Counted,
    patience: Duration,
) -> Result<Counted, lapin::Error> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let c = count(probe, name).await?;
        if c.consumers <= wanted.consumers && c.messages >= wanted.messages {
            return Ok(c);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(queue = %name, "the broker has not yet taken back what was read");
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts `name` once nobody holds it, or after [`QUIET`] as it is then.
async fn quiet(probe: &Channel, name: &str) -> Result<Counted, lapin::Error> {
    let deadline = tokio::time::Instant::now() + QUIET;
    loop {
        let c = count(probe, name).await?;
        if c.consumers == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
