//! A confirmed publisher: every publish is `mandatory` and persistent, and succeeds only when the
//! broker acked it without returning it, within the timeout. A Nack, a return or a timeout is an
//! error, never a success (unlike sinks that treat a Nack as delivered).
//!
//! **Confirmed or abandoned once.** While the broker blocks the connection (`connection.blocked`:
//! a memory or disk alarm) lapin sends nothing, and sends what it holds once the broker unblocks
//! it: a publish that merely timed out would still arrive later, and the message it followed up,
//! handed back meanwhile, would publish it again. So a publish that is given up is abandoned for
//! good: its channel is closed (the broker answers `close-ok` only after the frames before it),
//! or, when the close cannot be sent, its connection is cut at the socket
//! ([`super::socket::Severer`]), before the error is returned. A worker's publisher
//! ([`Publisher::holding_while_blocked`]) also waits out a blocked broker, up to
//! `amqp.blocked_timeout`, instead of giving up after `publish_timeout`.
//!
//! [`EventPublisher::connect`] is the library for upstream services: on a cluster it retries a
//! publish that was not confirmed on the next node (at-least-once: nothing confirmed is lost, a
//! retried one may arrive twice; receivers dedupe on `webhook-id`). Every event it publishes
//! carries a W3C `traceparent` header: the caller's trace, or a new one (DESIGN §7).

use super::connect::{Connector, NodeId};
use super::socket::Severer;
use crate::event::{AccountId, Event, EventId, EventType};
/// Re-exported: every publisher of a message names its headers from here.
pub use crate::messages::headers::Headers;
use crate::metrics::PublishFailure;
use crate::telemetry::context::{TraceContext, TraceParent};
use crate::telemetry::otlp;
use chrono::{DateTime, SecondsFormat, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// How often a publish waiting for its confirm looks whether the broker blocks the connection.
const BLOCKED_CHECK: Duration = Duration::from_millis(200);

/// How long closing the channel of an abandoned publish may take before its connection is cut.
const ABANDON_CLOSE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker returned the message as unroutable: {0}")]
    Returned(String),
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    #[error(
        "the broker is blocking publishers (memory or disk alarm): no confirm within {0:?}; \
         try again once the alarm clears"
    )]
    Blocked(Duration),
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] super::ConnectError),
}

impl PublishError {
    /// The broker answered about this message, or blocks publishers (an alarm is raised on
    /// every node of a cluster): another node would answer the same.
    fn is_final(&self) -> bool {
        matches!(self, PublishError::Returned(_) | PublishError::Blocked(_))
            || self.is_not_declared()
    }

    /// The `reason` this failure is counted under in `hookrelay_publish_failures_total`.
    pub fn failure(&self) -> PublishFailure {
        match self {
            PublishError::Nacked => PublishFailure::Nacked,
            PublishError::Returned(_) => PublishFailure::Returned,
            PublishError::Timeout(_) => PublishFailure::Timeout,
            PublishError::Blocked(_) => PublishFailure::Blocked,
            PublishError::Amqp(_) | PublishError::Connect(_) => PublishFailure::Connection,
        }
    }

    /// The exchange does not exist (`NOT_FOUND`): the topology is not declared.
    pub fn is_not_declared(&self) -> bool {
        matches!(self, PublishError::Amqp(e) if super::is_not_found(e))
    }
}

/// One message to publish.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub message_id: Option<&'a str>,
    pub content_type: &'a str,
    pub headers: Headers,
    /// Per-message TTL in milliseconds (delay queues).
    pub expiration_ms: Option<u64>,
}

/// A channel in confirm mode, shared by all the tasks of a process: publishes are pipelined and
/// each awaits its own confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// The connection's, to see whether the broker blocks it.
    status: ConnectionStatus,
    timeout: Duration,
    /// How long a confirm may take while the connection is blocked; `timeout` unless set.
    blocked_limit: Duration,
    severer: Option<Severer>,
}

/// Why a publish was given up.
enum GaveUp {
    /// No confirm within `timeout` while the broker did not block.
    Timeout,
    /// No confirm while the broker blocked publishers, within the limit for that.
    Blocked,
}

