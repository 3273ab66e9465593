//! What the worker does with one message: consume → look up → deliver → settle. Settling an
//! attempt publishes its follow-up (a delay queue or a dead letter) with confirms; the source
//! message is acked only after every follow-up is confirmed, otherwise it comes back.

use super::endpoints::{Admission, Endpoints};
use super::job::{
    dead_letter_id, DeadDelivery, DeadReason, DeliveryJob, History, ATTEMPTS_HEADER,
    DEFERRALS_HEADER,
};
use crate::broker::headers;
use crate::broker::publisher::{Headers, Outgoing, PublishError, Publisher};
use crate::broker::topology::Topology;
use crate::delivery::format::PreparedEvent;
use crate::delivery::policy::{NextAttempt, RetrySchedule, Verdict};
use crate::delivery::{AttemptReport, AttemptVerdict, Deliverer};
use crate::event::{Event, Poison};
use crate::subscription::attempts::{AttemptLog, AttemptRecord};
use crate::subscription::cache::{SubscriptionCache, Webhooks};
use crate::subscription::Webhook;
use chrono::Utc;
use futures_util::future::join_all;
use lapin::message::Delivery;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
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
    pub endpoints: Arc<Endpoints>,
    pub max_event_bytes: usize,
    pub shutdown: CancellationToken,
    /// False while subscription lookups fail (the worker then reports not ready).
    pub redis_ok: Arc<AtomicBool>,
}

impl Ctx {
    /// An event from `<prefix>.events`.
    pub async fn handle_event(&self, delivery: &Delivery) -> Result<(), HandleError> {
        let event = match Event::parse(
            &delivery.data,
            delivery.routing_key.as_str(),
            self.max_event_bytes,
        ) {
            Ok(event) => event,
            Err(poison) => return self.dead_letter_event(delivery, &poison).await,
        };
        let span =
            tracing::debug_span!("event", event_id = %event.id, account_id = %event.account_id);
        async {
            let webhooks = self.lookup(&event).await?;
            let matching: Vec<Arc<Webhook>> = webhooks
                .iter()
                .filter(|w| w.enabled && w.events.matches(event.event_type))
                .cloned()
                .collect();
            metrics::counter!("hookrelay_events_total").increment(1);
            if matching.is_empty() {
                metrics::counter!("hookrelay_events_unmatched_total").increment(1);
                return Ok(());
            }
            let prepared = PreparedEvent::new(event);
            let history = History::new(Utc::now());
            let settled = join_all(
                matching
                    .iter()
                    .map(|w| self.attempt_and_settle(w, &prepared, 1, &history)),
            )
            .await;
            settled.into_iter().collect()
        }
        .instrument(span)
        .await
    }

    /// A delivery from `<prefix>.deliveries`, back from a delay queue for another attempt.
    pub async fn handle_retry(&self, delivery: &Delivery) -> Result<(), HandleError> {
        // A job without the header (written by an older version) counts as one attempt made.
        let attempts_made = int_header(delivery, ATTEMPTS_HEADER).unwrap_or(1);
        let deferrals = int_header(delivery, DEFERRALS_HEADER).unwrap_or(0);
        let job: DeliveryJob = match serde_json::from_slice(&delivery.data) {
            Ok(job) => job,
            Err(e) => {
                // Only hookrelay writes this queue; an unreadable job is a bug to look at, so it
                // is parked in the deliveries DLQ as it is rather than dropped.
                tracing::error!(error = %e, "unreadable delivery job");
                return self.park_unreadable_job(delivery).await;
            }
        };
        let Ok(event) = job.event() else {
            tracing::error!("delivery job carries an invalid event");
            return self.park_unreadable_job(delivery).await;
        };
        let span = tracing::debug_span!("delivery", event_id = %event.id, account_id = %event.account_id,
            webhook_id = %job.webhook_id, attempt = attempts_made + 1);
        async {
            let webhooks = self.lookup(&event).await?;
            let dead = |reason| {
                DeadDelivery::new(
                    reason,
                    &event,
                    &job.webhook_id,
                    &job.url,
                    attempts_made,
                    Some(job.first_attempt_at),
                    None,
                )
            };
            let mut dead_letter = match webhooks.iter().find(|w| w.id == job.webhook_id) {
                None => dead(DeadReason::WebhookDeleted),
                Some(w) if !w.enabled => dead(DeadReason::WebhookDisabled),
                Some(w) => {
                    let prepared = PreparedEvent::new(event);
                    return self
                        .attempt_and_settle(
                            w,
                            &prepared,
                            attempts_made + 1,
                            &job.history().deferred(deferrals),
                        )
                        .await;
                }
            };
            // No attempt was made now: the facts of the last one are the job's.
            dead_letter.last_status = job.last_status;
            dead_letter.last_error = job.last_error.clone();
            dead_letter.last_attempt_at = job.last_attempt_at.map(|t| t.to_rfc3339());
            self.publish_dead_delivery(&dead_letter).await
        }
        .instrument(span)
        .await
    }

