//! `/metrics` as ops rely on it (DESIGN §7): scraped from a running worker after real traffic,
//! every family has `# HELP`, durations are histograms with buckets, the worker's gauges are
//! there, and every metric the dashboard (`deploy/grafana/hookrelay.json`) and the alerts
//! (`deploy/prometheus/alerts.yaml`) query is one that hookrelay actually exports.

use crate::api_harness::{api_settings, ADMIN};
use crate::helpers::*;
use hookrelay::broker::publisher::{Headers, Outgoing, PublishError, Publisher};
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(20);

/// Queue metrics come from RabbitMQ's rabbitmq_prometheus plugin (/metrics/per-object), not
/// from hookrelay: these, and only these, may appear in the queries without being scraped here.
const RABBITMQ_METRICS: &[&str] = &[
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
];

/// One scrape: `# HELP` and `# TYPE` per family, and every sample line by series name.
#[derive(Debug, Default)]
struct Scrape {
    help: BTreeSet<String>,
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, Vec<(String, f64)>>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                scrape
                    .help
                    .insert(rest.split(' ').next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap().to_owned();
                scrape.types.insert(name, parts.next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let value = value.parse().expect("a sample value is a number");
                scrape
                    .samples
                    .entry(name.to_owned())
                    .or_default()
                    .push((labels.to_owned(), value));
            }
        }
        scrape
    }

    /// The value of `name` whose labels contain every one of `labels` (`key="value"` each).
    fn value(&self, name: &str, labels: &[&str]) -> Option<f64> {
        self.samples
            .get(name)?
            .iter()
            .find(|(have, _)| labels.iter().all(|l| have.contains(l)))
            .map(|(_, v)| *v)
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    Scrape::parse(&response.text().await.unwrap())
}

/// The metric names a PromQL expression reads: identifiers that are not functions (followed by
/// `(`), keywords, label names (inside `{}`, `by ()` and friends), strings or durations.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations may have `by (...)` between the name and the parenthesis: never metrics.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket past its closing one (strings inside respected).
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' => {
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' {
            // A string literal outside braces (label_replace's arguments): up to its end quote.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let is_call = next < chars.len() && chars[next] == '(';
            if GROUPING.contains(&word.as_str()) {
                if is_call {
                    i = skip_group(next, '(', ')');
                }
            } else if !is_call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number (or a duration such as 5m outside brackets, e.g. in offset).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string("deploy/grafana/hookrelay.json").unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard parses");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

/// Every `expr:` of the alert rules, one-line or `|` block.
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string("deploy/prometheus/alerts.yaml").unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some((indent, value)) = line.split_once("expr:") else {
            continue;
        };
        if !indent.trim().is_empty() {
            continue;
        }
        if value.trim() != "|" {
            exprs.push(value.trim().to_owned());
            continue;
        }
        let mut block = String::new();
        while i < lines.len() && (lines[i].len() - lines[i].trim_start().len()) > indent.len() {
            block.push_str(lines[i].trim());
            block.push('\n');
            i += 1;
        }
        exprs.push(block);
    }
    exprs
}

