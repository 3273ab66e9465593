//! W3C trace context from publish to the merchant's request (DESIGN §7 "Trace context"): with
//! `[telemetry] otlp_endpoint` set, a worker's spans join the trace an event was published in
//! and are exported over OTLP/HTTP to a receiver inside the test; without it the context is
//! passed on unchanged, through retries and dead-letter replays; `delivery.send_traceparent =
//! false` keeps it from merchants.

use crate::helpers::{spawn_app, spawn_app_with, Behaviour, TestApp, AMQP_URL, REDIS_URL};
use axum::body::Bytes;
use axum::extract::State;
use hookrelay::broker::publisher::NewEvent;
use hookrelay::event::{AccountId, EventType};
use hookrelay::subscription::Format;
use hookrelay::telemetry::context::{TraceContext, TraceParent};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One exported span, as the collector got it.
#[derive(Clone, Debug)]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    start: u64,
    duration: Duration,
    /// 0 unset, 1 OK, 2 ERROR (OTLP's status codes).
    status: i32,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP traces receiver on a free port, decoding protobuf as a collector does.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Collector {
    async fn start() -> (Collector, String) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive_traces))
            .with_state(collector.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (collector, url)
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Exported> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

async fn receive_traces(State(collector): State<Collector>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut spans = collector.spans.lock().unwrap();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Exported {
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_id: hex::encode(span.parent_span_id),
                    start: span.start_time_unix_nano,
                    duration: Duration::from_nanos(
                        span.end_time_unix_nano
                            .saturating_sub(span.start_time_unix_nano),
                    ),
                    status: span.status.map(|s| s.code).unwrap_or(0),
                    attributes: span
                        .attributes
                        .into_iter()
                        .map(|kv| (kv.key, text_of(kv.value.and_then(|v| v.value))))
                        .collect(),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse: full success.
    Vec::new()
}

fn text_of(value: Option<Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s,
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The trace as a tree, children in start order: name, duration, status and the attributes
/// that tell spans apart. Walked with an explicit stack.
fn tree(spans: &[Exported], root_parent: &str) -> String {
    let children_of = |parent: &str| {
        let mut children: Vec<&Exported> = spans.iter().filter(|s| s.parent_id == parent).collect();
        // Last started first on the stack, so that the first started is printed first.
        children.sort_by_key(|s| std::cmp::Reverse(s.start));
        children
    };
    let mut out = String::new();
    let mut stack: Vec<(&Exported, usize)> = children_of(root_parent)
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    while let Some((span, depth)) = stack.pop() {
        {
            let status = ["unset", "OK", "ERROR"][span.status.clamp(0, 2) as usize];
            let detail = [
                "messaging.destination.name",
                "server.address",
                "http.response.status_code",
                "hookrelay.publish",
                "attempt",
            ]
            .iter()
            .filter_map(|k| span.attributes.get(*k).map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(" ");
            out.push_str(&format!(
                "{}{} {:.1?} {status} {detail}\n",
                "  ".repeat(depth),
                span.name,
                span.duration
            ));
            stack.extend(
                children_of(&span.span_id)
                    .into_iter()
                    .map(|s| (s, depth + 1)),
            );
        }
    }
    out
}

/// A context as an upstream service would publish it in: its own trace and span.
fn upstream_context() -> TraceContext {
    let mut context = TraceContext::new(TraceParent::new_root(true));
    context.state = Some("upstream=1".into());
    context
}

async fn publish_in(app: &TestApp, account: &str, trace: &TraceContext) {
    app.publisher
        .publish_in_trace(
            NewEvent {
                id: None,
                event_type: EventType::PaymentCardSuccess,
                account_id: AccountId::parse(account).unwrap(),
                created_at: None,
                data: serde_json::value::RawValue::from_string(r#"{"amount":"1.00"}"#.into())
                    .unwrap(),
            },
            Some(trace.clone()),
        )
        .await
        .expect("publish confirmed");
}

fn traceparent_of(hit: &crate::helpers::Hit) -> Option<TraceParent> {
    let value = hit.headers.get("traceparent")?;
    TraceParent::parse(value.as_bytes())
}

/// The one span of `spans` named `name` whose attribute `key` is `value`.
fn span<'a>(spans: &'a [Exported], name: &str, key: &str, value: &str) -> &'a Exported {
    let found: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.name == name && s.attributes.get(key).map(String::as_str) == Some(value))
        .collect();
    assert_eq!(found.len(), 1, "{name} with {key}={value} in {spans:#?}");
    found[0]
}

#[tokio::test]
async fn a_published_trace_continues_through_the_attempts_the_retry_and_into_the_merchants_request()
{
    // Arrange: a worker process exporting to the collector, a webhook answering 500 then 200.
    let (collector, endpoint) = Collector::start().await;
    let mut app = spawn_app().await;
    app.stop_worker().await;
    app.add_webhook("traced", "/traced", &["*"], Format::Standard)
        .await;
    app.receiver.behave(
        "/traced",
        Behaviour::FailTimes {
            times: 1,
            status: 500,
        },
    );
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("worker")
        .env("HOOKRELAY__AMQP__URL", AMQP_URL)
        .env("HOOKRELAY__REDIS__URL", REDIS_URL)
        .env("HOOKRELAY__AMQP__PREFIX", &app.prefix)
        .env("HOOKRELAY__REDIS__PREFIX", &app.prefix)
        .env("HOOKRELAY__DELIVERY__RETRY_SCHEDULE", "200ms,200ms")
        .env("HOOKRELAY__DELIVERY__ALLOW_HTTP", "true")
        .env("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
        .env("HOOKRELAY__OPS__LISTEN", "127.0.0.1:0")
        .env("HOOKRELAY__TELEMETRY__OTLP_ENDPOINT", &endpoint)
        .env("HOOKRELAY__TELEMETRY__SAMPLING_RATIO", "0")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let upstream = upstream_context();
    let trace_id = upstream.parent.trace_id_hex();

    // Act: publish in the upstream's trace, wait for both requests, stop the worker (SIGTERM
    // flushes the exporter).
    publish_in(&app, "traced", &upstream).await;
    let hits = app
        .receiver
        .wait_for("/traced", 2, Duration::from_secs(30))
        .await;
    std::process::Command::new("kill")
        .args(["-TERM", &worker.id().unwrap().to_string()])
        .status()
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}");
    let spans = collector.of_trace(&trace_id);
    println!(
        "trace {trace_id}:\n{}",
        tree(&spans, &upstream.parent.parent_id_hex())
    );

    // Assert: every span is in the upstream's trace (sampled by its flag although the worker's
    // own ratio is 0), linked as consume → lookup, attempt, publish → consume → attempt.
    let first = span(&spans, "consume", "attempt", "1");
    assert_eq!(first.parent_id, upstream.parent.parent_id_hex());
    let lookups: Vec<_> = spans.iter().filter(|s| s.name == "lookup").collect();
    assert_eq!(lookups.len(), 2, "{spans:#?}");
    assert!(lookups.iter().any(|l| l.parent_id == first.span_id));
    let failed = span(&spans, "attempt", "http.response.status_code", "500");
    assert_eq!(failed.parent_id, first.span_id);
    assert_eq!(failed.status, 2, "a 500 is an error");
    assert_eq!(failed.attributes["server.address"], "127.0.0.1");
    assert_eq!(failed.attributes["attempt"], "1");
    let retry = span(&spans, "publish", "hookrelay.publish", "retry");
    assert_eq!(retry.parent_id, first.span_id);
    assert!(retry.attributes["messaging.destination.name"].contains(".retry."));
    let second = span(&spans, "consume", "attempt", "2");
    assert_eq!(
        second.parent_id, retry.span_id,
        "the retry carried the trace"
    );
    assert!(lookups.iter().any(|l| l.parent_id == second.span_id));
    let delivered = span(&spans, "attempt", "http.response.status_code", "200");
    assert_eq!(delivered.parent_id, second.span_id);
    assert_eq!(delivered.status, 1);

    // The merchant saw each attempt's own span as its parent, in the same trace.
    let seen: Vec<TraceParent> = hits.iter().map(|h| traceparent_of(h).unwrap()).collect();
    assert!(seen.iter().all(|t| t.trace_id_hex() == trace_id));
    assert_eq!(seen[0].parent_id_hex(), failed.span_id);
    assert_eq!(seen[1].parent_id_hex(), delivered.span_id);
    assert!(seen.iter().all(|t| t.sampled()));
    assert!(hits
        .iter()
        .all(|h| h.headers.get("tracestate").unwrap() == "upstream=1"));
    app.cleanup().await;
}

#[tokio::test]
async fn without_an_exporter_the_published_context_reaches_the_merchant_unchanged_on_every_attempt()
{
    let app = spawn_app().await;
    app.add_webhook("plain", "/plain", &["*"], Format::Standard)
        .await;
    app.receiver.behave(
        "/plain",
        Behaviour::FailTimes {
            times: 1,
            status: 500,
        },
    );
    let upstream = upstream_context();

    publish_in(&app, "plain", &upstream).await;
    let hits = app
        .receiver
        .wait_for("/plain", 2, Duration::from_secs(30))
        .await;

    // No span is recorded, so none can be the parent: the publisher's span stays it, through
    // the retry's trip over the delay queue.
    for hit in &hits {
        assert_eq!(traceparent_of(hit), Some(upstream.parent));
        assert_eq!(hit.headers["tracestate"], "upstream=1");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn an_event_published_outside_any_trace_starts_one_that_the_merchant_sees() {
    let app = spawn_app().await;
    app.add_webhook("fresh", "/fresh", &["*"], Format::Standard)
        .await;

    app.publish(EventType::PaymentCardSuccess, "fresh", "{}")
        .await;
    let hits = app
        .receiver
        .wait_for("/fresh", 1, Duration::from_secs(30))
        .await;

    let parent = traceparent_of(&hits[0]).expect("a traceparent the publisher started");
    assert!(parent.sampled(), "the library's default ratio is 1.0");
    app.cleanup().await;
}

#[tokio::test]
async fn with_send_traceparent_false_the_merchant_gets_no_trace_header() {
    let app = spawn_app_with(
        "200ms",
        &[("HOOKRELAY__DELIVERY__SEND_TRACEPARENT", "false")],
    )
    .await;
    app.add_webhook("quiet", "/quiet", &["*"], Format::Standard)
        .await;

    publish_in(&app, "quiet", &upstream_context()).await;
    let hits = app
        .receiver
        .wait_for("/quiet", 1, Duration::from_secs(30))
        .await;

    assert!(hits[0].headers.get("traceparent").is_none());
    assert!(hits[0].headers.get("tracestate").is_none());
    app.cleanup().await;
}

#[tokio::test]
async fn a_dead_letter_keeps_the_trace_and_its_replay_carries_it_to_the_merchant() {
    use crate::helpers::dead_letters::{dlq, wait_for_depth};
    use hookrelay::dlq::replay::ReplayOptions;
    use hookrelay::dlq::{DlqQueue, Filter, Selection};
    let app = spawn_app_with("200ms", &[]).await;
    app.receiver.behave(
        "/dying",
        Behaviour::FailTimes {
            times: 2,
            status: 500,
        },
    );
    app.add_webhook("dying", "/dying", &["*"], Format::Standard)
        .await;
    let upstream = upstream_context();
    publish_in(&app, "dying", &upstream).await;
    wait_for_depth(&app, &app.topology().dlq_deliveries(), 1).await;
    let dlq = dlq(&app).await;
    let letter = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        letter.trace.as_ref().map(|t| t.parent),
        Some(upstream.parent)
    );
    let listed = serde_json::to_value(&letter).unwrap();
    assert_eq!(listed["traceparent"], upstream.parent.to_string());

    let selection = Selection {
        ids: vec![letter.id.clone()],
        ..Default::default()
    };
    let report = dlq
        .replay(&selection, ReplayOptions::default(), &app.store)
        .await
        .unwrap();

    assert_eq!(report.count("replayed"), 1);
    let hits = app
        .receiver
        .wait_for("/dying", 3, Duration::from_secs(30))
        .await;
    assert_eq!(traceparent_of(&hits[2]), Some(upstream.parent));
    assert_eq!(hits[2].headers["tracestate"], "upstream=1");
    dlq.close().await;
    app.cleanup().await;
}