    /// Reads the account's webhooks, waiting out a Redis failure while holding the message:
    /// unacked, it stops the broker from sending more once prefetch is full, so an outage
    /// neither spins a requeue loop nor counts an attempt.
    async fn lookup(&self, event: &Event) -> Result<Webhooks, HandleError> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.cache.lookup(&event.account_id).await {
                Ok(webhooks) => {
                    crate::metrics::redis_ok(true);
                    let was_failing = !self.redis_ok.load(Ordering::Acquire);
                    if was_failing && !self.redis_ok.swap(true, Ordering::AcqRel) {
                        tracing::info!("subscription lookups answer again; resuming");
                    }
                    return Ok(webhooks);
                }
                // Logged once per outage, not once per held message.
                Err(e) if self.redis_ok.swap(false, Ordering::AcqRel) => {
                    tracing::warn!(error = %e, "subscription lookups failing; holding messages until Redis answers");
                }
                Err(e) => tracing::debug!(error = %e, "subscription lookup failed; retrying"),
            }
            crate::metrics::redis_ok(false);
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(HandleError::ShuttingDown),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Makes attempt number `attempt` (unless the endpoint must wait) and publishes what
    /// follows from it.
    async fn attempt_and_settle(
        &self,
        webhook: &Webhook,
        event: &PreparedEvent,
        attempt: u32,
        history: &History,
    ) -> Result<(), HandleError> {
        let permit = match self.endpoints.admit(&webhook.id).await {
            Admission::Go(permit) => Some(permit),
            // Without a delay queue there is nowhere to wait: the request is made anyway.
            Admission::Defer if self.schedule.steps().is_empty() => None,
            Admission::Defer => return self.defer(webhook, event, attempt - 1, history).await,
        };
        let _in_flight = crate::metrics::in_flight();
        let report = self.deliverer.attempt(webhook, event).await;
        if let Some(permit) = permit {
            match &report.verdict {
                AttemptVerdict::Judged(Verdict::Delivered) => permit.report(true),
                AttemptVerdict::Judged(Verdict::Retry { .. }) => permit.report(false),
                _ => drop(permit),
            }
        }
        record_metrics(&report);
        if matches!(report.verdict, AttemptVerdict::Judged(Verdict::Delivered)) {
            crate::metrics::delivered(event.event.created_at)
        }
        self.log_attempt(webhook, event, attempt, &report);
        tracing::debug!(webhook_id = %webhook.id, attempt, status = ?report.status,
            error = ?report.error, "attempt");
        let dead = |reason| {
            DeadDelivery::new(
                reason,
                &event.event,
                &webhook.id,
                webhook.url.as_str(),
                attempt,
                Some(history.first_attempt_at),
                Some(&report),
            )
        };
        match &report.verdict {
            AttemptVerdict::Judged(Verdict::Delivered) => Ok(()),
            AttemptVerdict::Judged(Verdict::Retry { at_least }) => {
                match self.schedule.next(attempt, *at_least, rand::random()) {
                    Some(next) => {
                        crate::metrics::retry_scheduled(next.step);
                        let history = History::after(history.first_attempt_at, &report);
                        let job = DeliveryJob::new(
                            event.envelope(),
                            &webhook.id,
                            webhook.url.as_str(),
                            &history,
                        );
                        let headers = Headers::default().int(ATTEMPTS_HEADER, attempt.into());
                        self.publish_retry(&job, next, headers).await
                    }
                    None => {
                        self.publish_dead_delivery(&dead(DeadReason::Exhausted))
                            .await
                    }
                }
            }
            AttemptVerdict::Judged(Verdict::Gone) => {
                if let Err(e) = self
                    .cache
                    .store()
                    .disable(&webhook.account_id, &webhook.id, "gone")
                    .await
                {
                    tracing::warn!(error = %e, webhook_id = %webhook.id, "could not disable a gone webhook");
                }
                self.publish_dead_delivery(&dead(DeadReason::Gone)).await
            }
            AttemptVerdict::Refused => {
                self.publish_dead_delivery(&dead(DeadReason::TargetRefused))
                    .await
            }
        }
    }

