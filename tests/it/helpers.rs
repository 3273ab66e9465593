//! `spawn_app()` and a scriptable receiver: each test gets its own broker and Redis prefix
//! (`hrt-…`), a worker running in-process against the real RabbitMQ and Redis, and cleans up its
//! queues and keys. Leftovers of killed runs are swept by `scripts/sweep.sh`.
//!
//! The harness in parts: this file (settings, `spawn_app`, the receiver, queue and header
//! helpers, for every test); `api` (an API server and its client); `dead_letters` (dead letters
//! written straight into a test's queues, and queues the broker dead-letters from by itself);
//! `raw_amqp` (a publisher that puts any bytes in a message's properties).

pub mod api;
pub mod dead_letters;
pub mod raw_amqp;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use hookrelay::broker::publisher::{EventPublisher, NewEvent, Publisher};
use hookrelay::broker::topology::Topology;
use hookrelay::config::Settings;
use hookrelay::event::{AccountId, EventType};
use hookrelay::subscription::store::{NewWebhook, Store};
use hookrelay::subscription::{EventFilter, Format, Webhook, WebhookUrl};
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// A fresh prefix; `hrt-` marks it as a test's for the sweeper.
pub fn test_prefix() -> String {
    format!("hrt-{}", hookrelay::random_token(10).to_lowercase())
}

