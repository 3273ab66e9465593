//! Which dead letters a replay sends, decided before anything is sent: a pure rule over what is
//! known of each letter (readable, its webhook's state, its dedupe key), in queue order. The
//! replay in [`super::replay`] carries it out.

use sha2::{Digest, Sha256};
use std::collections::hash_map::Entry;
use std::collections::HashMap;

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
    /// Same dedupe key as the letter at this index (in the order planned), which is replayed.
    Duplicate(usize),
    Refused(Refusal),
}

/// What [`Planner::decide`] needs to know of one letter.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// [`DeadLetter::dedupe_key`].
    pub key: String,
    /// Whether the letter holds what it takes to send it again.
    pub readable: bool,
    /// The state of a delivery's webhook; `None` for events.
    pub webhook: Option<WebhookState>,
}

/// Plans letters one at a time in queue order: refusals first, then the first of each dedupe
/// key is replayed and the later ones are its duplicates. A refused letter is never the first
/// of a key. Pure; it remembers 16 bytes of hash and an index per key replayed.
pub struct Planner {
    force: bool,
    first: HashMap<[u8; 16], usize>,
    /// Letters decided so far: the index the next one gets.
    pub(super) seen: usize,
}

impl Planner {
    pub fn new(force: bool) -> Planner {
        Planner {
            force,
            first: HashMap::new(),
            seen: 0,
        }
    }

    pub fn decide(&mut self, c: &Candidate) -> Plan {
        let index = self.seen;
        self.seen += 1;
        if !c.readable {
            return Plan::Refused(Refusal::Unreadable);
        }
        match (c.webhook, self.force) {
            (Some(WebhookState::Deleted), false) => return Plan::Refused(Refusal::WebhookDeleted),
            (Some(WebhookState::Disabled), false) => {
                return Plan::Refused(Refusal::WebhookDisabled)
            }
            _ => {}
        }
        let digest = Sha256::digest(c.key.as_bytes());
        let key: [u8; 16] = digest[..16].try_into().expect("SHA-256 has 32 bytes");
        match self.first.entry(key) {
            Entry::Occupied(e) => Plan::Duplicate(*e.get()),
            Entry::Vacant(e) => {
                e.insert(index);
                Plan::Replay
            }
        }
    }
}

/// Plans a whole list at once (see [`Planner`]).
pub fn plan(candidates: &[Candidate], force: bool) -> Vec<Plan> {
    let mut planner = Planner::new(force);
    candidates.iter().map(|c| planner.decide(c)).collect()
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