    /// The endpoint is at its cap or its circuit is open: the delivery waits in the first delay
    /// queue without a request, and without counting an attempt.
    async fn defer(
        &self,
        webhook: &Webhook,
        event: &PreparedEvent,
        attempts_made: u32,
        history: &History,
    ) -> Result<(), HandleError> {
        metrics::counter!("hookrelay_deliveries_deferred_total").increment(1);
        tracing::debug!(webhook_id = %webhook.id, attempts_made, "endpoint slow or circuit open: deferred");
        // A new delivery waits the first step; one deferred again waits longer each time (still
        // not counted as an attempt), so a long-slow endpoint does not cycle its backlog
        // through the broker every few seconds.
        let steps = self.schedule.steps();
        let step = steps[(history.deferrals as usize).min(steps.len() - 1)];
        let next = NextAttempt {
            step,
            expiration: step.mul_f64(0.8 + 0.4 * rand::random::<f64>()),
        };
        let job = DeliveryJob::new(event.envelope(), &webhook.id, webhook.url.as_str(), history);
        let headers = Headers::default()
            .int(ATTEMPTS_HEADER, attempts_made.into())
            .int(DEFERRALS_HEADER, (history.deferrals + 1).into());
        self.publish_retry(&job, next, headers).await
    }

    async fn publish_retry(
        &self,
        job: &DeliveryJob,
        next: NextAttempt,
        headers: Headers,
    ) -> Result<(), HandleError> {
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &self.topology.retry_queue(next.step),
                body: &job.to_bytes(),
                message_id: None,
                content_type: "application/json",
                headers,
                expiration_ms: Some(next.expiration.as_millis() as u64),
            })
            .await?;
        Ok(())
    }

    fn log_attempt(
        &self,
        webhook: &Webhook,
        event: &PreparedEvent,
        attempt: u32,
        report: &AttemptReport,
    ) {
        self.attempt_log.record(
            &webhook.account_id,
            &webhook.id,
            AttemptRecord::new(attempt, event, report),
        );
    }

    async fn publish_dead_delivery(&self, dead: &DeadDelivery) -> Result<(), HandleError> {
        metrics::counter!("hookrelay_dead_letters_total", "queue" => "deliveries", "reason" => dead.reason.clone())
            .increment(1);
        tracing::info!(reason = %dead.reason, webhook_id = %dead.webhook_id, "delivery dead-lettered");
        let body = serde_json::to_vec(dead).expect("a dead letter serializes");
        let id = dead_letter_id();
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &self.topology.dlq_deliveries(),
                body: &body,
                message_id: Some(&id),
                content_type: "application/json",
                headers: dead.headers(),
                expiration_ms: None,
            })
            .await?;
        Ok(())
    }

    async fn dead_letter_event(
        &self,
        delivery: &Delivery,
        poison: &Poison,
    ) -> Result<(), HandleError> {
        metrics::counter!("hookrelay_dead_letters_total", "queue" => "events", "reason" => poison.reason.as_str())
            .increment(1);
        tracing::warn!(reason = poison.reason.as_str(), detail = %poison.detail, "poison event dead-lettered");
        let id = dead_letter_id();
        let headers = Headers::default()
            .text("hookrelay-reason", poison.reason.as_str())
            .text("hookrelay-error", super::job::truncate(&poison.detail))
            .text(
                "hookrelay-routing-key",
                super::job::truncate(delivery.routing_key.as_str()),
            );
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &self.topology.dlq_events(),
                body: &delivery.data,
                message_id: Some(&id),
                content_type: "application/octet-stream",
                headers,
                expiration_ms: None,
            })
            .await?;
        Ok(())
    }

    async fn park_unreadable_job(&self, delivery: &Delivery) -> Result<(), HandleError> {
        let id = dead_letter_id();
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &self.topology.dlq_deliveries(),
                body: &delivery.data,
                message_id: Some(&id),
                content_type: "application/octet-stream",
                headers: Headers::default().text("hookrelay-reason", "invalid_job"),
                expiration_ms: None,
            })
            .await?;
        Ok(())
    }
}

/// A non-negative integer header hookrelay wrote (`None` when absent).
fn int_header(delivery: &Delivery, key: &str) -> Option<u32> {
    let n = headers::int(delivery.properties.headers().as_ref()?, key)?;
    Some(n.clamp(0, i64::from(u32::MAX)) as u32)
}

fn record_metrics(report: &AttemptReport) {
    let result = match &report.verdict {
        AttemptVerdict::Judged(Verdict::Delivered) => "delivered",
        AttemptVerdict::Judged(Verdict::Retry { .. }) => "failed",
        AttemptVerdict::Judged(Verdict::Gone) => "gone",
        AttemptVerdict::Refused => "refused",
    };
    metrics::counter!("hookrelay_attempts_total", "result" => result).increment(1);
    metrics::histogram!("hookrelay_attempt_duration_seconds").record(report.duration.as_secs_f64());
}
