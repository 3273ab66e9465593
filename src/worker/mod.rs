//! The worker: declares the topology, consumes `<prefix>.events` and `<prefix>.deliveries` (or
//! their partitions, `amqp.partitions`) with a bounded prefetch, and handles each message in its own task, so a slow endpoint holds only its
//! own messages. A lost broker connection is reopened with backoff (not ready meanwhile); past
//! `amqp.reconnect_timeout` the worker gives up with an error so its supervisor restarts it.
//! Without the store's marker it does not start, and while the marker is missing it takes no
//! new message ([`store_watch`]).
//! Shutdown is an argument: on cancel it stops consuming, drains what is in flight for
//! `worker.shutdown_grace`, sends the last acks and hands back the rest.

pub mod endpoints;
mod handle;
pub mod pause;
pub mod rate_limit;
mod session;
pub mod store_watch;

use crate::broker::connect::Connector;
use crate::broker::topology::Topology;
use crate::config::Settings;
use crate::delivery::policy::RetrySchedule;
use crate::delivery::Deliverer;
use crate::ops::{self, Health};
use crate::subscription::attempts::AttemptLog;
use crate::subscription::cache::{CacheLimits, SubscriptionCache};
use crate::subscription::store::Store;
use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use endpoints::{Caps, Endpoints};
use handle::Ctx;
use rate_limit::RateLimits;
use session::{Ended, InHand, Session};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store_watch::StoreState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// What outlives a broker session: the cache, the HTTP client, endpoint states, the log.
struct Parts {
    settings: Settings,
    /// Shared by every session, so that a reconnect starts after the node that was lost.
    connector: Connector,
    topology: Topology,
    cache: Arc<SubscriptionCache>,
    deliverer: Deliverer,
    attempt_log: AttemptLog,
    operational: crate::operational::Operational,
    endpoints: Arc<Endpoints>,
    rate_limits: Arc<RateLimits>,
    redis_ok: Arc<AtomicBool>,
    store_state: Arc<StoreState>,
    in_hand: InHand,
    /// Why consumption is paused, if it is (the broker blocks publishers, ...).
    pauses: pause::Pauses,
    shutdown: CancellationToken,
}

