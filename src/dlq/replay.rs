//! Replay: a dead delivery goes back to `<prefix>.deliveries` for a fresh round of attempts with
//! the same event (so the same `webhook-id`); a poison event goes back to the events exchange,
//! raw, with its original routing key. A letter is acked (removed) only after the broker
//! confirmed its own republish, so a failure at any point leaves it in the queue (at worst sent
//! twice, which receivers dedupe on `webhook-id`).
//!
//! Each letter gets a [`Plan`] from a [`Planner`] before anything is sent: deliveries whose
//! webhook is deleted or disabled are refused unless forced, and a delivery dead-lettered twice
//! is sent once (the later copies are removed once the first is confirmed). The I/O then carries
//! out the plans, pipelined: up to [`IN_FLIGHT`] republishes wait for their confirms at once,
//! each in a task of its own, and the letters are settled (acked, reported) in queue order as
//! their confirms arrive. `--rate` spaces the republishes. On SIGINT or SIGTERM nothing new is
//! sent; the republishes in flight are awaited and their letters acked, and everything else
//! goes back to the queue in its order: run the same command again to continue, and no letter
//! is sent twice.
//!
//! One file, though long: the plan (pure) and the pipelined I/O that carries it out share one
//! invariant, a letter acked only after its republish is confirmed and settled in queue order,
//! and reading them apart would hide where it holds. The selection it works through is in
//! `super::selected`.

use super::letter::{DeadLetter, DlqQueue};
pub use super::plan::{plan, Candidate, Plan, Planner, Refusal, WebhookState};
use super::snapshot::Tag;
use super::{Control, Dlq, DlqError, Selected, Selection, Summary};
use crate::broker::publisher::{Headers, Outgoing, PublishError, Publisher};
use crate::broker::topology::Topology;
use crate::event::{AccountId, Event};
use crate::messages::DeliveryJob;
use crate::subscription::store::{Store, StoreError};
use crate::subscription::WebhookId;
use crate::telemetry::context::TraceContext;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions {
    /// Say what would happen; publish and remove nothing.
    pub dry_run: bool,
    /// Replay deliveries even when their webhook is deleted or disabled.
    pub force: bool,
    /// At most this many republishes per second (a recovering merchant is not flooded).
    pub rate: Option<f64>,
}

/// Republishes waiting for their confirms at once.
pub const IN_FLIGHT: usize = 512;

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

impl ReplayItem {
    pub fn to_json(&self) -> serde_json::Value {
        let l = &self.letter;
        let (reason, error, of) = match &self.outcome {
            Outcome::Refused(r) => (Some(r.as_str()), None, None),
            Outcome::Failed(e) => (None, Some(e.to_string()), None),
            Outcome::Duplicate { of } | Outcome::Skipped { of } => (None, None, Some(of)),
            Outcome::Replayed => (None, None, None),
        };
        serde_json::json!({
            "id": l.id, "queue": l.queue, "event_id": l.event_id,
            "event_type": l.event_type, "account_id": l.account_id,
            "webhook_id": l.webhook_id, "outcome": self.outcome.name(),
            "reason": reason, "error": error, "duplicate_of": of,
        })
    }
}

/// How many letters ended with each outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub replayed: u64,
    pub duplicate: u64,
    pub refused: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Replayed => self.replayed += 1,
            Outcome::Duplicate { .. } => self.duplicate += 1,
            Outcome::Refused(_) => self.refused += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Skipped { .. } => self.skipped += 1,
        }
    }

    /// Letters settled, whatever their outcome.
    pub fn total(&self) -> u64 {
        self.replayed + self.duplicate + self.refused + self.failed + self.skipped
    }

    /// Letters left in the queue for a reason (not for an interruption).
    pub fn left(&self) -> u64 {
        self.refused + self.failed + self.skipped
    }
}

/// A replay's collected items (see [`Dlq::replay_each`] for a queue of any size).
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
        let items: Vec<_> = self.items.iter().map(ReplayItem::to_json).collect();
        serde_json::json!({ "dry_run": self.dry_run, "items": items })
    }
}

/// How far a replay got.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplaySummary {
    pub dry_run: bool,
    pub counts: Counts,
    #[serde(flatten)]
    pub summary: Summary,
}

/// What a letter is sent as.
enum Resend {
    Delivery(DeliveryJob, Option<TraceContext>),
    Event {
        routing_key: String,
        body: Vec<u8>,
        trace: Option<TraceContext>,
    },
}

impl Resend {
    /// Sends it, in the dead letter's trace: the replayed delivery's spans join the trace that
    /// dead-lettered it, days later if need be.
    async fn publish(self, publisher: Publisher, topology: Topology) -> Result<(), PublishError> {
        match self {
            Resend::Delivery(job, trace) => {
                job.publish_fresh(&publisher, &topology, trace.as_ref())
                    .await
            }
            Resend::Event {
                routing_key,
                body,
                trace,
            } => {
                publisher
                    .publish(Outgoing {
                        exchange: &topology.events_exchange(),
                        routing_key: &routing_key,
                        body: &body,
                        message_id: None,
                        content_type: "application/json",
                        headers: match &trace {
                            Some(trace) => trace.to_amqp(Headers::default()),
                            None => Headers::default(),
                        },
                        expiration_ms: None,
                    })
                    .await
            }
        }
    }
}

