//! Replay: a dead delivery goes back to `<prefix>.deliveries` for a fresh round of attempts with
//! the same event (so the same `webhook-id`); a poison event goes back to the events exchange,
//! raw, with its original routing key. A letter is acked (removed) only after the broker
//! confirmed its republish, so a failure at any point leaves it in the queue (at worst sent
//! twice, which receivers dedupe on `webhook-id`).
//!
//! First every selected letter gets a [`plan`]: deliveries whose webhook is deleted or disabled
//! are refused unless forced, and a delivery dead-lettered twice is sent once (the later copies
//! are removed once the first is confirmed). Only then is anything published.

use super::letter::{DeadLetter, DlqQueue};
use super::snapshot::{Held, Snapshot};
use super::{release_all, Dlq, DlqError, Selection};
use crate::broker::publisher::{Headers, Outgoing, PublishError, Publisher};
use crate::event::{AccountId, Event};
use crate::messages::DeliveryJob;
use crate::subscription::store::{Store, StoreError};
use crate::subscription::WebhookId;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions {
    /// Say what would happen; publish and remove nothing.
    pub dry_run: bool,
    /// Replay deliveries even when their webhook is deleted or disabled.
    pub force: bool,
}

/// Why a letter is left in the queue without a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    WebhookDeleted,
    WebhookDisabled,
    /// The body holds no event and webhook (or no routing key) to send again.
    Unreadable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::WebhookDeleted => "webhook_deleted",
            Refusal::WebhookDisabled => "webhook_disabled",
            Refusal::Unreadable => "unreadable",
        }
    }
}

/// What replay did with one letter (in a dry run: would do).
#[derive(Debug)]
pub enum Outcome {
    /// Republished, confirmed, removed.
    Replayed,
    /// The same delivery as letter `of`, replayed in this run: removed, not sent again.
    Duplicate { of: String },
    /// Left in the queue.
    Refused(Refusal),
    /// The republish failed; left in the queue.
    Failed(PublishError),
    /// A copy of `of`, whose republish failed: left in the queue.
    Skipped { of: String },
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Replayed => "replayed",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped { .. } => "skipped",
        }
    }
}

#[derive(Debug)]
pub struct ReplayItem {
    pub letter: DeadLetter,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub struct ReplayReport {
    pub dry_run: bool,
    pub items: Vec<ReplayItem>,
}

impl ReplayReport {
    /// How many letters ended with the outcome named `name` (see [`Outcome::name`]).
    pub fn count(&self, name: &str) -> usize {
        self.items
            .iter()
            .filter(|i| i.outcome.name() == name)
            .count()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let items: Vec<_> = self
            .items
            .iter()
            .map(|i| {
                let l = &i.letter;
                let (reason, error, of) = match &i.outcome {
                    Outcome::Refused(r) => (Some(r.as_str()), None, None),
                    Outcome::Failed(e) => (None, Some(e.to_string()), None),
                    Outcome::Duplicate { of } | Outcome::Skipped { of } => (None, None, Some(of)),
                    Outcome::Replayed => (None, None, None),
                };
                serde_json::json!({
                    "id": l.id, "queue": l.queue, "event_id": l.event_id,
                    "event_type": l.event_type, "account_id": l.account_id,
                    "webhook_id": l.webhook_id, "outcome": i.outcome.name(),
                    "reason": reason, "error": error, "duplicate_of": of,
                })
            })
            .collect();
        serde_json::json!({ "dry_run": self.dry_run, "items": items })
    }
}

/// The state of a delivery's webhook, as replay needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookState {
    Enabled,
    Disabled,
    Deleted,
}

/// What to do with one letter, decided before anything is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Replay,
    /// Same dedupe key as the letter at this index, which is replayed.
    Duplicate(usize),
    Refused(Refusal),
}

/// What [`plan`] needs to know of one letter.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// [`DeadLetter::dedupe_key`].
    pub key: String,
    /// Whether the letter holds what it takes to send it again.
    pub readable: bool,
    /// The state of a delivery's webhook; `None` for events.
    pub webhook: Option<WebhookState>,
}