impl Parts {
    fn new(
        settings: Settings,
        subscriptions: Subscriptions,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Parts> {
        let Subscriptions {
            store,
            cache,
            redis_ok,
            store_state,
        } = subscriptions;
        Ok(Parts {
            store_state,
            connector: Connector::new(&settings.amqp),
            topology: Topology::from_settings(&settings),
            cache,
            deliverer: Deliverer::new(&settings.delivery)?,
            rate_limits: RateLimits::new(
                store.clone(),
                settings.delivery.max_in_flight_per_webhook,
            ),
            attempt_log: AttemptLog::start(store.clone()),
            operational: crate::operational::Operational::from_settings(store, &settings),
            endpoints: Endpoints::new(
                Caps {
                    webhook: settings.delivery.max_in_flight_per_webhook,
                    origin: settings.delivery.max_in_flight_per_origin,
                    account: settings.delivery.max_in_flight_per_account,
                },
                // The circuit's cool-down: the first retry step, when a probe would retry anyway.
                settings
                    .delivery
                    .retry_schedule
                    .first()
                    .copied()
                    .unwrap_or(Duration::from_secs(5))
                    .max(Duration::from_secs(1)),
            ),
            redis_ok,
            in_hand: InHand::new(settings.worker.max_in_flight_bytes),
            pauses: pause::Pauses::default(),
            shutdown,
            settings,
        })
    }

    /// Ready (`/readyz`) while consuming, following subscription changes, with Redis answering
    /// and the store's marker there.
    fn health(&self, consuming: Arc<AtomicBool>) -> Health {
        let (cache, redis_ok, store_state) = (
            self.cache.clone(),
            self.redis_ok.clone(),
            self.store_state.clone(),
        );
        Health::new(move || {
            consuming.load(Ordering::Acquire)
                && cache.is_live()
                && redis_ok.load(Ordering::Acquire)
                && store_state.is_ok()
        })
    }

    fn ctx(&self, publisher: crate::broker::publisher::Publisher) -> Arc<Ctx> {
        let d = &self.settings.delivery;
        Arc::new(Ctx {
            topology: self.topology.clone(),
            publisher,
            cache: self.cache.clone(),
            deliverer: self.deliverer.clone(),
            schedule: RetrySchedule::new(d.retry_schedule.clone()),
            attempt_log: self.attempt_log.clone(),
            operational: self.operational.clone(),
            endpoints: self.endpoints.clone(),
            rate_limits: self.rate_limits.clone(),
            limits: crate::event::Limits {
                max_bytes: d.max_event_bytes,
                max_depth: d.max_event_depth,
            },
            shutdown: self.shutdown.clone(),
            redis_ok: self.redis_ok.clone(),
            store_state: self.store_state.clone(),
        })
    }

    /// Opens a session, retrying with backoff for up to `amqp.reconnect_timeout`.
    async fn open_session(&self) -> anyhow::Result<(Session, Arc<Ctx>)> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            // Short: after a partition heals, delivery should resume within seconds.
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(self.settings.amqp.reconnect_timeout));
        let open = || {
            Session::open(
                &self.settings,
                &self.connector,
                &self.topology,
                &self.pauses,
                |p| self.ctx(p),
            )
        };
        // A certificate that does not verify or a broker too old will not change by waiting:
        // stop with the reason (the supervisor shows it) rather than retry for a minute.
        let permanent = |e: &anyhow::Error| {
            e.downcast_ref::<crate::broker::ConnectError>()
                .is_some_and(|e| e.is_permanent())
                || e.downcast_ref::<crate::broker::partitions::TopologyError>()
                    .is_some_and(|e| e.is_permanent())
        };
        let attempt = open.retry(backoff).when(|e| !permanent(e)).notify(|e, wait| {
            tracing::warn!(error = %format!("{e:#}"), ?wait, "broker unavailable; reconnecting");
        });
        tokio::select! {
            r = attempt => r.context("no broker session (amqp.url / amqp.urls)"),
            _ = self.shutdown.cancelled() => anyhow::bail!("shut down while connecting"),
        }
    }
}