impl Publisher {
    pub async fn new(connection: &Connection, timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            status: connection.status().clone(),
            timeout,
            blocked_limit: timeout,
            severer: None,
        })
    }

    /// A worker's publisher: while the broker blocks the connection, a publish waits for its
    /// confirm up to `limit` (the time blocked does not count against `timeout`); an abandoned
    /// publish whose channel cannot be closed cuts the connection with `severer`.
    pub fn holding_while_blocked(mut self, limit: Duration, severer: Severer) -> Self {
        self.blocked_limit = limit.max(self.timeout);
        self.severer = Some(severer);
        self
    }

    /// Whether the broker blocks this publisher's connection (memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.status.blocked()
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        self.publish_with(msg, true).await
    }

    /// A publish the broker may drop when no queue is bound: confirmed (so it is persisted
    /// wherever it is routed) but not `mandatory`. For notifications nobody is obliged to hear
    /// (the operational exchange, which a platform may not have bound a queue to): a return
    /// there would otherwise fail the publish forever.
    pub async fn publish_unrouted_ok(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        self.publish_with(msg, false).await
    }

    async fn publish_with(&self, msg: Outgoing<'_>, mandatory: bool) -> Result<(), PublishError> {
        let target = if msg.exchange.is_empty() {
            msg.routing_key
        } else {
            msg.exchange
        };
        let published = self.publish_confirmed(msg, mandatory).await;
        if let Err(e) = &published {
            crate::metrics::publish_failed(target, e.failure())
        }
        published
    }

    async fn publish_confirmed(
        &self,
        msg: Outgoing<'_>,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_content_type(msg.content_type.into())
            .with_headers(msg.headers.into_table())
            .with_timestamp(Utc::now().timestamp().max(0) as u64);
        if let Some(id) = msg.message_id {
            props = props.with_message_id(id.into());
        }
        if let Some(ms) = msg.expiration_ms {
            props = props.with_expiration(ms.to_string().into());
        }
        let confirm = async {
            let pending = self
                .channel
                .basic_publish(
                    msg.exchange.into(),
                    msg.routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        immediate: false,
                    },
                    msg.body,
                    props,
                )
                .await?;
            pending.await
        };
        let started = Instant::now();
        let confirmation = match self.await_confirm(confirm).await {
            Ok(confirmation) => confirmation?,
            Err(gave_up) => {
                let error = match gave_up {
                    GaveUp::Timeout => PublishError::Timeout(self.timeout),
                    GaveUp::Blocked => PublishError::Blocked(started.elapsed()),
                };
                self.abandon().await;
                return Err(error);
            }
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(
                PublishError::Returned(returned.reply_text.as_str().to_owned()),
            ),
            Confirmation::Nack(None) => Err(PublishError::Nacked),
            // `new` always selects confirm mode, so the broker always confirms.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }
}

impl Publisher {
    /// Waits for `confirm`: `timeout` after the publish or after the broker last blocked the
    /// connection, and at most `blocked_limit` in all.
    async fn await_confirm<T>(
        &self,
        confirm: impl std::future::Future<Output = T>,
    ) -> Result<T, GaveUp> {
        tokio::pin!(confirm);
        let started = Instant::now();
        let mut unblocked_since = started;
        loop {
            if let Ok(done) = tokio::time::timeout(BLOCKED_CHECK, &mut confirm).await {
                return Ok(done);
            }
            let blocked = self.status.blocked();
            if blocked {
                unblocked_since = Instant::now();
            }
            match wait_verdict(
                started.elapsed(),
                unblocked_since.elapsed(),
                blocked,
                self.timeout,
                self.blocked_limit,
            ) {
                Some(gave_up) => return Err(gave_up),
                None => continue,
            }
        }
    }

    /// Abandons what this channel has not had confirmed: closes it, so that the broker settles
    /// every frame sent before; when that cannot be done in time (the broker blocks the
    /// connection, or the network is gone), cuts the connection, so that lapin drops what it
    /// still held. Other publishes pending on the channel fail with it: their messages are
    /// handed back once, like this one's.
    async fn abandon(&self) {
        let close = self.channel.close(200, "publish abandoned".into());
        if let Ok(Ok(())) = tokio::time::timeout(ABANDON_CLOSE, close).await {
            return;
        }
        if let Some(severer) = &self.severer {
            tracing::warn!(
                "could not close the channel of an abandoned publish; cutting its connection"
            );
            severer.sever();
        }
    }
}

/// Whether to give up waiting for a confirm, `waited` after the publish and `unblocked` after
/// the broker last blocked the connection (equal if it never did); `blocked`: it blocks now.
fn wait_verdict(
    waited: Duration,
    unblocked: Duration,
    blocked: bool,
    timeout: Duration,
    blocked_limit: Duration,
) -> Option<GaveUp> {
    let verdict = if blocked {
        GaveUp::Blocked
    } else {
        GaveUp::Timeout
    };
    if waited >= blocked_limit.max(timeout) || (!blocked && unblocked >= timeout) {
        Some(verdict)
    } else {
        None
    }
}

