//! Batched acknowledgements for one consumer channel. Handlers finish out of order; whenever the
//! finished tags form a contiguous run from the oldest unsettled one, a single `multiple` ack
//! settles the run (less work for the broker and for us). A finished tag stuck behind one still
//! in flight (a slow endpoint) is acked on its own after [`MAX_WAIT`], so a slow message never
//! holds the prefetch window of the others. Requeues are sent at once.

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a finished message may wait behind an unfinished one before it is acked alone.
const MAX_WAIT: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Hand the message back to the queue (nack with requeue).
    Requeue,
}

/// Settles deliveries of one channel; cheap to clone into every handler.
#[derive(Clone)]
pub struct AckBatcher {
    tx: mpsc::UnboundedSender<(u64, Settle)>,
}

impl AckBatcher {
    /// Starts the batcher for `channel`, whose delivery tags start at 1. The task ends, after
    /// sending every ack it was given, once all clones of the batcher are dropped.
    pub fn start(channel: Channel) -> (AckBatcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (AckBatcher { tx }, tokio::spawn(run(channel, rx)))
    }

    pub fn settle(&self, tag: u64, how: Settle) {
        // If the batcher is gone the channel is closed, and the broker requeues by itself.
        let _ = self.tx.send((tag, how));
    }
}

struct State {
    /// The oldest tag not yet settled in order.
    next: u64,
    /// Finished tags at or after `next`: when they finished, and whether already sent alone.
    done: BTreeMap<u64, (Instant, Settle, bool)>,
}

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<(u64, Settle)>) {
    let mut state = State {
        next: 1,
        done: BTreeMap::new(),
    };
    let mut tick = tokio::time::interval(MAX_WAIT / 2);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some((tag, how)) = msg else {
                    // No handler is left: send what still waits behind a gap.
                    let _ = flush(&channel, &mut state, Duration::ZERO).await;
                    return;
                };
                if !record(&channel, &mut state, tag, how).await { return }
                // Take everything already waiting, so one ack covers a burst.
                while let Ok((tag, how)) = rx.try_recv() {
                    if !record(&channel, &mut state, tag, how).await { return }
                }
            }
            _ = tick.tick(), if !state.done.is_empty() => {}
        }
        if flush(&channel, &mut state, MAX_WAIT).await.is_err() {
            return;
        }
    }
}

/// Notes a finished tag; requeues go out at once. False when the channel is gone.
async fn record(channel: &Channel, state: &mut State, tag: u64, how: Settle) -> bool {
    let mut sent = false;
    if how == Settle::Requeue {
        let nack = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        if channel.basic_nack(tag, nack).await.is_err() {
            return false;
        }
        sent = true;
    }
    state.done.insert(tag, (Instant::now(), how, sent));
    true
}

/// Acks the contiguous run at once, and alone what has waited `max_wait` behind a gap.
async fn flush(
    channel: &Channel,
    state: &mut State,
    max_wait: Duration,
) -> Result<(), lapin::Error> {
    // The contiguous run from `next`: one multiple ack up to its last unsent ack covers the
    // outstanding ones (tags already settled alone are no longer outstanding).
    let mut last_unsent_ack = None;
    while let Some((_, how, sent)) = state.done.remove(&state.next) {
        if how == Settle::Ack && !sent {
            last_unsent_ack = Some(state.next);
        }
        state.next += 1;
    }
    if let Some(tag) = last_unsent_ack {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    // Behind a gap: ack alone what has waited long enough.
    let now = Instant::now();
    for (tag, (at, how, sent)) in state.done.iter_mut() {
        if *how == Settle::Ack && !*sent && now.duration_since(*at) >= max_wait {
            channel
                .basic_ack(*tag, BasicAckOptions { multiple: false })
                .await?;
            *sent = true;
        }
    }
    Ok(())
}