#[test]
fn the_promql_reader_finds_metric_names_and_nothing_else() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(hookrelay_delivery_lag_seconds_bucket{queue=~"a|b"}[$__rate_interval])))
           / on (instance) group_left(version) clamp_min(sum(rabbitmq_queue_consumers), 1) > 0.5 and up offset 5m"#,
    );
    let expected: BTreeSet<String> = [
        "hookrelay_delivery_lag_seconds_bucket",
        "rabbitmq_queue_consumers",
        "up",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn metrics_have_help_real_histograms_and_every_name_the_dashboard_and_alerts_use() {
    // Arrange: one delivery that succeeds, one that exhausts its single retry, a publish the
    // broker returns, and an admin API request.
    let app = spawn_app_with("200ms", &[]).await;
    app.add_webhook("m1", "/ok", &["payment.card.success"], Format::Standard)
        .await;
    app.add_webhook("m2", "/fail", &["payment.card.success"], Format::Standard)
        .await;
    app.receiver.behave("/fail", Behaviour::Status(500));
    app.publish(EventType::PaymentCardSuccess, "m1", r#"{"n":1}"#)
        .await;
    app.publish(EventType::PaymentCardSuccess, "m2", r#"{"n":2}"#)
        .await;
    app.receiver.wait_for("/ok", 1, WITHIN).await;
    app.first_dead_delivery(WITHIN).await;

    let amqp = hookrelay::broker::connect(AMQP_URL, "hookrelay metrics test")
        .await
        .unwrap();
    let publisher = Publisher::new(&amqp, Duration::from_secs(5)).await.unwrap();
    let nowhere = format!("{}.nowhere", app.prefix);
    let returned = publisher
        .publish(Outgoing {
            exchange: "",
            routing_key: &nowhere,
            body: b"{}",
            message_id: None,
            content_type: "application/json",
            headers: Headers::default(),
            expiration_ms: None,
        })
        .await;
    assert!(
        matches!(returned, Err(PublishError::Returned(_))),
        "{returned:?}"
    );

    let api_shutdown = CancellationToken::new();
    let api = hookrelay::api::start(api_settings(&app.prefix, &[]), api_shutdown.clone())
        .await
        .expect("the API starts");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let listed = http
        .get(format!("http://{}/v1/event-types", api.addr))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    // Act
    let worker = scrape(app.ops_addr).await;
    let api_metrics = scrape(api.ops_addr).await;

    // Assert: every family is described.
    let undescribed: Vec<&String> = worker
        .types
        .keys()
        .filter(|f| !worker.help.contains(*f))
        .collect();
    assert!(
        undescribed.is_empty(),
        "families without # HELP: {undescribed:?}"
    );

    // Durations are histograms with buckets, never summaries.
    for family in [
        "hookrelay_attempt_duration_seconds",
        "hookrelay_delivery_lag_seconds",
    ] {
        assert_eq!(
            worker.types.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
        let buckets = &worker.samples[&format!("{family}_bucket")];
        assert!(buckets.len() > 5, "{family}: {buckets:?}");
        assert!(buckets.iter().any(|(l, _)| l.contains(r#"le="+Inf""#)));
    }
    assert!(worker.types.values().all(|t| t != "summary"));
    // Three attempts (one delivered, two failed), one of them delivered: one lag sample, of
    // a second or so (the event was created just before).
    assert!(
        worker
            .value("hookrelay_attempt_duration_seconds_count", &[])
            .unwrap()
            >= 3.0
    );
    assert!(
        worker
            .value("hookrelay_delivery_lag_seconds_count", &[])
            .unwrap()
            >= 1.0
    );
    assert!(
        worker
            .value("hookrelay_delivery_lag_seconds_bucket", &[r#"le="60""#])
            .unwrap()
            >= 1.0
    );

    // The gauges and counters DESIGN §7 names, with the values this traffic implies.
    assert_eq!(worker.value("hookrelay_broker_connected", &[]), Some(1.0));
    assert_eq!(worker.value("hookrelay_redis_ok", &[]), Some(1.0));
    assert!(worker
        .value("hookrelay_in_flight_deliveries", &[])
        .is_some());
    let version = format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"));
    assert_eq!(worker.value("hookrelay_build_info", &[&version]), Some(1.0));
    assert!(worker.value("hookrelay_events_total", &[]).unwrap() >= 2.0);
    assert!(
        worker
            .value("hookrelay_attempts_total", &[r#"result="delivered""#])
            .unwrap()
            >= 1.0
    );
    assert!(
        worker
            .value(
                "hookrelay_dead_letters_total",
                &[r#"queue="deliveries""#, r#"reason="exhausted""#]
            )
            .unwrap()
            >= 1.0
    );
    assert!(
        worker
            .value("hookrelay_retries_total", &[r#"step="200ms""#])
            .unwrap()
            >= 1.0
    );
    let target = format!(r#"target="{nowhere}""#);
    assert_eq!(
        worker.value(
            "hookrelay_publish_failures_total",
            &[&target, r#"reason="returned""#]
        ),
        Some(1.0)
    );
    assert!(worker.value("process_resident_memory_bytes", &[]).unwrap() > 0.0);

    // The API's own ops port: its request metrics, labelled by route template.
    assert!(
        api_metrics
            .value(
                "hookrelay_api_requests_total",
                &[r#"route="/v1/event-types""#, r#"status="200""#]
            )
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        api_metrics
            .types
            .get("hookrelay_api_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );

    // Every metric the dashboard and the alerts query is exported (or is RabbitMQ's).
    let exported: BTreeSet<&str> = worker
        .samples
        .keys()
        .chain(api_metrics.samples.keys())
        .map(String::as_str)
        .collect();
    let mut queried = 0;
    for (source, exprs) in [
        ("deploy/grafana/hookrelay.json", dashboard_exprs()),
        ("deploy/prometheus/alerts.yaml", alert_exprs()),
    ] {
        assert!(
            exprs.len() >= 5,
            "{source}: only {} queries found",
            exprs.len()
        );
        for expr in &exprs {
            let names = promql_metric_names(expr);
            assert!(!names.is_empty(), "{source}: no metric in {expr}");
            for name in names {
                queried += 1;
                assert!(
                    exported.contains(name.as_str()) || RABBITMQ_METRICS.contains(&name.as_str()),
                    "{source} queries {name}, which neither hookrelay nor rabbitmq_prometheus exports (in {expr})"
                );
            }
        }
    }
    assert!(queried > 30);

    api_shutdown.cancel();
    api.wait().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn a_fresh_worker_exports_every_labelled_counter_at_zero_before_anything_happens() {
    // Arrange: a worker that has consumed nothing.
    let app = spawn_app_with("200ms", &[]).await;

    // Act
    let worker = scrape(app.ops_addr).await;

    // Assert: the series the alerts and the dashboard query exist at 0, not "No data".
    let zero = |name: &str, labels: &[&str]| {
        assert_eq!(worker.value(name, labels), Some(0.0), "{name}{labels:?}");
    };
    for queue in ["deliveries", "dlq.events", "dlq.deliveries", "retry.200ms"] {
        let target = format!(r#"target="{}.{queue}""#, app.prefix);
        for reason in ["nacked", "returned", "timeout", "connection"] {
            let reason = format!(r#"reason="{reason}""#);
            zero("hookrelay_publish_failures_total", &[&target, &reason]);
        }
    }
    let poison = [
        "too_large",
        "invalid_json",
        "missing_field",
        "invalid_field",
        "unknown_type",
        "routing_key_mismatch",
        "too_deep",
    ];
    for reason in poison {
        let reason = format!(r#"reason="{reason}""#);
        zero(
            "hookrelay_dead_letters_total",
            &[r#"queue="events""#, &reason],
        );
    }
    for reason in hookrelay::messages::dead::DeadReason::ALL {
        let reason = format!(r#"reason="{}""#, reason.as_str());
        zero(
            "hookrelay_dead_letters_total",
            &[r#"queue="deliveries""#, &reason],
        );
    }
    for result in ["delivered", "failed", "gone", "refused", "body_too_large"] {
        let result = format!(r#"result="{result}""#);
        zero("hookrelay_attempts_total", &[&result]);
    }
    zero("hookrelay_retries_total", &[r#"step="200ms""#]);

    app.cleanup().await;
}
