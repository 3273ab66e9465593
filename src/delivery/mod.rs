//! Making one delivery attempt: the shared HTTP client (one connection pool, keep-alive, no
//! proxy, no redirects, the SSRF [`guard`]), the wire [`format`]s and [`signing`], and the pure
//! retry [`policy`] that judges the result.

pub mod format;
pub mod guard;
pub mod policy;
pub mod signing;

use crate::config::DeliverySettings;
use crate::subscription::attempts::compact::{Entry, Fields};
use crate::subscription::attempts::{AttemptRecord, RESEND_MAX_BYTES};
use crate::subscription::{Format, Webhook};
use crate::telemetry::context::TraceContext;
use crate::telemetry::otlp;
use chrono::Utc;
use format::{BodyTooLarge, PreparedEvent};
use policy::Verdict;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How much of a response body is kept for the attempt log and the dead letter.
pub const EXCERPT_BYTES: usize = 1024;

pub const USER_AGENT_VALUE: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));

/// What happened on one attempt.
#[derive(Clone, Debug)]
pub struct AttemptReport {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub verdict: Verdict,
    pub duration: Duration,
    pub response_excerpt: String,
}

impl AttemptReport {
    /// The attempt log's record of attempt number `attempt` of `event`; the envelope is kept
    /// for resending when it is small enough.
    pub fn to_record(&self, attempt: u32, event: &PreparedEvent) -> AttemptRecord {
        let envelope = event.envelope();
        AttemptRecord {
            at: Utc::now(),
            attempt,
            event_id: event.event.id.to_string(),
            event_type: event.event.event_type.label().to_owned(),
            status: self.status,
            error: self.error.clone(),
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            response_excerpt: self.response_excerpt.clone(),
            event: (envelope.get().len() <= RESEND_MAX_BYTES).then(|| envelope.to_owned()),
        }
    }
}

impl AttemptReport {
    /// The same record as [`AttemptReport::to_record`], encoded for the attempt log straight
    /// from the report and the event, without copying them into an owned record first.
    pub fn log_entry(&self, attempt: u32, event: &PreparedEvent) -> Entry {
        let envelope = event.envelope();
        Fields {
            at: Utc::now(),
            attempt,
            event_id: event.event.id.as_str(),
            event_type: event.event.event_type.label(),
            status: self.status,
            error: self.error.as_deref(),
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            response_excerpt: &self.response_excerpt,
            event: (envelope.get().len() <= RESEND_MAX_BYTES).then_some(envelope),
        }
        .encode()
    }
}

/// Sends deliveries; cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    targets: guard::TargetPolicy,
    /// `delivery.max_in_flight`: bounds connections, and so memory, with large fan-outs.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// `delivery.send_traceparent`: requests carry the attempt's trace context.
    send_traceparent: bool,
}

