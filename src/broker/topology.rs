//! The exchanges and queues of DESIGN §4, and declaring them idempotently. Every queue is a
//! durable quorum queue with an explicit positive `x-delivery-limit` and a dead-letter target:
//! RabbitMQ 4.x drops a quorum-queue message past its default limit when no target is set, and
//! `-1` does not mean "unlimited" on 3.x. Names never change meaning: a delay queue is named by its
//! duration, so a changed schedule declares new queues instead of redeclaring old ones.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

pub use super::partitions::TopologyError;

/// Dead-letter queues are only read by people and `hookrelay dlq`; each listing returns the
/// messages to the queue, which counts as a delivery on quorum queues, so their limit is high.
const DLQ_DELIVERY_LIMIT: u32 = 100_000;

/// The names of one deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Topology {
    pub prefix: String,
    pub retry_steps: Vec<Duration>,
    pub delivery_limit: u32,
    /// `amqp.partitions`: work queues per kind; 1 keeps the unnumbered names.
    pub partitions: u16,
}

impl Topology {
    /// The topology the settings describe: `amqp.prefix`, `delivery.retry_schedule`,
    /// `amqp.delivery_limit` and `amqp.partitions`. The one way the binary's commands build it.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self::new(
            &settings.amqp.prefix,
            &settings.delivery.retry_schedule,
            settings.amqp.delivery_limit,
        )
        .with_partitions(settings.amqp.partitions)
    }

    /// One partition: the names of DESIGN §4.
    pub fn new(prefix: &str, retry_steps: &[Duration], delivery_limit: u32) -> Self {
        Topology {
            prefix: prefix.to_owned(),
            retry_steps: retry_steps.to_vec(),
            delivery_limit,
            partitions: 1,
        }
    }

    /// `n` work queues per kind (at least 1).
    pub fn with_partitions(mut self, n: u16) -> Self {
        self.partitions = n.max(1);
        self
    }

    /// Partitioned (N > 1): numbered work queues behind consistent-hash exchanges.
    pub fn is_partitioned(&self) -> bool {
        self.partitions > 1
    }

    /// The topic exchange upstream publishes to, and the work queue bound to it with `#`.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The events queue of one partition: `<prefix>.events` unpartitioned, else
    /// `<prefix>.events.<p>`.
    pub fn events_queue_of(&self, p: u16) -> String {
        self.numbered("events", p)
    }

    /// The topic exchange of operational events (`webhook.failing`, ...; see `operational`),
    /// for the platform to bind its own queues to.
    pub fn operational_exchange(&self) -> String {
        format!("{}.operational", self.prefix)
    }

    /// The deliveries queue of one partition, named as [`Self::events_queue_of`].
    pub fn deliveries_queue_of(&self, p: u16) -> String {
        self.numbered("deliveries", p)
    }

    fn numbered(&self, kind: &str, p: u16) -> String {
        if self.is_partitioned() {
            format!("{}.{kind}.{p}", self.prefix)
        } else {
            format!("{}.{kind}", self.prefix)
        }
    }

    /// The events queue when unpartitioned (`<prefix>.events`); partition 0 otherwise.
    pub fn events_queue(&self) -> String {
        self.events_queue_of(0)
    }

    /// Deliveries that need another attempt (unpartitioned; partition 0 otherwise).
    pub fn deliveries_queue(&self) -> String {
        self.deliveries_queue_of(0)
    }

    /// Every events queue, partition 0 first.
    pub fn events_queues(&self) -> Vec<String> {
        (0..self.partitions)
            .map(|p| self.events_queue_of(p))
            .collect()
    }

    /// Every deliveries queue, partition 0 first.
    pub fn deliveries_queues(&self) -> Vec<String> {
        (0..self.partitions)
            .map(|p| self.deliveries_queue_of(p))
            .collect()
    }

    /// The consistent-hash exchange in front of the events partitions (partitioned only).
    pub fn events_hash_exchange(&self) -> String {
        format!("{}.events.hash", self.prefix)
    }

    /// The consistent-hash exchange in front of the deliveries partitions (partitioned only):
    /// where the delay queues dead-letter to and fresh deliveries are published.
    pub fn deliveries_hash_exchange(&self) -> String {
        format!("{}.deliveries.hash", self.prefix)
    }

    /// Where a delivery for another attempt goes, as (exchange, routing key): the deliveries
    /// queue through the default exchange, or, partitioned, the deliveries hash exchange (which
    /// hashes the `message_id`, so such a publish must carry one).
    pub fn deliveries_route(&self) -> (String, String) {
        if self.is_partitioned() {
            (
                self.deliveries_hash_exchange(),
                format!("{}.deliveries", self.prefix),
            )
        } else {
            (String::new(), self.deliveries_queue())
        }
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

    /// The delay queues, one per distinct step.
    pub fn retry_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = Vec::new();
        for step in &self.retry_steps {
            let q = self.retry_queue(*step);
            if !queues.contains(&q) {
                queues.push(q);
            }
        }
        queues
    }

    /// Every queue this topology declares, work queues first.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = self.events_queues();
        queues.extend(self.deliveries_queues());
        queues.push(self.dlq_events());
        queues.push(self.dlq_deliveries());
        queues.extend(self.retry_queues());
        queues
    }

    /// Every exchange this topology declares: the events exchange, the operational exchange,
    /// then, partitioned, the two hash exchanges.
    pub fn all_exchanges(&self) -> Vec<String> {
        let mut exchanges = vec![self.events_exchange(), self.operational_exchange()];
        if self.is_partitioned() {
            exchanges.push(self.events_hash_exchange());
            exchanges.push(self.deliveries_hash_exchange());
        }
        exchanges
    }

    /// Declares everything; safe to run any number of times, by any number of workers at once.
    /// A queue that exists with other arguments is an error (RabbitMQ answers 406), never
    /// silently redeclared. Partitioned, the hash exchanges come first, so that a broker
    /// without the plugin fails before anything else is declared
    /// ([`super::partitions::prepare`] turns that into [`TopologyError::PluginMissing`]).
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        if self.is_partitioned() {
            self.declare_hash_exchanges(channel).await?;
        }
        declare_topic(channel, &self.events_exchange()).await?;
        // hookrelay binds nothing to the operational exchange: the platform's consumers bind
        // their own queues (with the routing keys they want).
        declare_topic(channel, &self.operational_exchange()).await?;
        let work_limit = self.delivery_limit;
        for p in 0..self.partitions {
            let placing = self.placing();
            declare_queue(
                channel,
                &self.events_queue_of(p),
                quorum_arguments(work_limit, "", &self.dlq_events()).with(placing),
            )
            .await?;
            declare_queue(
                channel,
                &self.deliveries_queue_of(p),
                quorum_arguments(work_limit, "", &self.dlq_deliveries()).with(placing),
            )
            .await?;
        }
        // A dead-letter queue's own target is itself: past its (high) limit a message goes to
        // the back of the same queue rather than anywhere it could be lost.
        for dlq in [self.dlq_events(), self.dlq_deliveries()] {
            declare_queue(
                channel,
                &dlq,
                quorum_arguments(DLQ_DELIVERY_LIMIT, "", &dlq),
            )
            .await?;
        }
        for queue in self.retry_queues() {
            declare_queue(channel, &queue, self.delay_arguments()).await?;
        }
        self.bind(channel).await
    }

    /// The two consistent-hash exchanges, unbound until [`Self::declare`] binds them.
    pub(super) async fn declare_hash_exchanges(
        &self,
        channel: &Channel,
    ) -> Result<(), lapin::Error> {
        declare_hash_exchange(channel, &self.events_hash_exchange()).await?;
        declare_hash_exchange(channel, &self.deliveries_hash_exchange()).await
    }

    /// A delay queue's arguments. Expired messages go back to the work; nobody consumes a delay
    /// queue, so its delivery limit only matters if someone does by mistake. Partitioned, the
    /// target is the deliveries hash exchange (the routing key is then not used).
    pub(super) fn delay_arguments(&self) -> FieldTable {
        let (exchange, key) = self.deliveries_route();
        quorum_arguments(self.delivery_limit, &exchange, &key)
    }

    /// Partitioned: spread the work queues' leaders over the cluster's nodes. Unpartitioned
    /// nothing is added, so that today's queues keep their exact arguments.
    fn placing(&self) -> Placing {
        if self.is_partitioned() {
            Placing::Balanced
        } else {
            Placing::Default
        }
    }

    /// Unpartitioned: the events queue on the topic exchange with `#`. Partitioned: the events
    /// hash exchange on the topic exchange with `#` (an exchange-to-exchange binding, so
    /// publishers change nothing), and each partition on its hash exchange with weight 1.
    async fn bind(&self, channel: &Channel) -> Result<(), lapin::Error> {
        if !self.is_partitioned() {
            return bind_queue(channel, &self.events_queue(), &self.events_exchange(), "#").await;
        }
        channel
            .exchange_bind(
                self.events_hash_exchange().into(),
                self.events_exchange().into(),
                "#".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for p in 0..self.partitions {
            // The binding key is the partition's weight: equal weights, equal shares.
            let (events, deliveries) = (self.events_queue_of(p), self.deliveries_queue_of(p));
            bind_queue(channel, &events, &self.events_hash_exchange(), "1").await?;
            bind_queue(channel, &deliveries, &self.deliveries_hash_exchange(), "1").await?;
        }
        Ok(())
    }
}