/// An event for upstream services to publish; `id` and `created_at` default to fresh values.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: Option<EventId>,
    pub event_type: EventType,
    pub account_id: AccountId,
    pub created_at: Option<DateTime<Utc>>,
    /// A JSON object, passed through to merchants untouched.
    pub data: Box<serde_json::value::RawValue>,
}

impl NewEvent {
    /// The envelope of DESIGN §2.
    pub fn into_event(self) -> Event {
        let created_at = self.created_at.unwrap_or_else(Utc::now);
        // Whole seconds: that is what receivers get as `timestamp` and `created`.
        let created_at =
            DateTime::parse_from_rfc3339(&created_at.to_rfc3339_opts(SecondsFormat::Secs, true))
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(created_at);
        Event {
            id: self.id.unwrap_or_else(EventId::generate),
            event_type: self.event_type,
            account_id: self.account_id,
            created_at,
            data: self.data,
        }
    }
}

/// The library API for upstream Rust services: publishes envelopes to `<prefix>.events`.
#[derive(Clone)]
pub struct EventPublisher {
    source: Source,
    exchange: String,
    /// Share of new traces marked sampled (see [`EventPublisher::with_sampling_ratio`]).
    sampling_ratio: f64,
}

#[derive(Clone)]
enum Source {
    /// A channel the caller opened: no failover.
    Fixed(Publisher),
    /// Its own connection through a [`Connector`], replaced on the next node when lost.
    Nodes(Arc<Failover>),
}

struct Failover {
    connector: Connector,
    timeout: Duration,
    // A tokio Mutex: held across the reconnect, so that concurrent publishes share one.
    current: tokio::sync::Mutex<Option<Current>>,
}

struct Current {
    connection: Connection,
    publisher: Publisher,
    node: NodeId,
}

impl EventPublisher {
    /// On a channel the caller manages (no failover).
    pub fn new(publisher: Publisher, prefix: &str) -> Self {
        EventPublisher {
            source: Source::Fixed(publisher),
            exchange: format!("{prefix}.events"),
            sampling_ratio: 1.0,
        }
    }