/// Connects to Redis and RabbitMQ, declares, and starts consuming; returns once consuming.
pub async fn start(
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningWorker> {
    crate::metrics::worker_started(&crate::broker::topology::Topology::from_settings(&settings));
    let subscriptions = follow_subscriptions(&settings, &shutdown).await?;
    let parts = Parts::new(settings, subscriptions, shutdown.clone())?;
    let first = parts.open_session().await?;

    let consuming = Arc::new(AtomicBool::new(true));
    let health = parts.health(consuming.clone());
    let ops_addr = ops::serve(&parts.settings.ops, health, shutdown.clone()).await?;
    tracing::info!(%ops_addr, prefix = %parts.settings.amqp.prefix, "worker consuming; ops endpoints listening");
    let task = tokio::spawn(run(parts, first, consuming));
    Ok(RunningWorker { ops_addr, task })
}

/// The Redis side of a worker, followed from the start: the store, its cache, whether Redis
/// answers, and whether the store's marker is there.
struct Subscriptions {
    store: Store,
    cache: Arc<SubscriptionCache>,
    redis_ok: Arc<AtomicBool>,
    store_state: Arc<StoreState>,
}

/// Connects to Redis and requires its marker, then follows it: subscription changes into the
/// cache, a PING probe, and a watch on the marker.
async fn follow_subscriptions(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Subscriptions> {
    let store = Store::from_settings(&settings.redis)
        .await
        .context("connecting to Redis (redis.url)")?;
    // No marker, no work: a lost store reads as accounts without webhooks (DESIGN §5).
    let marker = store.require_marker().await?;
    store.verify_secret_key().await?;
    if !store.seals_secrets() {
        tracing::warn!("redis.secret_key is empty: webhook secrets are stored in plain text");
    }
    let cache = SubscriptionCache::with_limits(
        store.clone(),
        CacheLimits {
            max_bytes: settings.worker.cache_max_bytes,
            ttl: settings.worker.cache_ttl,
        },
    );
    tokio::spawn(cache.clone().follow_changes(shutdown.clone()));
    let redis_ok = Arc::new(AtomicBool::new(true));
    tokio::spawn(probe_redis(
        store.clone(),
        redis_ok.clone(),
        settings.amqp.heartbeat,
        shutdown.clone(),
    ));
    if !cache.wait_live(settings.redis.lookup_timeout).await {
        tracing::warn!(
            "not yet following subscription changes; lookups bypass the cache until then"
        );
    }
    let store_state = StoreState::new(marker, cache.clone());
    tokio::spawn(
        store_state
            .clone()
            .watch(settings.worker.store_check_interval, shutdown.clone()),
    );
    Ok(Subscriptions {
        store,
        cache,
        redis_ok,
        store_state,
    })
}

/// PINGs Redis every half heartbeat (`amqp.heartbeat`: one liveness bound for both), so that
/// `hookrelay_redis_ok` and `/readyz` show a silent Redis within about a heartbeat even when
/// every lookup is answered from the cache. Lookups set the same flag (see `Ctx::lookup`).
async fn probe_redis(
    store: Store,
    redis_ok: Arc<AtomicBool>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(heartbeat / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut conn = store.redis().clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<()>(&mut conn);
        // Half a heartbeat: Redis answers a PING in microseconds, and a partition should show
        // within about one heartbeat.
        let ok = matches!(tokio::time::timeout(heartbeat / 2, ping).await, Ok(Ok(())));
        crate::metrics::redis_ok(ok);
        match (ok, redis_ok.swap(ok, Ordering::AcqRel)) {
            (false, true) => tracing::warn!("Redis does not answer; not ready until it does"),
            (true, false) => tracing::info!("Redis answers again"),
            _ => {}
        }
    }
}

/// Runs sessions until shutdown (Ok) or until the broker stays away too long (Err).
async fn run(
    parts: Parts,
    (mut session, mut ctx): (Session, Arc<Ctx>),
    consuming: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        consuming.store(true, Ordering::Release);
        crate::metrics::broker_connected(true);
        let ended = session
            .run(
                &ctx,
                &parts.in_hand,
                &tracker,
                parts.store_state.subscribe(),
                &parts.shutdown,
            )
            .await;
        consuming.store(false, Ordering::Release);
        crate::metrics::broker_connected(false);
        match ended {
            Ended::Shutdown => {
                session.stop_consuming().await;
                drain(&tracker, parts.settings.worker.shutdown_grace).await;
                // Closed before its last handle drops, so that lapin does not close it too,
                // racing the connection's close (see `session::close_channel`).
                let publisher = ctx.publisher.channel().close(200, "shutdown".into());
                let _ = tokio::time::timeout(Duration::from_secs(5), publisher).await;
                drop(ctx);
                session.close().await;
                tracing::info!("worker stopped");
                return Ok(());
            }
            Ended::Lost(e) => {
                tracing::warn!(error = %format!("{e:#}"), "broker session lost; reconnecting");
                metrics::counter!("hookrelay_broker_reconnects_total").increment(1);
                parts.connector.lost(session.node);
                session.abandon().await;
                (session, ctx) = parts.open_session().await?;
                tracing::info!("broker session restored; consuming again");
            }
        }
    }
}

/// Waits for in-flight handlers up to `grace`; those still running then are dropped with the
/// connection, which hands their messages back to the broker.
async fn drain(tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "shutdown grace over; handing back what is in flight"
        );
    }
}
