//! The worker: declares the topology, consumes `<prefix>.events` and `<prefix>.deliveries` with a
//! bounded prefetch, and handles each message in its own task, so a slow endpoint holds only its
//! own messages. Shutdown is an argument: on cancel it stops consuming, drains what is in flight
//! for `worker.shutdown_grace`, and hands back the rest.

mod handle;
pub mod job;

use crate::broker::acks::{AckBatcher, Settle};
use crate::broker::publisher::Publisher;
use crate::broker::topology::Topology;
use crate::config::Settings;
use crate::delivery::policy::RetrySchedule;
use crate::delivery::Deliverer;
use crate::ops::{self, Health};
use crate::subscription::attempts::AttemptLog;
use crate::subscription::cache::SubscriptionCache;
use crate::subscription::store::Store;
use anyhow::Context;
use futures_util::StreamExt;
use handle::{Ctx, HandleError};
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Which work queue a consumer reads.
#[derive(Clone, Copy, Debug)]
enum Queue {
    Events,
    Deliveries,
}

/// A started worker: its ops address, and the task that ends when it has shut down.
pub struct RunningWorker {
    pub ops_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Waits until the worker stopped: after `shutdown` was cancelled, or on a fatal error.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("worker task panicked")?
    }
}

/// Connects, declares, and starts consuming; returns once the worker is consuming.
pub async fn start(
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningWorker> {
    let topology = Topology::new(
        &settings.amqp.prefix,
        &settings.delivery.retry_schedule,
        settings.amqp.delivery_limit,
    );
    let store = Store::connect(
        &settings.redis.url,
        &settings.redis.prefix,
        settings.redis.lookup_timeout,
    )
    .await
    .context("connecting to Redis (redis.url)")?;
    let attempt_log = AttemptLog::start(store.clone());
    let cache = SubscriptionCache::new(store);
    tokio::spawn(
        cache
            .clone()
            .follow_changes(settings.redis.url.clone(), shutdown.clone()),
    );
    if !cache.wait_live(settings.redis.lookup_timeout).await {
        tracing::warn!(
            "not yet following subscription changes; lookups bypass the cache until then"
        );
    }

    let consume_conn = Arc::new(
        crate::broker::connect(&settings.amqp.url, "hookrelay worker (consume)")
            .await
            .context("connecting to RabbitMQ (amqp.url)")?,
    );
    let publish_conn = crate::broker::connect(&settings.amqp.url, "hookrelay worker (publish)")
        .await
        .context("connecting to RabbitMQ (amqp.url)")?;
    let declare = consume_conn.create_channel().await?;
    topology
        .declare(&declare)
        .await
        .context("declaring the exchanges and queues")?;
    let _ = declare.close(200, "declared".into()).await;

    let ctx = Arc::new(Ctx {
        topology: topology.clone(),
        publisher: Publisher::new(&publish_conn, settings.amqp.publish_timeout).await?,
        cache: cache.clone(),
        deliverer: Deliverer::new(&settings.delivery)?,
        schedule: RetrySchedule::new(settings.delivery.retry_schedule.clone()),
        attempt_log,
        max_event_bytes: settings.delivery.max_event_bytes,
        shutdown: shutdown.clone(),
        redis_ok: AtomicBool::new(true),
    });

    let events = consume(
        &consume_conn,
        &topology.events_queue(),
        settings.amqp.prefetch,
    )
    .await?;
    let deliveries = consume(
        &consume_conn,
        &topology.deliveries_queue(),
        settings.amqp.prefetch,
    )
    .await?;

    let consuming = Arc::new(AtomicBool::new(true));
    let health = Health::new({
        let (ctx, consuming, conn) = (ctx.clone(), consuming.clone(), consume_conn.clone());
        move || {
            consuming.load(Ordering::Acquire)
                && conn.status().connected()
                && ctx.cache.is_live()
                && ctx.redis_ok.load(Ordering::Acquire)
        }
    });
    let ops_addr = ops::serve(settings.ops.listen, health, shutdown.clone()).await?;
    tracing::info!(%ops_addr, prefix = %settings.amqp.prefix, "worker consuming; ops endpoints listening");

    let task = tokio::spawn(async move {
        let tracker = TaskTracker::new();
        let result = tokio::select! {
            r = run_consumer(events, Queue::Events, ctx.clone(), &tracker, shutdown.clone()) => r,
            r = run_consumer(deliveries, Queue::Deliveries, ctx.clone(), &tracker, shutdown.clone()) => r,
        };
        consuming.store(false, Ordering::Release);
        shutdown.cancel();
        drain(&tracker, settings.worker.shutdown_grace).await;
        close(&consume_conn, &publish_conn).await;
        result
    });
    Ok(RunningWorker { ops_addr, task })
}

/// A consumer on its own channel, with the batcher that settles its deliveries.
async fn consume(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(Consumer, AckBatcher)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((consumer, AckBatcher::start(channel)))
}

/// Takes messages until shutdown (then returns Ok) or until the consumer fails (an error: the
/// process exits non-zero and its orchestrator restarts it; unacked messages go back).
async fn run_consumer(
    (mut consumer, acks): (Consumer, AckBatcher),
    queue: Queue,
    ctx: Arc<Ctx>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                tracker.spawn(handle_one(delivery, queue, ctx.clone(), acks.clone()));
            }
            Some(Err(e)) => return Err(e).context(format!("consuming {queue:?}")),
            None => anyhow::bail!("the broker ended the {queue:?} consumer"),
        }
    }
}

async fn handle_one(delivery: Delivery, queue: Queue, ctx: Arc<Ctx>, acks: AckBatcher) {
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

/// Waits for in-flight handlers up to `grace`; those still running then are dropped with the
/// connection, which hands their messages back to the broker.
async fn drain(tracker: &TaskTracker, grace: std::time::Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "shutdown grace over; handing back what is in flight"
        );
    }
}

async fn close(consume: &Connection, publish: &Connection) {
    let _ = consume.close(200, "shutdown".into()).await;
    let _ = publish.close(200, "shutdown".into()).await;
}