impl Deliverer {
    pub fn new(settings: &DeliverySettings) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(USER_AGENT_VALUE);
        if !settings.allow_private_targets {
            builder = builder.dns_resolver(Arc::new(guard::PublicOnlyResolver));
        }
        Ok(Deliverer {
            client: builder.build()?,
            targets: guard::TargetPolicy::of(settings),
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight)),
            send_traceparent: settings.send_traceparent,
        })
    }

    /// Attempt number `number` of `event` to `webhook`, signed now with the webhook's current
    /// secrets, in the trace `parent` (the context its message arrived with, if any).
    pub async fn attempt(
        &self,
        webhook: &Webhook,
        event: &PreparedEvent,
        number: u32,
        parent: Option<&TraceContext>,
    ) -> AttemptReport {
        // Never closed, so acquiring cannot fail.
        let _slot = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        // After the slot: the span times the request, not the wait for one.
        let span = attempt_span(webhook, number);
        let trace = otlp::outgoing(&span, parent).filter(|_| self.send_traceparent);
        // Boxed: the request's state (kilobytes) exists only while it is made, not in each of
        // the many attempts that wait for a slot (fan-out x prefetch of them).
        let report = Box::pin(self.send(webhook, event, trace.as_ref()))
            .instrument(span.clone())
            .await;
        record_outcome(&span, &report);
        report
    }

    async fn send(
        &self,
        webhook: &Webhook,
        event: &PreparedEvent,
        trace: Option<&TraceContext>,
    ) -> AttemptReport {
        let started = Instant::now();
        // The scheme and IP-literal hosts; host names are checked by the guard's resolver.
        if let Err(refusal) = self.targets.admits(webhook.url.as_url()) {
            return refused(refusal, started);
        }
        let request = match self.request(webhook, event, trace) {
            Ok(request) => request,
            Err(e) => {
                return AttemptReport {
                    status: None,
                    error: Some(e.to_string()),
                    verdict: Verdict::BodyTooLarge,
                    duration: started.elapsed(),
                    response_excerpt: String::new(),
                }
            }
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| policy::parse_retry_after(v, Utc::now()));
                let excerpt = excerpt(response).await;
                AttemptReport {
                    status: Some(status),
                    error: None,
                    verdict: policy::classify(status, retry_after),
                    duration: started.elapsed(),
                    response_excerpt: excerpt,
                }
            }
            Err(e) if guard::is_refusal(&e) => refused(guard::TargetRefused::NotPublic, started),
            Err(e) => AttemptReport {
                status: None,
                error: Some(describe(&e)),
                verdict: Verdict::Retry { at_least: None },
                duration: started.elapsed(),
                response_excerpt: String::new(),
            },
        }
    }

    fn request(
        &self,
        webhook: &Webhook,
        event: &PreparedEvent,
        trace: Option<&TraceContext>,
    ) -> Result<reqwest::RequestBuilder, BodyTooLarge> {
        let now = Utc::now();
        let msg_id = event.event.id.as_str();
        let timestamp = now.timestamp();
        let mut headers = HeaderMap::with_capacity(7);
        if let Some(trace) = trace {
            trace.to_http(&mut headers);
        }
        let body = event.body(webhook.format)?;
        match webhook.format {
            Format::Standard => {
                let signature = signing::standard_header(
                    &webhook.signing_secrets(now),
                    msg_id,
                    timestamp,
                    &body,
                );
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert("webhook-signature", header_value(&signature));
            }
            Format::Inplayer => {
                let signature = signing::inplayer_signature(&webhook.secret, &body);
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                headers.insert("x-inplayer-signature", header_value(&signature));
            }
        }
        headers.insert("webhook-id", header_value(msg_id));
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        Ok(self
            .client
            .post(webhook.url.as_url().clone())
            .headers(headers)
            .body(body))
    }
}

/// The span of one attempt (exported with `[telemetry]`, else disabled at no cost): the
/// target's host and port, never the path or query, which may hold a merchant's token.
fn attempt_span(webhook: &Webhook, number: u32) -> tracing::Span {
    let url = webhook.url.as_url();
    tracing::debug_span!(
        "attempt",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        http.request.method = "POST",
        server.address = url.host_str().unwrap_or(""),
        server.port = url.port_or_known_default().unwrap_or(0),
        http.response.status_code = tracing::field::Empty,
        webhook_id = %webhook.id,
        attempt = number,
    )
}

/// The attempt's status on its span: OK for a delivery, ERROR with the cause otherwise.
fn record_outcome(span: &tracing::Span, report: &AttemptReport) {
    if span.is_disabled() {
        return;
    }
    if let Some(status) = report.status {
        span.record("http.response.status_code", status);
    }
    if report.verdict == Verdict::Delivered {
        span.record("otel.status_code", "OK");
        return;
    }
    span.record("otel.status_code", "ERROR");
    let cause = match (&report.error, report.status) {
        (Some(error), _) => error.clone(),
        (None, Some(status)) => format!("HTTP {status}"),
        (None, None) => report.verdict.label().to_owned(),
    };
    span.record("otel.status_description", cause.as_str());
}

/// Header values here are ids, base64 and hex: always visible ASCII.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("ids and signatures are visible ASCII")
}

/// No request was made. The error names neither host nor address (see [`guard`]).
fn refused(refusal: guard::TargetRefused, started: Instant) -> AttemptReport {
    AttemptReport {
        status: None,
        error: Some(refusal.to_string()),
        verdict: Verdict::Refused,
        duration: started.elapsed(),
        response_excerpt: String::new(),
    }
}

/// The first [`EXCERPT_BYTES`] of the body; the rest is not read.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while kept.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            _ => break,
        }
    }
    kept.truncate(EXCERPT_BYTES);
    String::from_utf8_lossy(&kept).into_owned()
}

/// A one-line cause for the attempt log: timeout, connect error, or the innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    format!("{kind}: {inner}")
}
