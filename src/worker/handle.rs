//! What the worker does with one message: consume → look up → deliver → settle. Each attempt's
//! outcome is decided first, as a value ([`settle`]); one `match` then publishes its follow-up
//! (a delay queue or a dead letter) with confirms. The source message is acked only after every
//! follow-up is confirmed, otherwise it comes back.

use super::endpoints::{Admission, Endpoints, Target};
use super::rate_limit::{Pass, RateLimits};
use crate::broker::headers;
use crate::broker::properties;
use crate::broker::publisher::{Headers, Outgoing, PublishError, Publisher};
use crate::broker::topology::Topology;
use crate::delivery::format::PreparedEvent;
use crate::delivery::policy::{settle, NextAttempt, RetrySchedule, Settlement, Verdict};
use crate::delivery::{AttemptReport, Deliverer};
use crate::event::{Event, Limits, Poison, PoisonReason};
use crate::messages::dead::{dead_letter_id, invalid_job_headers, poison_headers, Dying};
use crate::messages::{header, DeadDelivery, DeadReason, DeliveryJob, History};
use crate::operational::{DeadLettered, Operational};
use crate::subscription::attempts::AttemptLog;
use crate::subscription::cache::{Found, SubscriptionCache, Webhooks};
use crate::subscription::health::{Outcome, Subject};
use crate::subscription::store::StoreError;
use crate::subscription::Webhook;
use crate::telemetry::context::TraceContext;
use crate::telemetry::otlp;
use backon::BackoffBuilder;
use chrono::Utc;
use futures_util::future::{join, join_all};
use lapin::message::Delivery;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument;

/// Why a message was not settled; it goes back to its queue.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("publishing a follow-up failed: {0}")]
    Publish(#[from] PublishError),
    #[error("shutting down before the subscriptions could be read")]
    ShuttingDown,
}

/// Everything a message handler needs; shared by all handlers of a worker.
pub struct Ctx {
    pub topology: Topology,
    pub publisher: Publisher,
    pub cache: Arc<SubscriptionCache>,
    pub deliverer: Deliverer,
    pub schedule: RetrySchedule,
    pub attempt_log: AttemptLog,
    /// Decides and publishes the operational events (`webhook.failing`, ...).
    pub operational: Operational,
    pub endpoints: Arc<Endpoints>,
    pub rate_limits: Arc<RateLimits>,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    /// False while subscription lookups fail (the worker then reports not ready).
    pub redis_ok: Arc<AtomicBool>,
    /// Whether the store's marker is there; a lookup that finds it missing reports it.
    pub store_state: Arc<super::store_watch::StoreState>,
}

/// Why a delivery waits in a delay queue without an attempt.
#[derive(Clone, Copy)]
enum Why {
    /// Slow or failing: each further deferral waits longer.
    Endpoint,
    /// Over its rate limit: always the first step.
    RateLimit,
}

/// A message body and where it goes, for [`Ctx::publish`].
struct Letter<'a> {
    queue: String,
    body: &'a [u8],
    headers: Headers,
    /// Dead letters carry an id by which `hookrelay dlq` names them.
    dead_letter: Option<&'a str>,
    content_type: &'a str,
    expiration: Option<Duration>,
    /// What it is, on its span: `retry`, `deferral` or `dead_letter`.
    kind: &'static str,
    /// The context the handled message arrived with, passed on when no span is exported.
    trace: Option<&'a TraceContext>,
}

impl Ctx {
    /// An event from `<prefix>.events`.
    pub async fn handle_event(&self, delivery: &Delivery) -> Result<(), HandleError> {
        // Properties the client's parser could not read as sent (nested too deep, not UTF-8)
        // park the message alone, whatever its body; none of them is copied into the letter,
        // and none is read as trace context.
        if let Err(unreadable) =
            properties::check(&delivery.properties, delivery.routing_key.as_str())
        {
            let poison = Poison {
                reason: PoisonReason::InvalidProperties,
                detail: unreadable.to_string(),
            };
            return self.dead_letter_event(delivery, &poison, None).await;
        }
        let trace = TraceContext::from_amqp(delivery.properties.headers().as_ref());
        let span = consume_span(&self.topology, Topology::events_queue, delivery, 1);
        otlp::continue_from(&span, trace.as_ref());
        self.consume_event(delivery, trace.as_ref())
            .instrument(span)
            .await
    }

