//! The exchanges and queues of DESIGN §4, and declaring them idempotently. Every queue is a
//! durable quorum queue with an explicit positive `x-delivery-limit` and a dead-letter target:
//! RabbitMQ 4.x drops a quorum-queue message past its default limit when no target is set, and
//! `-1` does not mean "unlimited" on 3.x. Names never change meaning: a delay queue is named by its
//! duration, so a changed schedule declares new queues instead of redeclaring old ones.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

/// Dead-letter queues are only read by people and `hookrelay dlq`; each listing returns the
/// messages to the queue, which counts as a delivery on quorum queues, so their limit is high.
const DLQ_DELIVERY_LIMIT: u32 = 100_000;

/// The names of one deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Topology {
    pub prefix: String,
    pub retry_steps: Vec<Duration>,
    pub delivery_limit: u32,
}

impl Topology {
    /// The topology the settings describe: `amqp.prefix`, `delivery.retry_schedule` and
    /// `amqp.delivery_limit`. The one way the binary's commands build it.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self::new(
            &settings.amqp.prefix,
            &settings.delivery.retry_schedule,
            settings.amqp.delivery_limit,
        )
    }

    pub fn new(prefix: &str, retry_steps: &[Duration], delivery_limit: u32) -> Self {
        Topology {
            prefix: prefix.to_owned(),
            retry_steps: retry_steps.to_vec(),
            delivery_limit,
        }
    }

    /// The topic exchange upstream publishes to, and the work queue bound to it with `#`.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn events_queue(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The topic exchange of operational events (`webhook.failing`, ...; see `operational`),
    /// for the platform to bind its own queues to.
    pub fn operational_exchange(&self) -> String {
        format!("{}.operational", self.prefix)
    }

    /// Deliveries that need another attempt.
    pub fn deliveries_queue(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    pub fn dlq_events(&self) -> String {
        format!("{}.dlq.events", self.prefix)
    }

    pub fn dlq_deliveries(&self) -> String {
        format!("{}.dlq.deliveries", self.prefix)
    }

    pub fn retry_queue(&self, step: Duration) -> String {
        format!("{}.retry.{}", self.prefix, duration_name(step))
    }

    /// Every queue this topology declares, work queues first.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.events_queue(),
            self.deliveries_queue(),
            self.dlq_events(),
            self.dlq_deliveries(),
        ];
        for step in &self.retry_steps {
            let q = self.retry_queue(*step);
            if !queues.contains(&q) {
                queues.push(q);
            }
        }
        queues
    }

    /// Declares everything; safe to run any number of times, by any number of workers at once.
    /// A queue that exists with other arguments is an error (RabbitMQ answers 406), never
    /// silently redeclared.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        // Durable like the events exchange; hookrelay binds nothing to it: the platform's
        // consumers bind their own queues (with the routing keys they want).
        channel
            .exchange_declare(
                self.operational_exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let work_limit = self.delivery_limit;
        declare_queue(
            channel,
            &self.events_queue(),
            work_limit,
            &self.dlq_events(),
        )
        .await?;
        declare_queue(
            channel,
            &self.deliveries_queue(),
            work_limit,
            &self.dlq_deliveries(),
        )
        .await?;
        // A dead-letter queue's own target is itself: past its (high) limit a message goes to
        // the back of the same queue rather than anywhere it could be lost.
        for dlq in [self.dlq_events(), self.dlq_deliveries()] {
            declare_queue(channel, &dlq, DLQ_DELIVERY_LIMIT, &dlq).await?;
        }
        for step in &self.retry_steps {
            // Expired messages go back to the work; nobody consumes a delay queue, so its
            // delivery limit only matters if someone does by mistake.
            declare_queue(
                channel,
                &self.retry_queue(*step),
                work_limit,
                &self.deliveries_queue(),
            )
            .await?;
        }
        channel
            .queue_bind(
                self.events_queue().into(),
                self.events_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    delivery_limit: u32,
    dead_letter_to: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum_arguments(delivery_limit, dead_letter_to),
        )
        .await
        .map(|_| ())
}

fn quorum_arguments(delivery_limit: u32, dead_letter_to: &str) -> FieldTable {
    let mut args = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    // Quorum: replicated and durable; the only queue type RabbitMQ 4.x keeps first-class.
    // No x-quorum-initial-group-size: the broker's default places members on the cluster's
    // nodes (3 members on a 3-node RabbitMQ 3.10.8 cluster: `rabbitmq-queues quorum_status`
    // in scripts/brokers.sh), so every queue survives the loss of one node.
    args.insert(ShortString::from("x-queue-type"), text("quorum"));
    // Explicit and positive: a message returned this often is dead-lettered, not dropped.
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    // The default exchange routes by queue name, so the target needs no extra exchange.
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        text(dead_letter_to),
    );
    // At-least-once dead-lettering: the broker keeps a message until its target confirmed it.
    // It requires reject-publish overflow; no length limit is set, so nothing is rejected.
    args.insert(
        ShortString::from("x-dead-letter-strategy"),
        text("at-least-once"),
    );
    args.insert(ShortString::from("x-overflow"), text("reject-publish"));
    args
}

/// `5s`, `5m`, `2h`, `500ms`, `1m30s`: a short name that is unique per duration.
pub fn duration_name(d: Duration) -> String {
    let mut ms = d.as_millis();
    let mut name = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size {
            name.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 || name.is_empty() {
        name.push_str(&format!("{ms}ms"));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queues_are_named_by_their_duration() {
        let t = Topology::new(
            "hr",
            &[Duration::from_secs(5), Duration::from_secs(300)],
            20,
        );
        assert_eq!(t.retry_queue(Duration::from_secs(5)), "hr.retry.5s");
        assert_eq!(duration_name(Duration::from_secs(300)), "5m");
        assert_eq!(duration_name(Duration::from_secs(7200)), "2h");
        assert_eq!(duration_name(Duration::from_millis(500)), "500ms");
        assert_eq!(duration_name(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration_name(Duration::from_secs(86_400)), "1d");
    }
}