/// Plans the letters in queue order: refusals first, then the first of each dedupe key is
/// replayed and the later ones are its duplicates. A refused letter is never the first of a key.
pub fn plan(candidates: &[Candidate], force: bool) -> Vec<Plan> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if !c.readable {
                return Plan::Refused(Refusal::Unreadable);
            }
            match (c.webhook, force) {
                (Some(WebhookState::Deleted), false) => {
                    return Plan::Refused(Refusal::WebhookDeleted)
                }
                (Some(WebhookState::Disabled), false) => {
                    return Plan::Refused(Refusal::WebhookDisabled)
                }
                _ => {}
            }
            match first.get(c.key.as_str()) {
                Some(&of) => Plan::Duplicate(of),
                None => {
                    first.insert(&c.key, i);
                    Plan::Replay
                }
            }
        })
        .collect()
}

/// What a letter is sent as.
enum Resend {
    Delivery(DeliveryJob),
    Event { routing_key: String, body: Vec<u8> },
}

fn resend_of(letter: &DeadLetter) -> Option<(Resend, Option<(AccountId, WebhookId)>)> {
    match letter.queue {
        DlqQueue::Deliveries => {
            let event = parse_envelope(letter.event.as_ref()?.get())?;
            let webhook: WebhookId = letter.webhook_id.as_deref()?.parse().ok()?;
            let url = letter.url.clone().unwrap_or_default();
            let account = event.account_id.clone();
            let job = DeliveryJob::fresh(&event, &webhook, &url);
            Some((Resend::Delivery(job), Some((account, webhook))))
        }
        DlqQueue::Events => Some((
            Resend::Event {
                routing_key: letter.routing_key.clone()?,
                body: letter.raw_body.clone()?,
            },
            None,
        )),
    }
}

/// An envelope that was valid when it was dead-lettered, read back as ingest accepted it.
fn parse_envelope(envelope: &str) -> Option<Event> {
    Event::parse_accepted(envelope.as_bytes()).ok()
}

async fn webhook_state(
    store: &Store,
    account: &AccountId,
    id: &WebhookId,
) -> Result<WebhookState, StoreError> {
    // By the event's account, as the worker looks it up: a webhook of another account is as
    // good as deleted for this delivery.
    match store.get(account, id).await {
        Ok(w) if w.enabled => Ok(WebhookState::Enabled),
        Ok(_) => Ok(WebhookState::Disabled),
        Err(StoreError::NotFound(_)) => Ok(WebhookState::Deleted),
        Err(e) => Err(e),
    }
}

impl Dlq {
    /// Replays the selected letters (see the module documentation).
    pub async fn replay(
        &self,
        selection: &Selection,
        options: ReplayOptions,
        store: &Store,
    ) -> Result<ReplayReport, DlqError> {
        let snapshots = self.select(selection).await?;
        let result = self.replay_held(&snapshots, options, store).await;
        let released = release_all(snapshots).await;
        let report = result?;
        if !options.dry_run {
            released?;
        }
        Ok(report)
    }