/// The consistent-hash exchange type of the `rabbitmq_consistent_hash_exchange` plugin.
pub const HASH_EXCHANGE_TYPE: &str = "x-consistent-hash";

/// Hashes the `message_id` property, not the routing key (the event type: 27 values, far too
/// few to spread) and not the account (in the body, which an exchange cannot read; and one
/// large merchant would pin its whole load on one leader, the wall partitions remove). Order
/// is not promised (DESIGN §3), so nothing needs an account's events on one queue. A message
/// without a `message_id` hashes as "undefined": all such go to one partition, still
/// delivered. `hash-property` with `message_id` is read the same way by the plugin on 3.10 and
/// on 4.x (`hash-header` would need publishers to add a header).
async fn declare_hash_exchange(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("hash-property"),
        AMQPValue::LongString(LongString::from("message_id".as_bytes().to_vec())),
    );
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Custom(HASH_EXCHANGE_TYPE.to_owned()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
}

async fn bind_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// A durable topic exchange (the events and the operational ones).
async fn declare_topic(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Where the broker puts a work queue's leader.
#[derive(Clone, Copy)]
enum Placing {
    /// No argument: the broker's default (the declaring connection's node), as before partitions.
    Default,
    /// `x-queue-leader-locator: balanced`: the node with the fewest leaders, so N partitions'
    /// leaders spread over the cluster. Accepted by 3.10.8 but not acted on there: in
    /// `scripts/brokers.sh partitions` all three leaders were on the declaring connection's node
    /// (3.10 places quorum leaders client-local); later versions document the argument.
    Balanced,
}

trait WithPlacing {
    fn with(self, placing: Placing) -> Self;
}

impl WithPlacing for FieldTable {
    fn with(mut self, placing: Placing) -> Self {
        if let Placing::Balanced = placing {
            self.insert(
                ShortString::from("x-queue-leader-locator"),
                AMQPValue::LongString(LongString::from(b"balanced".to_vec())),
            );
        }
        self
    }
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .map(|_| ())
}

/// Dead-letters to `exchange` with `routing_key`; `""` is the default exchange, which routes by
/// queue name, so the key is then the target queue.
fn quorum_arguments(delivery_limit: u32, exchange: &str, routing_key: &str) -> FieldTable {
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
    // The default exchange routes by queue name, so a queue target needs no extra exchange.
    args.insert(ShortString::from("x-dead-letter-exchange"), text(exchange));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        text(routing_key),
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

    #[test]
    fn one_partition_keeps_the_unnumbered_names_and_routes_retries_by_queue_name() {
        let t = Topology::new("hr", &[Duration::from_secs(5)], 20);
        assert_eq!(t.events_queues(), ["hr.events"]);
        assert_eq!(t.deliveries_queues(), ["hr.deliveries"]);
        assert_eq!(
            t.deliveries_route(),
            (String::new(), "hr.deliveries".into())
        );
        assert_eq!(t.all_exchanges(), ["hr.events", "hr.operational"]);
    }

    #[test]
    fn partitions_are_numbered_and_retries_go_through_the_deliveries_hash_exchange() {
        let t = Topology::new("hr", &[Duration::from_secs(5)], 20).with_partitions(3);
        assert_eq!(
            t.events_queues(),
            ["hr.events.0", "hr.events.1", "hr.events.2"]
        );
        assert_eq!(t.deliveries_queue_of(2), "hr.deliveries.2");
        assert_eq!(t.deliveries_route().0, "hr.deliveries.hash");
        assert_eq!(
            t.all_queues(),
            [
                "hr.events.0",
                "hr.events.1",
                "hr.events.2",
                "hr.deliveries.0",
                "hr.deliveries.1",
                "hr.deliveries.2",
                "hr.dlq.events",
                "hr.dlq.deliveries",
                "hr.retry.5s"
            ]
        );
    }
}