/// Settings for a test: its own prefix, loopback http targets allowed, `schedule` as the
/// retry schedule, plus any extra `HOOKRELAY__…` overrides.
pub fn settings(prefix: &str, schedule: &str, extra: &[(&str, &str)]) -> Settings {
    let mut env: Vec<(String, String)> = vec![
        ("HOOKRELAY__AMQP__URL".into(), AMQP_URL.into()),
        ("HOOKRELAY__REDIS__URL".into(), REDIS_URL.into()),
        ("HOOKRELAY__AMQP__PREFIX".into(), prefix.into()),
        ("HOOKRELAY__REDIS__PREFIX".into(), prefix.into()),
        ("HOOKRELAY__DELIVERY__ALLOW_HTTP".into(), "true".into()),
        (
            "HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS".into(),
            "true".into(),
        ),
        (
            "HOOKRELAY__DELIVERY__RETRY_SCHEDULE".into(),
            schedule.into(),
        ),
        ("HOOKRELAY__DELIVERY__TIMEOUT".into(), "3s".into()),
        ("HOOKRELAY__OPS__LISTEN".into(), "127.0.0.1:0".into()),
        ("HOOKRELAY__WORKER__SHUTDOWN_GRACE".into(), "2s".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_with_env(None, env).expect("test settings are valid")
}

/// What the receiver answers on a path.
#[derive(Clone, Debug)]
pub enum Behaviour {
    Status(u16),
    /// Answers `status` to the first `times` requests, then 200.
    FailTimes {
        times: usize,
        status: u16,
    },
    /// Never answers (until the client gives up).
    Hang,
    /// Answers 200 after this long.
    Delay(Duration),
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
}

#[derive(Default)]
struct ReceiverState {
    behaviours: Mutex<HashMap<String, Behaviour>>,
    hits: Mutex<Vec<Hit>>,
}

/// A local HTTP receiver standing in for merchants: records every request and answers as told.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start(shutdown: CancellationToken) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .unwrap();
        });
        Receiver { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn behave(&self, path: &str, behaviour: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .insert(path.to_owned(), behaviour);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    pub fn hits_on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    /// Waits until `path` got `n` requests; panics after `within`.
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let hits = self.hits_on(path);
            if hits.len() >= n {
                return hits;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} got {} of {n} requests within {within:?}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    let earlier = {
        let mut hits = state.hits.lock().unwrap();
        let earlier = hits.iter().filter(|h| h.path == path).count();
        hits.push(Hit {
            path: path.clone(),
            headers,
            body,
            at: std::time::Instant::now(),
        });
        earlier
    };
    let behaviour = state.behaviours.lock().unwrap().get(&path).cloned();
    let status = match behaviour {
        None => 200,
        Some(Behaviour::Status(s)) => s,
        Some(Behaviour::FailTimes { times, status }) if earlier < times => status,
        Some(Behaviour::FailTimes { .. }) => 200,
        Some(Behaviour::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            200
        }
        Some(Behaviour::Delay(d)) => {
            tokio::time::sleep(d).await;
            200
        }
    };
    StatusCode::from_u16(status).unwrap()
}

/// A worker, its receiver, a store and a publisher, all on one test's prefix.
pub struct TestApp {
    pub prefix: String,
    pub settings: Settings,
    pub store: Store,
    pub publisher: EventPublisher,
    pub receiver: Receiver,
    pub ops_addr: SocketAddr,
    amqp: lapin::Connection,
    shutdown: CancellationToken,
    receiver_shutdown: CancellationToken,
    worker: Option<hookrelay::worker::RunningWorker>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("200ms,200ms", &[]).await
}

pub async fn spawn_app_with(schedule: &str, extra: &[(&str, &str)]) -> TestApp {
    let prefix = test_prefix();
    let settings = settings(&prefix, schedule, extra);
    // Logs show up in the output of a failing test (the runner captures them otherwise).
    hookrelay::telemetry::init(settings.log.format);
    let shutdown = CancellationToken::new();
    // The receiver outlives a worker stopped mid-test.
    let receiver_shutdown = CancellationToken::new();
    let store = Store::connect(REDIS_URL, &prefix, Duration::from_secs(2))
        .await
        .unwrap();
    // Every test's prefix is a store of its own: workers refuse one without a marker.
    store.init_marker().await.expect("store initialised");
    let worker = hookrelay::worker::start(settings.clone(), shutdown.clone())
        .await
        .expect("worker starts");
    let amqp = hookrelay::broker::connect(AMQP_URL, "hookrelay test")
        .await
        .unwrap();
    let publisher = EventPublisher::new(
        Publisher::new(&amqp, Duration::from_secs(5)).await.unwrap(),
        &prefix,
    );
    TestApp {
        prefix,
        store,
        publisher,
        receiver: Receiver::start(receiver_shutdown.clone()).await,
        receiver_shutdown,
        ops_addr: worker.ops_addr,
        amqp,
        shutdown,
        worker: Some(worker),
        settings,
    }
}

impl TestApp {
    pub fn topology(&self) -> Topology {
        Topology::from_settings(&self.settings)
    }

    /// Adds a webhook to `account` pointing at the receiver's `path`.
    pub async fn add_webhook(
        &self,
        account: &str,
        path: &str,
        events: &[&str],
        format: Format,
    ) -> Webhook {
        self.store
            .create(
                &account.parse().unwrap(),
                NewWebhook {
                    url: WebhookUrl::parse(&self.receiver.url(path), true).unwrap(),
                    events: EventFilter::parse(events).unwrap(),
                    format,
                    description: String::new(),
                    rate_limit: None,
                },
            )
            .await
            .expect("webhook created")
    }

    /// Publishes an event with `data` (a JSON object text) and returns its id.
    pub async fn publish(&self, event_type: EventType, account: &str, data: &str) -> String {
        let event = self
            .publisher
            .publish(NewEvent {
                id: None,
                event_type,
                account_id: AccountId::parse(account).unwrap(),
                created_at: None,
                data: serde_json::value::RawValue::from_string(data.to_owned()).unwrap(),
            })
            .await
            .expect("publish confirmed");
        event.id.to_string()
    }

    /// A channel on the test's own connection.
    pub async fn amqp_channel(&self) -> lapin::Channel {
        self.amqp.create_channel().await.unwrap()
    }

    /// Publishes raw bytes to the events exchange with `routing_key` (poison tests).
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let channel = self.amqp.create_channel().await.unwrap();
        channel
            .basic_publish(
                format!("{}.events", self.prefix).into(),
                routing_key.into(),
                Default::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "ok".into()).await;
    }

    /// Takes every message now in `queue` (acking them: the queue is this test's own).
    pub async fn drain_queue(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let channel = self.amqp.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(msg) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push(msg.delivery);
        }
        let _ = channel.close(200, "ok".into()).await;
        out
    }

    /// Waits until `queue` holds `n` messages in all (drained as they come).
    pub async fn wait_for_queue(
        &self,
        queue: &str,
        n: usize,
        within: Duration,
    ) -> Vec<lapin::message::Delivery> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {} of {n} messages after {within:?}",
                got.len()
            );
            got.extend(self.drain_queue(queue).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        got
    }

    /// Waits for the first message in this test's deliveries DLQ.
    pub async fn first_dead_delivery(&self, within: Duration) -> lapin::message::Delivery {
        let queue = self.topology().dlq_deliveries();
        self.wait_for_queue(&queue, 1, within).await.remove(0)
    }

    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let channel = self.amqp.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "ok".into()).await;
        q.message_count()
    }

    /// Stops the worker as SIGTERM does and waits until it has stopped.
    pub async fn stop_worker(&mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.wait().await.expect("worker stopped cleanly");
        }
    }

    /// Starts a fresh worker on the same prefix (after `stop_worker`).
    pub async fn start_worker(&mut self) {
        self.shutdown = CancellationToken::new();
        let worker = hookrelay::worker::start(self.settings.clone(), self.shutdown.clone())
            .await
            .expect("worker starts");
        self.ops_addr = worker.ops_addr;
        self.worker = Some(worker);
    }

    /// Force-closes this test's worker connections through the management API.
    pub async fn close_worker_connections(&self) -> usize {
        let api = "http://127.0.0.1:15672/api/connections";
        let client = reqwest::Client::new();
        let mine = format!("hookrelay worker {} ", self.prefix);
        // The management API lists a connection once its stats were emitted (every few s).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let list = loop {
            let text = client
                .get(api)
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .expect("the management API answers (rabbitmq_management enabled)")
                .text()
                .await
                .unwrap();
            let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
            let found = list
                .iter()
                .filter(|c| {
                    c["client_properties"]["connection_name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&mine))
                })
                .count();
            if found >= 2 || tokio::time::Instant::now() > deadline {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let mut closed = 0;
        for c in &list {
            let name = c["client_properties"]["connection_name"]
                .as_str()
                .unwrap_or("");
            if name.starts_with(&mine) {
                let id = c["name"].as_str().unwrap();
                let url = format!(
                    "{api}/{}",
                    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
                );
                client
                    .delete(url)
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await
                    .unwrap();
                closed += 1;
            }
        }
        closed
    }

    /// Stops the worker and deletes this test's queues, exchange and keys.
    pub async fn cleanup(mut self) {
        self.receiver_shutdown.cancel();
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.wait().await.expect("worker stopped cleanly");
        }
        let channel = self.amqp.create_channel().await.unwrap();
        for q in self.topology().all_queues() {
            let _ = channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in self.topology().all_exchanges() {
            let _ = channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await;
        }
        self.store.purge_prefix().await.unwrap();
    }
}

pub fn header_text(delivery: &lapin::message::Delivery, key: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

pub fn header_int(delivery: &lapin::message::Delivery, key: &str) -> Option<i64> {
    match delivery.properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// Writes `n` synthetic dead deliveries straight into `prefix`'s deliveries DLQ, as the worker
/// writes them (a `DeadDelivery` body, its headers, a `dl_…` message id), fast: published in
/// order on one channel with up to 2,000 confirms in flight, each awaited. `make(i)` gives the
/// i-th. Returns the ids in queue order. The DLQ must be declared.
pub async fn write_dead_deliveries(
    prefix: &str,
    n: usize,
    make: impl Fn(usize) -> hookrelay::messages::DeadDelivery,
) -> Vec<String> {
    let conn = hookrelay::broker::connect(AMQP_URL, "hookrelay test writer")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let queue = format!("{prefix}.dlq.deliveries");
    let mut ids = Vec::with_capacity(n);
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let dead = make(i);
        let id = hookrelay::messages::dead::dead_letter_id();
        let headers = dead.headers().into_table();
        let props = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(id.as_str().into())
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(headers);
        // Published one after the other, so queue order is `ids` order; only the confirms
        // are awaited concurrently.
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &serde_json::to_vec(&dead).unwrap(),
                props,
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        ids.push(id);
        while pending.len() >= 2_000 {
            let c = pending.pop_front().unwrap().await.unwrap();
            let acked = c.is_ack();
            assert!(
                acked && c.take_message().is_none(),
                "a dead letter was not confirmed"
            );
        }
    }
    for confirm in pending {
        let c = confirm.await.unwrap();
        let acked = c.is_ack();
        assert!(
            acked && c.take_message().is_none(),
            "a dead letter was not confirmed"
        );
    }
    let _ = conn.close(200, "written".into()).await;
    ids
}

/// A small dead delivery of an event of `account` to `webhook`, as the worker writes one.
pub fn small_dead_delivery(
    account: &str,
    webhook: &hookrelay::subscription::WebhookId,
    reason: hookrelay::messages::DeadReason,
) -> hookrelay::messages::DeadDelivery {
    let event = NewEvent {
        id: None,
        event_type: EventType::PaymentCardSuccess,
        account_id: AccountId::parse(account).unwrap(),
        created_at: None,
        data: serde_json::value::RawValue::from_string(r#"{"amount":"1.00"}"#.into()).unwrap(),
    }
    .into_event();
    hookrelay::messages::DeadDelivery::new(
        reason,
        hookrelay::messages::dead::Dying {
            event: &event,
            envelope: None,
            webhook_id: webhook.as_str(),
            url: "https://example.com/hook",
            attempts: 10,
            history: &hookrelay::messages::History::new(chrono::Utc::now()),
        },
    )
}

/// Runs the `hookrelay` binary on `prefix` with `args` and extra environment, as users script it.
pub fn hookrelay(prefix: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(args)
        .env("HOOKRELAY__AMQP__URL", AMQP_URL)
        .env("HOOKRELAY__REDIS__URL", REDIS_URL)
        .env("HOOKRELAY__AMQP__PREFIX", prefix)
        .env("HOOKRELAY__REDIS__PREFIX", prefix)
        .envs(env.iter().copied())
        .output()
        .expect("hookrelay runs")
}
