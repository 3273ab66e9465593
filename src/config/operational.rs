//! `[operational]`: the operational events (`webhook.failing`, `webhook.disabled`,
//! `webhook.recovered`, `delivery.dead_lettered`) a worker publishes to
//! `<prefix>.operational` for the platform (DESIGN §4, docs/operational-events.md).

use serde::Deserialize;

/// What the layers hold for `[operational]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOperational {
    dead_letter_events: bool,
}

/// The operational events' settings.
#[derive(Clone, Debug)]
pub struct OperationalSettings {
    /// Whether each dead letter in `<prefix>.dlq.deliveries` is also announced as a
    /// `delivery.dead_lettered` event (platforms that only want the webhook-level ones turn
    /// it off).
    pub dead_letter_events: bool,
}

impl RawOperational {
    /// Nothing to check: a boolean is valid once parsed.
    pub(super) fn settle(self) -> OperationalSettings {
        OperationalSettings {
            dead_letter_events: self.dead_letter_events,
        }
    }
}