    async fn consume_event(
        &self,
        delivery: &Delivery,
        trace: Option<&TraceContext>,
    ) -> Result<(), HandleError> {
        let event = match Event::parse(&delivery.data, delivery.routing_key.as_str(), self.limits) {
            Ok(event) => event,
            Err(poison) => return self.dead_letter_event(delivery, &poison, trace).await,
        };
        record_event(&event);
        {
            let webhooks = self.lookup(&event).await?;
            metrics::counter!("hookrelay_events_total").increment(1);
            let t = event.event_type;
            let matching: Vec<&Arc<Webhook>> = webhooks
                .iter()
                .filter(|w| w.enabled && w.events.matches(t))
                .collect();
            let unreadable: Vec<_> = webhooks
                .unreadable
                .iter()
                .filter(|u| u.may_match(t))
                .collect();
            if matching.is_empty() && unreadable.is_empty() {
                metrics::counter!("hookrelay_events_unmatched_total").increment(1);
                return Ok(());
            }
            let prepared = PreparedEvent::new(event);
            let history = History::new(Utc::now());
            let attempts = matching
                .iter()
                .map(|w| self.attempt_and_settle(w, &prepared, 1, &history, trace));
            let refusals = unreadable.iter().map(|u| {
                let dying = dying(
                    &prepared,
                    &u.id,
                    u.url.as_deref().unwrap_or(""),
                    0,
                    &history,
                );
                self.publish_dead(DeadReason::WebhookUnreadable, dying, trace)
            });
            let (attempted, refused) = join(join_all(attempts), join_all(refusals)).await;
            attempted.into_iter().chain(refused).collect()
        }
    }

    /// A delivery from `<prefix>.deliveries`, back from a delay queue for another attempt.
    pub async fn handle_retry(&self, delivery: &Delivery) -> Result<(), HandleError> {
        // hookrelay never writes such properties: not one of its jobs.
        if let Err(unreadable) =
            properties::check(&delivery.properties, delivery.routing_key.as_str())
        {
            return self
                .park_invalid_job(delivery, &unreadable.to_string(), None)
                .await;
        }
        // A job without the header (written by an older version) counts as one attempt made.
        let attempts_made = int_header(delivery, header::ATTEMPTS).unwrap_or(1);
        let trace = TraceContext::from_amqp(delivery.properties.headers().as_ref());
        let attempt = attempts_made.saturating_add(1);
        let span = consume_span(
            &self.topology,
            Topology::deliveries_queue,
            delivery,
            attempt,
        );
        otlp::continue_from(&span, trace.as_ref());
        self.consume_retry(delivery, attempts_made, trace.as_ref())
            .instrument(span)
            .await
    }

    async fn consume_retry(
        &self,
        delivery: &Delivery,
        attempts_made: u32,
        trace: Option<&TraceContext>,
    ) -> Result<(), HandleError> {
        let deferrals = int_header(delivery, header::DEFERRALS).unwrap_or(0);
        let job: DeliveryJob = match serde_json::from_slice(&delivery.data) {
            Ok(job) => job,
            Err(e) => return self.park_invalid_job(delivery, &e.to_string(), trace).await,
        };
        let event = match job.event() {
            Ok(event) => event,
            Err(poison) => {
                return self
                    .park_invalid_job(delivery, &poison.to_string(), trace)
                    .await
            }
        };
        record_event(&event);
        tracing::Span::current().record("webhook_id", job.webhook_id.as_str());
        {
            let webhooks = self.lookup(&event).await?;
            // The job's envelope is what ingest accepted: reused as it is, never rebuilt.
            let history = job.history().deferred(deferrals);
            // Moved, not copied: the job's other fields are still read below.
            let prepared = PreparedEvent::with_envelope(event, job.event);
            let reason = match webhooks.find(&job.webhook_id) {
                Found::Readable(w) if w.enabled => {
                    let attempt = attempts_made.saturating_add(1);
                    return self
                        .attempt_and_settle(w, &prepared, attempt, &history, trace)
                        .await;
                }
                Found::Readable(_) => DeadReason::WebhookDisabled,
                Found::Unreadable(_) => DeadReason::WebhookUnreadable,
                Found::Missing => DeadReason::WebhookDeleted,
            };
            // No attempt is made now: the facts of the last one are the job's.
            let dying = dying(
                &prepared,
                job.webhook_id.as_str(),
                &job.url,
                attempts_made,
                &history,
            );
            self.publish_dead(reason, dying, trace).await
        }
    }