fn resend_of(letter: &DeadLetter) -> Option<(Resend, Option<(AccountId, WebhookId)>)> {
    match letter.queue {
        DlqQueue::Deliveries => {
            let event = parse_envelope(letter.event.as_ref()?.get())?;
            let webhook: WebhookId = letter.webhook_id.as_deref()?.parse().ok()?;
            let url = letter.url.clone().unwrap_or_default();
            let account = event.account_id.clone();
            let job = DeliveryJob::fresh(&event, &webhook, &url);
            Some((
                Resend::Delivery(job, letter.trace.clone()),
                Some((account, webhook)),
            ))
        }
        DlqQueue::Events => Some((
            Resend::Event {
                routing_key: letter.routing_key.clone()?,
                body: letter.raw_body.clone()?,
                trace: letter.trace.clone(),
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

/// A letter between its plan and its outcome.
struct Pending {
    at: usize,
    tag: Tag,
    letter: DeadLetter,
    step: Step,
}

enum Step {
    Refused(Refusal),
    /// Planned as the replay numbered `index`: sent (its confirm awaited by the task), or in a
    /// dry run not sent.
    Sent(usize, JoinHandle<Result<(), PublishError>>),
    DryRun(usize),
    /// A copy of the replay numbered `index`, settled after it.
    Duplicate(usize),
}

/// What became of a replayed first copy, for its later duplicates.
struct First {
    id: Box<str>,
    replayed: bool,
}

/// One replay run: the plans made so far and the letters waiting for their confirms.
struct Run<'a> {
    dlq: &'a Dlq,
    store: &'a Store,
    options: ReplayOptions,
    publisher: Option<Publisher>,
    planner: Planner,
    states: HashMap<WebhookId, WebhookState>,
    firsts: HashMap<usize, First>,
    pending: VecDeque<Pending>,
    next_slot: Option<tokio::time::Instant>,
    counts: Counts,
}

impl Run<'_> {
    /// Reads, plans and sends until the selection is exhausted or a signal arrives, then
    /// settles every letter still in flight.
    async fn go(
        &mut self,
        selected: &mut Selected<'_>,
        control: Control<'_>,
        sink: &mut impl FnMut(ReplayItem),
    ) -> Result<(), DlqError> {
        let result = self.send_all(selected, control, sink).await;
        // Whatever stopped the run, the letters in flight are settled: a confirmed republish is
        // acked now, so that running the command again never sends it twice.
        while !self.pending.is_empty() {
            self.settle_front(selected, sink).await?;
        }
        result
    }

    async fn send_all(
        &mut self,
        selected: &mut Selected<'_>,
        control: Control<'_>,
        sink: &mut impl FnMut(ReplayItem),
    ) -> Result<(), DlqError> {
        loop {
            while self.front_is_done() || self.pending.len() >= IN_FLIGHT {
                self.settle_front(selected, sink).await?;
                selected.progress(self.counts.total());
            }
            let next = tokio::select! {
                biased;
                _ = control.shutdown.cancelled() => {
                    selected.summary.interrupted = true;
                    return Ok(());
                }
                next = selected.next() => next?,
            };
            let Some((at, held)) = next else {
                return Ok(());
            };
            let Some(step) = self.plan(&held.letter, control.shutdown).await? else {
                // Not sent: the letter goes back with the rest.
                selected.summary.interrupted = true;
                return Ok(());
            };
            self.pending.push_back(Pending {
                at,
                tag: held.tag,
                letter: held.letter.without_body(),
                step,
            });
        }
    }

    /// What to do with one letter: refuse it, drop it as a duplicate, or send it (in a dry run,
    /// only count it). `None` when shutdown came while it waited for its slot (`--rate`).
    async fn plan(
        &mut self,
        letter: &DeadLetter,
        shutdown: &CancellationToken,
    ) -> Result<Option<Step>, DlqError> {
        let resend = resend_of(letter);
        let candidate = Candidate {
            key: letter.dedupe_key(),
            readable: resend.is_some(),
            webhook: match &resend {
                Some((_, Some((account, webhook)))) => {
                    Some(self.webhook_state(account, webhook).await?)
                }
                _ => None,
            },
        };
        let index = self.planner.seen;
        let publisher = self.publisher.clone();
        Ok(Some(
            match (self.planner.decide(&candidate), resend, publisher) {
                (Plan::Refused(r), _, _) => Step::Refused(r),
                (Plan::Duplicate(of), _, _) => Step::Duplicate(of),
                (Plan::Replay, Some((resend, _)), Some(publisher)) => {
                    if !self.wait_for_slot(shutdown).await {
                        return Ok(None);
                    }
                    let task = resend.publish(publisher, self.dlq.topology().clone());
                    self.first(index, letter);
                    Step::Sent(index, tokio::spawn(task))
                }
                (Plan::Replay, Some(_), None) => {
                    self.first(index, letter);
                    Step::DryRun(index)
                }
                // The planner refuses every letter without a resend.
                (Plan::Replay, None, _) => Step::Refused(Refusal::Unreadable),
            },
        ))
    }

    fn first(&mut self, index: usize, letter: &DeadLetter) {
        self.firsts.insert(
            index,
            First {
                id: letter.id.as_str().into(),
                replayed: false,
            },
        );
    }

    async fn webhook_state(
        &mut self,
        account: &AccountId,
        webhook: &WebhookId,
    ) -> Result<WebhookState, DlqError> {
        if let Some(state) = self.states.get(webhook) {
            return Ok(*state);
        }
        let state = webhook_state(self.store, account, webhook).await?;
        self.states.insert(webhook.clone(), state);
        Ok(state)
    }

    /// Waits for the next republish slot under `--rate`; false if a signal came first.
    async fn wait_for_slot(&mut self, shutdown: &CancellationToken) -> bool {
        let Some(rate) = self.options.rate.filter(|r| *r > 0.0) else {
            return true;
        };
        let now = tokio::time::Instant::now();
        let at = self.next_slot.unwrap_or(now).max(now);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep_until(at) => {}
        }
        self.next_slot = Some(at + Duration::from_secs_f64(1.0 / rate));
        true
    }

    fn front_is_done(&self) -> bool {
        match self.pending.front().map(|p| &p.step) {
            Some(Step::Sent(_, task)) => task.is_finished(),
            Some(_) => true,
            None => false,
        }
    }

    /// Settles the oldest letter: awaits its confirm, acks it if it is to be removed, reports.
    async fn settle_front(
        &mut self,
        selected: &mut Selected<'_>,
        sink: &mut impl FnMut(ReplayItem),
    ) -> Result<(), DlqError> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        let dry_run = self.options.dry_run;
        let outcome = match p.step {
            Step::Refused(r) => Outcome::Refused(r),
            Step::DryRun(index) => self.mark(index, true, Outcome::Replayed),
            Step::Sent(index, task) => match task.await {
                Ok(Ok(())) => {
                    selected.ack(p.at, p.tag, &p.letter.id).await?;
                    self.mark(index, true, Outcome::Replayed)
                }
                Ok(Err(e)) => self.mark(index, false, Outcome::Failed(e)),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            Step::Duplicate(of) => {
                let first = self
                    .firsts
                    .get(&of)
                    .expect("a duplicate's first copy was planned, and settled, before it");
                let of = first.id.to_string();
                if first.replayed {
                    if !dry_run {
                        selected.ack(p.at, p.tag, &p.letter.id).await?;
                    }
                    Outcome::Duplicate { of }
                } else {
                    Outcome::Skipped { of }
                }
            }
        };
        self.counts.add(&outcome);
        sink(ReplayItem {
            letter: p.letter,
            outcome,
        });
        Ok(())
    }

    fn mark(&mut self, index: usize, replayed: bool, outcome: Outcome) -> Outcome {
        if let Some(first) = self.firsts.get_mut(&index) {
            first.replayed = replayed;
        }
        outcome
    }
}

impl Dlq {
    /// Replays the selected letters and collects what became of each (see
    /// [`Dlq::replay_each`] for a queue of any size).
    pub async fn replay(
        &self,
        selection: &Selection,
        options: ReplayOptions,
        store: &Store,
    ) -> Result<ReplayReport, DlqError> {
        let mut items = Vec::new();
        self.replay_each(selection, options, store, Control::none(), |i| {
            items.push(i)
        })
        .await?;
        Ok(ReplayReport {
            dry_run: options.dry_run,
            items,
        })
    }

    /// Replays the selected letters (see the module documentation), handing each letter's
    /// outcome to `sink` in queue order as it is settled.
    pub async fn replay_each(
        &self,
        selection: &Selection,
        options: ReplayOptions,
        store: &Store,
        control: Control<'_>,
        mut sink: impl FnMut(ReplayItem),
    ) -> Result<ReplaySummary, DlqError> {
        let mut selected = Selected::open(self, selection, control).await?;
        let publisher = match options.dry_run {
            true => Ok(None),
            false => self.publisher().await.map(Some),
        };
        let mut run = Run {
            dlq: self,
            store,
            options,
            publisher: None,
            planner: Planner::new(options.force),
            states: HashMap::new(),
            firsts: HashMap::new(),
            pending: VecDeque::new(),
            next_slot: None,
            counts: Counts::default(),
        };
        let result = match publisher {
            Ok(publisher) => {
                run.publisher = publisher;
                run.go(&mut selected, control, &mut sink).await
            }
            Err(e) => Err(e),
        };
        let counts = run.counts;
        let (summary, released) = selected.release(self).await;
        result?;
        if !options.dry_run {
            released?;
        }
        Ok(ReplaySummary {
            dry_run: options.dry_run,
            counts,
            summary,
        })
    }
}