    async fn replay_held(
        &self,
        snapshots: &[Snapshot],
        options: ReplayOptions,
        store: &Store,
    ) -> Result<ReplayReport, DlqError> {
        let held: Vec<(&Snapshot, &Held)> = snapshots
            .iter()
            .flat_map(|s| s.held.iter().map(move |h| (s, h)))
            .collect();
        let resends: Vec<_> = held.iter().map(|(_, h)| resend_of(&h.letter)).collect();
        let mut states = HashMap::new();
        for (_, target) in resends.iter().flatten() {
            if let Some((account, webhook)) = target {
                if !states.contains_key(webhook) {
                    states.insert(
                        webhook.clone(),
                        webhook_state(store, account, webhook).await?,
                    );
                }
            }
        }
        let candidates: Vec<Candidate> = held
            .iter()
            .zip(&resends)
            .map(|((_, h), resend)| Candidate {
                key: h.letter.dedupe_key(),
                readable: resend.is_some(),
                webhook: match resend {
                    Some((_, Some((_, webhook)))) => states.get(webhook).copied(),
                    _ => None,
                },
            })
            .collect();
        let plans = plan(&candidates, options.force);
        let publisher = match options.dry_run {
            true => None,
            false => Some(self.publisher().await?),
        };
        let mut items: Vec<ReplayItem> = Vec::with_capacity(held.len());
        for (((snapshot, held), plan), resend) in held.iter().zip(plans).zip(&resends) {
            let outcome = match (plan, resend, &publisher) {
                (Plan::Refused(r), _, _) => Outcome::Refused(r),
                (Plan::Replay, Some(_), None) => Outcome::Replayed,
                (Plan::Replay, Some((resend, _)), Some(publisher)) => {
                    match self.resend(publisher, resend).await {
                        Ok(()) => {
                            snapshot.ack(held.tag).await?;
                            Outcome::Replayed
                        }
                        Err(e) => Outcome::Failed(e),
                    }
                }
                (Plan::Duplicate(of), _, publisher) => {
                    let first = &items[of];
                    let of_id = first.letter.id.clone();
                    match (&first.outcome, publisher) {
                        (Outcome::Replayed, Some(_)) => {
                            snapshot.ack(held.tag).await?;
                            Outcome::Duplicate { of: of_id }
                        }
                        (Outcome::Replayed, None) => Outcome::Duplicate { of: of_id },
                        _ => Outcome::Skipped { of: of_id },
                    }
                }
                // `plan` refuses every letter without a resend.
                (Plan::Replay, None, _) => Outcome::Refused(Refusal::Unreadable),
            };
            items.push(ReplayItem {
                letter: held.letter.clone(),
                outcome,
            });
        }
        Ok(ReplayReport {
            dry_run: options.dry_run,
            items,
        })
    }

    async fn resend(&self, publisher: &Publisher, resend: &Resend) -> Result<(), PublishError> {
        match resend {
            Resend::Delivery(job) => job.publish_fresh(publisher, self.topology()).await,
            Resend::Event { routing_key, body } => {
                publisher
                    .publish(Outgoing {
                        exchange: &self.topology().events_exchange(),
                        routing_key,
                        body,
                        message_id: None,
                        content_type: "application/json",
                        headers: Headers::default(),
                        expiration_ms: None,
                    })
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str, webhook: Option<WebhookState>) -> Candidate {
        Candidate {
            key: key.to_owned(),
            readable: true,
            webhook,
        }
    }

    #[test]
    fn a_delivery_dead_lettered_twice_is_planned_once() {
        let on = Some(WebhookState::Enabled);
        let plans = plan(&[c("a", on), c("b", on), c("a", on)], false);
        assert_eq!(plans, vec![Plan::Replay, Plan::Replay, Plan::Duplicate(0)]);
    }

    #[test]
    fn deleted_or_disabled_webhooks_are_refused_unless_forced() {
        let letters = [
            c("a", Some(WebhookState::Deleted)),
            c("b", Some(WebhookState::Disabled)),
            c("e", None),
        ];
        assert_eq!(
            plan(&letters, false),
            vec![
                Plan::Refused(Refusal::WebhookDeleted),
                Plan::Refused(Refusal::WebhookDisabled),
                Plan::Replay
            ]
        );
        assert_eq!(plan(&letters, true), vec![Plan::Replay; 3]);
    }

    #[test]
    fn an_unreadable_letter_is_refused_even_when_forced_and_never_counts_as_first() {
        let unreadable = Candidate {
            readable: false,
            ..c("a", None)
        };
        let plans = plan(&[unreadable, c("a", None)], true);
        assert_eq!(
            plans,
            vec![Plan::Refused(Refusal::Unreadable), Plan::Replay]
        );
    }
}