    /// Reads the account's webhooks, waiting out a Redis outage while holding the message:
    /// unacked, it stops the broker from sending more once prefetch is full, so an outage
    /// neither spins a requeue loop nor counts an attempt. A lookup fails only when Redis does
    /// (an unreadable record is reported in the result, not as an error), so this never waits
    /// out a permanent fault.
    async fn lookup(&self, event: &Event) -> Result<Webhooks, HandleError> {
        let span = tracing::debug_span!("lookup", webhooks = Empty);
        let found = self.lookup_waiting(event).instrument(span.clone()).await;
        if let (false, Ok(webhooks)) = (span.is_disabled(), &found) {
            span.record("webhooks", webhooks.iter().count());
        }
        found
    }

    async fn lookup_waiting(&self, event: &Event) -> Result<Webhooks, HandleError> {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times()
            .build();
        loop {
            match self.cache.lookup(&event.account_id).await {
                // The store is gone: the event waits (unacked) until its marker is back.
                Err(StoreError::Missing(_)) => {
                    self.store_state.missing();
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(HandleError::ShuttingDown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
                // Not a sign that Redis is up: the cache may have answered. The worker's Redis
                // probe says when it is (and sets the flag and gauge back).
                Ok(webhooks) => return Ok(webhooks),
                // Logged once per outage, not once per held message.
                Err(e) if self.redis_ok.swap(false, Ordering::AcqRel) => {
                    tracing::warn!(error = %e, "subscription lookups failing; holding messages until Redis answers");
                }
                Err(e) => tracing::debug!(error = %e, "subscription lookup failed; retrying"),
            }
            crate::metrics::redis_ok(false);
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(HandleError::ShuttingDown),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Admit → attempt → log → observe the endpoint's health → follow up (one `match` that
    /// publishes what follows from attempt number `attempt`, 1 = the first).
    async fn attempt_and_settle(
        &self,
        webhook: &Webhook,
        event: &PreparedEvent,
        attempt: u32,
        history: &History,
        trace: Option<&TraceContext>,
    ) -> Result<(), HandleError> {
        let made = attempt.saturating_sub(1);
        let deferral = Deferral {
            webhook,
            event,
            attempts_made: made,
            history,
            trace,
        };
        if let Some(next) = self.pace(webhook).await? {
            return Box::pin(self.defer(deferral, next, Why::RateLimit)).await;
        }
        let permit = match self.endpoints.admit(&Target::of(webhook)).await {
            Admission::Go(permit) => Some(permit),
            Admission::Defer => match self.schedule.deferral(history.deferrals, rand::random()) {
                Some(next) => return Box::pin(self.defer(deferral, next, Why::Endpoint)).await,
                // Without a delay queue there is nowhere to wait: the request is made anyway.
                None => None,
            },
        };
        let _in_flight = crate::metrics::in_flight();
        let report = self.deliverer.attempt(webhook, event, attempt, trace).await;
        if let Some(permit) = permit {
            permit.judge(&report.verdict);
        }
        if report.verdict == Verdict::Delivered {
            crate::metrics::delivered(event.event.created_at);
        }
        self.log_attempt(webhook, event, attempt, &report);
        // Before the follow-up, so that the message is acked only after its decision was
        // published (or left pending in Redis for a later attempt to publish).
        self.observe_health(webhook, &report).await;
        let history = history.after(report.status, report.error.as_deref());
        let settlement = settle(&report.verdict, attempt, &self.schedule, rand::random());
        self.follow_up(settlement, webhook, event, attempt, &history, trace)
            .await
    }

    /// Tells the operational events what the attempt says about the endpoint's health.
    async fn observe_health(&self, webhook: &Webhook, report: &AttemptReport) {
        Box::pin(self.operational.observe(
            &self.publisher,
            &Subject {
                account: &webhook.account_id,
                webhook: &webhook.id,
                url: webhook.url.as_str(),
            },
            &health_outcome(report),
        ))
        .await;
    }

    /// Publishes what follows from attempt number `attempt`: nothing once delivered, the job
    /// again in a delay queue for a retry, or the dead delivery (disabling a gone webhook first).
    async fn follow_up(
        &self,
        settlement: Settlement,
        webhook: &Webhook,
        event: &PreparedEvent,
        attempt: u32,
        history: &History,
        trace: Option<&TraceContext>,
    ) -> Result<(), HandleError> {
        match settlement {
            Settlement::Delivered => Ok(()),
            Settlement::Retry(next) => {
                crate::metrics::retry_scheduled(next.step);
                let job =
                    DeliveryJob::new(event.envelope(), &webhook.id, webhook.url.as_str(), history);
                let headers = Headers::default().int(header::ATTEMPTS, attempt.into());
                Box::pin(self.publish_retry(&job, next, headers, "retry", trace)).await
            }
            Settlement::Dead(reason) => {
                if reason == DeadReason::Gone {
                    Box::pin(self.disable_gone(webhook)).await;
                }
                let dying = dying(
                    event,
                    webhook.id.as_str(),
                    webhook.url.as_str(),
                    attempt,
                    history,
                );
                Box::pin(self.publish_dead(reason, dying, trace)).await
            }
        }
    }

    /// Waits for the webhook's rate-limit slot, if it has a limit; `Some(next)`: no slot soon,
    /// the delivery waits in that delay queue instead. A rate-limit wait is by design, not a
    /// sign of trouble: always the first step, and it does not lengthen later deferrals.
    async fn pace(&self, webhook: &Webhook) -> Result<Option<NextAttempt>, HandleError> {
        let Some(limit) = webhook.rate_limit else {
            return Ok(None);
        };
        // Without a delay queue the delivery waits in-process as long as it takes.
        let deferral = self.schedule.deferral(0, rand::random());
        // Boxed, like every step below that only some attempts reach, so that an attempt
        // waiting for a slot stays small.
        let pass = Box::pin(self.rate_limits.admit(
            &webhook.account_id,
            &webhook.id,
            limit,
            deferral.is_some(),
            &self.shutdown,
        ))
        .await;
        match pass {
            Pass::Go => Ok(None),
            // Never without a deferral: `admit` was told whether it may defer.
            Pass::Defer => Ok(deferral),
            Pass::ShuttingDown => Err(HandleError::ShuttingDown),
        }
    }

    /// The endpoint is slow, its circuit is open or its rate limit has no slot soon: the
    /// delivery waits in a delay queue without a request, and without counting an attempt.
    async fn defer(
        &self,
        deferral: Deferral<'_>,
        next: NextAttempt,
        why: Why,
    ) -> Result<(), HandleError> {
        let Deferral {
            webhook,
            event,
            attempts_made,
            history,
            trace,
        } = deferral;
        let deferrals = match why {
            Why::Endpoint => {
                metrics::counter!("hookrelay_deliveries_deferred_total").increment(1);
                tracing::debug!(webhook_id = %webhook.id, attempts_made, "endpoint slow, circuit open or share spent: deferred");
                history.deferrals.saturating_add(1)
            }
            // Counted in hookrelay_rate_limited_total{outcome="deferred"}.
            Why::RateLimit => {
                tracing::debug!(webhook_id = %webhook.id, attempts_made, "over the rate limit: deferred");
                history.deferrals
            }
        };
        let job = DeliveryJob::new(event.envelope(), &webhook.id, webhook.url.as_str(), history);
        let headers = Headers::default()
            .int(header::ATTEMPTS, attempts_made.into())
            .int(header::DEFERRALS, deferrals.into());
        self.publish_retry(&job, next, headers, "deferral", trace)
            .await
    }

    /// 410 Gone: the receiver wants no more deliveries, so the webhook is disabled.
    async fn disable_gone(&self, webhook: &Webhook) {
        let store = self.cache.store();
        if let Err(e) = store
            .disable(&webhook.account_id, &webhook.id, "gone")
            .await
        {
            tracing::warn!(error = %e, webhook_id = %webhook.id, "could not disable a gone webhook");
        }
    }

    fn log_attempt(
        &self,
        webhook: &Webhook,
        event: &PreparedEvent,
        attempt: u32,
        report: &AttemptReport,
    ) {
        metrics::counter!("hookrelay_attempts_total", "result" => report.verdict.label())
            .increment(1);
        metrics::histogram!("hookrelay_attempt_duration_seconds")
            .record(report.duration.as_secs_f64());
        tracing::debug!(webhook_id = %webhook.id, attempt, status = ?report.status,
            error = ?report.error, "attempt");
        let entry = report.log_entry(attempt, event);
        self.attempt_log
            .record(&webhook.account_id, &webhook.id, entry);
    }

    async fn publish_retry(
        &self,
        job: &DeliveryJob,
        next: NextAttempt,
        headers: Headers,
        kind: &'static str,
        trace: Option<&TraceContext>,
    ) -> Result<(), HandleError> {
        self.publish(Letter {
            queue: self.topology.retry_queue(next.step),
            body: &job.to_bytes(),
            headers,
            dead_letter: None,
            content_type: "application/json",
            expiration: Some(next.expiration),
            kind,
            trace,
        })
        .await
    }

    async fn publish_dead(
        &self,
        reason: DeadReason,
        dying: Dying<'_>,
        trace: Option<&TraceContext>,
    ) -> Result<(), HandleError> {
        let account = dying.event.account_id.clone();
        let dead = DeadDelivery::new(reason, dying);
        metrics::counter!("hookrelay_dead_letters_total", "queue" => "deliveries", "reason" => reason.as_str())
            .increment(1);
        tracing::info!(%reason, event_id = %dead.event_id, account_id = %dead.account_id,
            webhook_id = %dead.webhook_id, attempt = dead.attempts, "delivery dead-lettered");
        let id = dead_letter_id();
        self.publish(Letter {
            queue: self.topology.dlq_deliveries(),
            body: &dead.to_bytes(),
            headers: dead.headers(),
            dead_letter: Some(&id),
            content_type: "application/json",
            expiration: None,
            kind: "dead_letter",
            trace,
        })
        .await?;
        Box::pin(self.announce_dead(&account, &dead, &id)).await;
        Ok(())
    }

    /// `delivery.dead_lettered` for a confirmed dead letter; and, since a dead letter may be
    /// the last thing that happens to its webhook (one disabled meanwhile gets no attempt),
    /// its pending operational events whose lease ran out are published now.
    async fn announce_dead(
        &self,
        account: &crate::event::AccountId,
        dead: &DeadDelivery,
        id: &str,
    ) {
        let letter = DeadLettered {
            account,
            event_id: &dead.event_id,
            event_type: &dead.event_type,
            webhook_id: &dead.webhook_id,
            url: &dead.url,
            reason: dead.reason.as_str(),
            attempts: dead.attempts,
            dead_letter_id: id,
        };
        self.operational
            .dead_lettered(&self.publisher, &letter)
            .await;
        if let Ok(webhook) = dead.webhook_id.parse::<crate::subscription::WebhookId>() {
            let subject = Subject {
                account,
                webhook: &webhook,
                url: &dead.url,
            };
            self.operational
                .observe(&self.publisher, &subject, &Outcome::Nothing)
                .await;
        }
    }

    async fn dead_letter_event(
        &self,
        delivery: &Delivery,
        poison: &Poison,
        trace: Option<&TraceContext>,
    ) -> Result<(), HandleError> {
        metrics::counter!("hookrelay_dead_letters_total", "queue" => "events", "reason" => poison.reason.as_str())
            .increment(1);
        tracing::warn!(reason = poison.reason.as_str(), detail = %poison.detail, "poison event dead-lettered");
        let id = dead_letter_id();
        self.publish(Letter {
            queue: self.topology.dlq_events(),
            body: &delivery.data,
            headers: poison_headers(poison, delivery.routing_key.as_str()),
            dead_letter: Some(&id),
            content_type: "application/octet-stream",
            expiration: None,
            kind: "dead_letter",
            trace,
        })
        .await
    }

    /// Only hookrelay writes the deliveries queue; a message there that is not a delivery job is
    /// a bug or a stray publish to look at, so it is parked as it is rather than dropped.
    async fn park_invalid_job(
        &self,
        delivery: &Delivery,
        detail: &str,
        trace: Option<&TraceContext>,
    ) -> Result<(), HandleError> {
        metrics::counter!("hookrelay_dead_letters_total", "queue" => "deliveries", "reason" => DeadReason::InvalidJob.as_str())
            .increment(1);
        tracing::error!(detail, "not a delivery job; dead-lettered as invalid_job");
        let id = dead_letter_id();
        self.publish(Letter {
            queue: self.topology.dlq_deliveries(),
            body: &delivery.data,
            headers: invalid_job_headers(detail),
            dead_letter: Some(&id),
            content_type: "application/octet-stream",
            expiration: None,
            kind: "dead_letter",
            trace,
        })
        .await
    }

    /// Publishes a follow-up, confirmed, carrying the trace on: the publish span's own context
    /// when traces are exported, else the context the handled message arrived with.
    async fn publish(&self, letter: Letter<'_>) -> Result<(), HandleError> {
        let span = tracing::debug_span!("publish", otel.kind = "producer",
            messaging.destination.name = %letter.queue, hookrelay.publish = letter.kind);
        let headers = match otlp::outgoing(&span, letter.trace) {
            Some(trace) => trace.to_amqp(letter.headers),
            None => letter.headers,
        };
        // Partitioned, a retry's delay queue dead-letters it into the deliveries hash exchange,
        // which hashes the message_id: without one, every retry would land on one partition.
        let retry_key = (self.topology.is_partitioned() && letter.expiration.is_some())
            .then(crate::messages::job::partition_key);
        let message_id = letter.dead_letter.or(retry_key.as_deref());
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &letter.queue,
                body: letter.body,
                message_id,
                content_type: letter.content_type,
                headers,
                // Expirations are at most the largest step (days): milliseconds fit a u64.
                expiration_ms: letter.expiration.map(|e| e.as_millis() as u64),
            })
            .instrument(span)
            .await?;
        Ok(())
    }
}

/// What an attempt's verdict says about its webhook's health: a 410 is gone, a request that
/// failed counts, one not made (refused, too large) says nothing.
fn health_outcome(report: &AttemptReport) -> Outcome {
    match report.verdict {
        Verdict::Delivered => Outcome::Succeeded,
        Verdict::Gone => Outcome::Gone,
        Verdict::Retry { .. } => Outcome::Failed(match (report.status, &report.error) {
            (Some(status), _) => format!("HTTP {status}"),
            (None, Some(error)) => error.clone(),
            (None, None) => "failed".to_owned(),
        }),
        Verdict::Refused | Verdict::BodyTooLarge => Outcome::Nothing,
    }
}

/// A delivery deferred without an attempt, for [`Ctx::defer`].
#[derive(Clone, Copy)]
struct Deferral<'a> {
    webhook: &'a Webhook,
    event: &'a PreparedEvent,
    attempts_made: u32,
    history: &'a History,
    trace: Option<&'a TraceContext>,
}

/// The span of one message's handling (exported with `[telemetry]`, else disabled at no cost);
/// the event's fields are recorded once its body is read. `attempt` is the attempt it leads to.
/// The queue's name is made only for an enabled span (field values are evaluated lazily).
fn consume_span(
    topology: &Topology,
    queue: fn(&Topology) -> String,
    delivery: &Delivery,
    attempt: u32,
) -> tracing::Span {
    tracing::debug_span!("consume", otel.kind = "consumer",
        messaging.destination.name = %queue(topology),
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        event_id = Empty, account_id = Empty, webhook_id = Empty, attempt)
}

/// The event's fields on the current (consume) span; nothing to do when it is disabled.
fn record_event(event: &Event) {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("event_id", event.id.as_str());
        span.record("account_id", event.account_id.as_str());
    }
}

fn dying<'a>(
    event: &'a PreparedEvent,
    webhook_id: &'a str,
    url: &'a str,
    attempts: u32,
    history: &'a History,
) -> Dying<'a> {
    Dying {
        event: &event.event,
        envelope: Some(event.envelope()),
        webhook_id,
        url,
        attempts,
        history,
    }
}

/// A non-negative integer header hookrelay wrote (`None` when absent), saturating at the
/// bounds of `u32` whatever a hostile publisher put there.
fn int_header(delivery: &Delivery, key: &str) -> Option<u32> {
    let n = headers::int(delivery.properties.headers().as_ref()?, key)?;
    Some(n.clamp(0, i64::from(u32::MAX)) as u32)
}