    /// The share (0.0 to 1.0, default 1.0) of the new traces this publisher starts, for events
    /// published outside any trace, that are marked sampled, by the same trace-id rule as a
    /// worker's `telemetry.sampling_ratio`. An event published inside a trace keeps its flag.
    pub fn with_sampling_ratio(mut self, ratio: f64) -> Self {
        self.sampling_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// Connects its own connection and confirm channel through `connector` (the first usable
    /// node); a publish that is not confirmed is retried on the next node. `timeout` bounds each
    /// confirm, and each reconnect.
    pub async fn connect(
        connector: &Connector,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, PublishError> {
        let failover = Failover {
            connector: connector.clone(),
            timeout,
            current: tokio::sync::Mutex::new(None),
        };
        failover.publisher(false).await?;
        Ok(EventPublisher {
            source: Source::Nodes(Arc::new(failover)),
            exchange: format!("{prefix}.events"),
            sampling_ratio: 1.0,
        })
    }

    /// Publishes one event and returns it as sent, once the broker confirmed it. It carries the
    /// caller's trace context (its current `tracing` span, when exported by a
    /// tracing-opentelemetry layer, or OpenTelemetry's current context), or a new trace.
    pub async fn publish(&self, event: NewEvent) -> Result<Event, PublishError> {
        self.publish_in_trace(event, None).await
    }

    /// As [`EventPublisher::publish`], continuing `trace` when given (a W3C context the caller
    /// received, e.g. from an HTTP request), else the current one or a new one.
    pub async fn publish_in_trace(
        &self,
        event: NewEvent,
        trace: Option<TraceContext>,
    ) -> Result<Event, PublishError> {
        let event = event.into_event();
        let span = tracing::debug_span!("publish", otel.kind = "producer",
            messaging.destination.name = %self.exchange, event_id = %event.id,
            hookrelay.publish = "event");
        otlp::continue_from(&span, trace.as_ref());
        let trace = otlp::outgoing(&span, trace.as_ref())
            .or_else(otlp::current)
            .unwrap_or_else(|| TraceContext::new(TraceParent::new_root_at(self.sampling_ratio)));
        let headers = trace.to_amqp(Headers::default());
        let body = event.to_envelope_json();
        let outgoing = || Outgoing {
            exchange: &self.exchange,
            routing_key: event.event_type.label(),
            body: body.as_bytes(),
            message_id: Some(event.id.as_str()),
            content_type: "application/json",
            headers: headers.clone(),
            expiration_ms: None,
        };
        match &self.source {
            Source::Fixed(publisher) => publisher.publish(outgoing()).instrument(span).await?,
            Source::Nodes(failover) => failover.publish(outgoing).instrument(span).await?,
        }
        Ok(event)
    }

    /// Closes the connection it opened, if any.
    pub async fn close(&self) {
        if let Source::Nodes(failover) = &self.source {
            if let Some(current) = failover.current.lock().await.take() {
                let _ = current.connection.close(200, "done".into()).await;
            }
        }
    }
}

impl Failover {
    /// One try per node, plus one: enough to go round a cluster once whatever failed first.
    fn attempts(&self) -> usize {
        self.connector.nodes().len() + 1
    }

    async fn publish<'a>(&self, outgoing: impl Fn() -> Outgoing<'a>) -> Result<(), PublishError> {
        let mut last = None;
        for attempt in 0..self.attempts() {
            let (publisher, node) = self.publisher(attempt > 0).await?;
            match publisher.publish(outgoing()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_final() => return Err(e),
                Err(e) => {
                    // Unconfirmed (connection lost, nack, no confirm in time): the broker may or
                    // may not have it, so send it again elsewhere; a duplicate is allowed, a
                    // loss is not.
                    match self.connector.nodes().len() {
                        1 => {
                            tracing::warn!(error = %e, "publish not confirmed; reconnecting to retry")
                        }
                        _ => {
                            tracing::warn!(error = %e, "publish not confirmed; retrying on the next node")
                        }
                    }
                    self.discard(node).await;
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt was made"))
    }

    /// The current confirm channel, or a new one on the next usable node.
    async fn publisher(&self, retrying: bool) -> Result<(Publisher, NodeId), PublishError> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            if c.connection.status().connected() && c.publisher.channel().status().connected() {
                return Ok((c.publisher.clone(), c.node));
            }
        }
        if let Some(c) = current.take() {
            self.connector.lost(c.node);
        }
        let mut last = None;
        // A node that is shutting down may accept the connection and then drop it before the
        // channel is open: that is one more node to move past, not a failed publish.
        for _ in 0..self.attempts() {
            let connected = match retrying {
                // Going round the nodes with backoff: the one that failed may be coming back.
                true => {
                    self.connector
                        .connect_within("hookrelay publisher", self.timeout)
                        .await?
                }
                false => self.connector.connect("hookrelay publisher").await?,
            };
            match Publisher::new(&connected.connection, self.timeout).await {
                Ok(publisher) => {
                    *current = Some(Current {
                        connection: connected.connection,
                        publisher: publisher.clone(),
                        node: connected.node,
                    });
                    return Ok((publisher, connected.node));
                }
                Err(e) => {
                    self.connector.lost(connected.node);
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt was made").into())
    }

    /// Drops the connection on `node` (if it is still the current one) and moves past it.
    async fn discard(&self, node: NodeId) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.node == node) {
            if let Some(c) = current.take() {
                // Closing a lost connection waits for an answer that may never come.
                let close = c.connection.close(320, "publish not confirmed".into());
                let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
            }
        }
        self.connector.lost(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);
    const LIMIT: Duration = Duration::from_secs(900);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_unblocked_publish_gives_up_after_the_publish_timeout() {
        assert!(wait_verdict(secs(9), secs(9), false, TIMEOUT, LIMIT).is_none());
        assert!(matches!(
            wait_verdict(secs(10), secs(10), false, TIMEOUT, LIMIT),
            Some(GaveUp::Timeout)
        ));
    }

    #[test]
    fn a_blocked_publish_waits_past_the_publish_timeout_up_to_the_blocked_limit() {
        assert!(wait_verdict(secs(600), secs(0), true, TIMEOUT, LIMIT).is_none());
        assert!(matches!(
            wait_verdict(secs(900), secs(0), true, TIMEOUT, LIMIT),
            Some(GaveUp::Blocked)
        ));
    }

    #[test]
    fn after_an_unblock_the_publish_timeout_counts_from_the_unblock() {
        assert!(wait_verdict(secs(120), secs(5), false, TIMEOUT, LIMIT).is_none());
        assert!(matches!(
            wait_verdict(secs(120), secs(10), false, TIMEOUT, LIMIT),
            Some(GaveUp::Timeout)
        ));
    }

    #[test]
    fn without_a_blocked_limit_a_blocked_publish_gives_up_at_the_timeout_saying_blocked() {
        assert!(matches!(
            wait_verdict(secs(10), secs(0), true, TIMEOUT, TIMEOUT),
            Some(GaveUp::Blocked)
        ));
    }

    #[test]
    fn a_blocked_publish_error_names_the_alarm() {
        let text = PublishError::Blocked(secs(10)).to_string();
        assert!(
            text.contains("the broker is blocking publishers (memory or disk alarm)"),
            "{text}"
        );
        assert!(PublishError::Blocked(secs(1)).is_final());
    }
}
