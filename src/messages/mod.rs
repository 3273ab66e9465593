//! What travels on hookrelay's queues, in one place: the delivery job between attempts
//! ([`job`]), the dead letters and their reasons ([`dead`]), the names of the AMQP headers
//! hookrelay writes ([`header`]) and the table they are written into ([`headers`]). The worker
//! writes these messages; `dlq` and the API read or rewrite them. Nothing here imports the
//! worker.

pub mod dead;
pub mod headers;
pub mod job;

pub use dead::{DeadDelivery, DeadReason};
pub use job::{DeliveryJob, History};

/// The AMQP headers hookrelay writes (DESIGN §4), as constants for writers and readers alike.
pub mod header {
    /// Attempts made so far. RabbitMQ 3.13+ no longer counts a republished `x-death`, so the
    /// broker's own count cannot be used.
    pub const ATTEMPTS: &str = "hookrelay-attempts";
    /// Times a delivery waited without an attempt (a slow endpoint, an open circuit).
    pub const DEFERRALS: &str = "hookrelay-deferrals";
    pub const REASON: &str = "hookrelay-reason";
    pub const EVENT_ID: &str = "hookrelay-event-id";
    pub const EVENT_TYPE: &str = "hookrelay-event-type";
    pub const ACCOUNT_ID: &str = "hookrelay-account-id";
    pub const WEBHOOK_ID: &str = "hookrelay-webhook-id";
    pub const URL: &str = "hookrelay-url";
    pub const LAST_STATUS: &str = "hookrelay-last-status";
    pub const LAST_ERROR: &str = "hookrelay-last-error";
    pub const FIRST_ATTEMPT_AT: &str = "hookrelay-first-attempt-at";
    pub const LAST_ATTEMPT_AT: &str = "hookrelay-last-attempt-at";
    /// A poison event's explanation, and the routing key it was published with.
    pub const ERROR: &str = "hookrelay-error";
    pub const ROUTING_KEY: &str = "hookrelay-routing-key";
}
