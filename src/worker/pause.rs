//! Reasons for a worker to stop taking new messages while keeping those it has: the session
//! stops reading its consumers while any reason holds, so the broker's prefetch window fills
//! and it sends no more, and nothing is handed back (a held message's delivery count does not
//! move). Handlers already running go on. Each reason is set and cleared by whoever notices it.

use std::sync::Arc;
use tokio::sync::watch;

/// Why consumption is paused; one bit each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The broker blocks publishers (memory or disk alarm): a message taken now could not
    /// publish its follow-up.
    BrokerBlocked,
}

impl Reason {
    fn bit(self) -> u8 {
        match self {
            Reason::BrokerBlocked => 1,
        }
    }
}

/// The set of reasons in force, shared by the worker's parts; cheap to clone.
#[derive(Clone)]
pub struct Pauses(Arc<watch::Sender<u8>>);

impl Default for Pauses {
    fn default() -> Self {
        Pauses(Arc::new(watch::Sender::new(0)))
    }
}

impl Pauses {
    /// Adds (`on`) or removes `reason`; true when that changed anything.
    pub fn set(&self, reason: Reason, on: bool) -> bool {
        self.0.send_if_modified(|bits| {
            let before = *bits;
            if on {
                *bits |= reason.bit();
            } else {
                *bits &= !reason.bit();
            }
            *bits != before
        })
    }

    pub fn is_paused(&self) -> bool {
        *self.0.borrow() != 0
    }

    /// A receiver that wakes on every change (for a `select!` loop).
    pub fn watch(&self) -> watch::Receiver<u8> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumption_is_paused_while_any_reason_holds_and_each_change_is_reported_once() {
        let pauses = Pauses::default();
        assert!(!pauses.is_paused());

        assert!(pauses.set(Reason::BrokerBlocked, true));
        assert!(!pauses.set(Reason::BrokerBlocked, true));
        assert!(pauses.is_paused());

        assert!(pauses.set(Reason::BrokerBlocked, false));
        assert!(!pauses.is_paused());
    }

    #[tokio::test]
    async fn a_watcher_wakes_when_a_pause_ends() {
        let pauses = Pauses::default();
        pauses.set(Reason::BrokerBlocked, true);
        let mut rx = pauses.watch();
        rx.borrow_and_update();

        pauses.set(Reason::BrokerBlocked, false);

        tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed())
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(*rx.borrow(), 0);
    }
}
