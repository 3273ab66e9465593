//! Declaring the topology at start-up with the checks `amqp.partitions` needs (DESIGN §4,
//! docs/partitions.md): the consistent-hash plugin must be enabled when N > 1, and a change of N
//! must not strand messages.
//!
//! A change of N leaves queues behind: the unnumbered `<prefix>.events`/`.deliveries` (1 → N),
//! the numbered ones from N upwards (N → fewer), and delay queues whose dead-letter target moved
//! between the deliveries queue and the deliveries hash exchange (1 ↔ N). Such a queue is found
//! by a passive declare (partitions are numbered without gaps, so probing stops at the first
//! missing one). One that holds a message or has a consumer (a worker with the old N still
//! runs) refuses the start and changes nothing. One that is empty and unused is unbound first,
//! looked at again (a message may have been routed to it just before) and only then deleted,
//! so that nothing can arrive between the last look and the delete. Quorum queues do not
//! support `if-empty` on delete, hence the look.

use super::topology::{Topology, HASH_EXCHANGE_TYPE};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

/// Why the topology could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("amqp.partitions = {partitions} needs the RabbitMQ plugin rabbitmq_consistent_hash_exchange (exchange type {HASH_EXCHANGE_TYPE}), which this broker does not have: run `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` on every node (no restart needed), or set amqp.partitions = 1")]
    PluginMissing {
        partitions: u16,
        #[source]
        source: lapin::Error,
    },
    #[error("amqp.partitions = {partitions} would leave queue {queue} behind, and it still holds {messages} message(s) with {consumers} consumer(s): stop the workers that use the old amqp.partitions only once it is drained (docs/partitions.md, \"Changing the number of partitions\")")]
    Leftover {
        partitions: u16,
        queue: String,
        messages: u32,
        consumers: u32,
    },
    #[error("declaring the exchanges and queues (a queue that exists with other arguments is refused by RabbitMQ)")]
    Amqp(#[from] lapin::Error),
}

impl TopologyError {
    /// Waiting does not enable a plugin or drain a queue nobody consumes: stop with the reason.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, TopologyError::Amqp(_))
    }
}

/// A queue that exists: its ready messages and consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Depth {
    messages: u32,
    consumers: u32,
}

/// Checks, clears what a change of N left behind, and declares (see the module comment).
pub async fn prepare(topology: &Topology, conn: &Connection) -> Result<(), TopologyError> {
    if topology.is_partitioned() {
        check_plugin(topology, conn).await?;
    }
    let leftovers = find_leftovers(topology, conn).await?;
    refuse_busy(topology, &leftovers)?;
    settle_delay_queues(topology, conn).await?;
    if !leftovers.is_empty() {
        remove_leftovers(topology, conn, &leftovers).await?;
    }
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Declares the two hash exchanges (unbound, so they route nothing yet) on a channel of their
/// own. Without the plugin the broker answers `COMMAND_INVALID` ("unknown exchange type"),
/// which closes the whole connection: nothing else of this start can use it, and the start is
/// refused anyway.
async fn check_plugin(topology: &Topology, conn: &Connection) -> Result<(), TopologyError> {
    let channel = conn.create_channel().await?;
    match topology.declare_hash_exchanges(&channel).await {
        Ok(()) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(())
        }
        Err(e) if names_unknown_exchange_type(&e) => Err(TopologyError::PluginMissing {
            partitions: topology.partitions,
            source: e,
        }),
        Err(e) => Err(e.into()),
    }
}

fn names_unknown_exchange_type(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("unknown exchange type") || text.contains("invalid exchange type")
}

/// The work queues this N does not use that exist, with their depth.
async fn find_leftovers(
    topology: &Topology,
    conn: &Connection,
) -> Result<Vec<(String, Depth)>, lapin::Error> {
    let mut found = Vec::new();
    for name in unnumbered_leftovers(topology) {
        if let Some(depth) = depth(conn, &name).await? {
            found.push((name, depth));
        }
    }
    let first = if topology.is_partitioned() {
        topology.partitions
    } else {
        0
    };
    for kind in ["events", "deliveries"] {
        for p in first..crate::config::MAX_PARTITIONS {
            let name = format!("{}.{kind}.{p}", topology.prefix);
            match depth(conn, &name).await? {
                Some(d) => found.push((name, d)),
                None => break,
            }
        }
    }
    Ok(found)
}

/// Partitioned, the unnumbered work queues of N = 1 are left over; unpartitioned, none.
fn unnumbered_leftovers(topology: &Topology) -> Vec<String> {
    if topology.is_partitioned() {
        vec![
            format!("{}.events", topology.prefix),
            format!("{}.deliveries", topology.prefix),
        ]
    } else {
        Vec::new()
    }
}

fn refuse_busy(topology: &Topology, leftovers: &[(String, Depth)]) -> Result<(), TopologyError> {
    match leftovers
        .iter()
        .find(|(_, d)| d.messages > 0 || d.consumers > 0)
    {
        Some((queue, d)) => Err(leftover(topology, queue, *d)),
        None => Ok(()),
    }
}

fn leftover(topology: &Topology, queue: &str, d: Depth) -> TopologyError {
    TopologyError::Leftover {
        partitions: topology.partitions,
        queue: queue.to_owned(),
        messages: d.messages,
        consumers: d.consumers,
    }
}

/// A delay queue declared under another N dead-letters elsewhere, so redeclaring it is refused
/// (406). Empty, it is deleted and declared anew; holding messages, the start is refused.
async fn settle_delay_queues(topology: &Topology, conn: &Connection) -> Result<(), TopologyError> {
    for queue in topology.retry_queues() {
        let channel = conn.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                topology.delay_arguments(),
            )
            .await;
        match declared {
            Ok(_) => {
                let _ = channel.close(200, "declared".into()).await;
            }
            Err(e) if is_precondition_failed(&e) => replace_empty(topology, conn, &queue).await?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    e.to_string().contains("PRECONDITION_FAILED")
}

async fn replace_empty(
    topology: &Topology,
    conn: &Connection,
    queue: &str,
) -> Result<(), TopologyError> {
    let Some(d) = depth(conn, queue).await? else {
        return Ok(());
    };
    if d.messages > 0 || d.consumers > 0 {
        return Err(leftover(topology, queue, d));
    }
    tracing::warn!(%queue, partitions = topology.partitions, "delay queue declared under another amqp.partitions is empty; declaring it anew");
    delete_queue(conn, queue).await
}

/// Unbinds each leftover, looks again, and deletes it if still empty; partitioned no more, the
/// hash exchanges go too.
async fn remove_leftovers(
    topology: &Topology,
    conn: &Connection,
    leftovers: &[(String, Depth)],
) -> Result<(), TopologyError> {
    let channel = conn.create_channel().await?;
    for (queue, _) in leftovers {
        unbind_everywhere(&channel, topology, queue).await?;
    }
    let _ = channel.close(200, "unbound".into()).await;
    for (queue, _) in leftovers {
        if let Some(d) = depth(conn, queue).await? {
            if d.messages > 0 || d.consumers > 0 {
                return Err(leftover(topology, queue, d));
            }
            tracing::warn!(%queue, partitions = topology.partitions, "work queue of another amqp.partitions is empty; deleting it");
            delete_queue(conn, queue).await?;
        }
    }
    if !topology.is_partitioned() {
        for exchange in [
            topology.events_hash_exchange(),
            topology.deliveries_hash_exchange(),
        ] {
            let channel = conn.create_channel().await?;
            // Gone already is as good: the error closes only this channel.
            if channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .is_ok()
            {
                let _ = channel.close(200, "deleted".into()).await;
            }
        }
    }
    Ok(())
}

/// Removes a leftover's bindings, whichever layout made it. Unbinding what is not bound is a
/// no-op on RabbitMQ; an exchange that does not exist closes the channel, so the hash exchanges
/// are only named where they exist (partitioned now, or the numbered leftovers of before).
async fn unbind_everywhere(
    channel: &Channel,
    topology: &Topology,
    queue: &str,
) -> Result<(), lapin::Error> {
    // Leftovers are named `<prefix>.<kind>` or `<prefix>.<kind>.<p>` (find_leftovers).
    let rest = queue
        .strip_prefix(&format!("{}.", topology.prefix))
        .unwrap_or(queue);
    let (exchange, key) = match rest.split_once('.').map_or(rest, |(kind, _)| kind) {
        _ if rest == "events" => (topology.events_exchange(), "#"),
        _ if rest == "deliveries" => return Ok(()),
        "events" => (topology.events_hash_exchange(), "1"),
        _ => (topology.deliveries_hash_exchange(), "1"),
    };
    channel
        .queue_unbind(
            queue.into(),
            exchange.as_str().into(),
            key.into(),
            FieldTable::default(),
        )
        .await
}

async fn delete_queue(conn: &Connection, queue: &str) -> Result<(), TopologyError> {
    let channel = conn.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = channel.close(200, "deleted".into()).await;
    Ok(())
}

/// A passive declare on a channel of its own (a missing queue closes the channel): `None` when
/// the queue does not exist.
async fn depth(conn: &Connection, queue: &str) -> Result<Option<Depth>, lapin::Error> {
    let channel = conn.create_channel().await?;
    let answer = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match answer {
        Ok(q) => {
            let _ = channel.close(200, "probed".into()).await;
            Ok(Some(Depth {
                messages: q.message_count(),
                consumers: q.consumer_count(),
            }))
        }
        Err(e) if e.to_string().contains("NOT_FOUND") => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_partitioned_topology_treats_the_unnumbered_queues_as_left_over() {
        let t = Topology::new("hr", &[Duration::from_secs(5)], 20).with_partitions(4);
        assert_eq!(unnumbered_leftovers(&t), ["hr.events", "hr.deliveries"]);
        assert!(unnumbered_leftovers(&Topology::new("hr", &[], 20)).is_empty());
    }

    #[test]
    fn only_a_leftover_with_messages_or_consumers_refuses_the_start() {
        let t = Topology::new("hr", &[], 20).with_partitions(2);
        let idle = Depth {
            messages: 0,
            consumers: 0,
        };
        let busy = Depth {
            messages: 3,
            consumers: 0,
        };
        assert!(refuse_busy(&t, &[("hr.events".into(), idle)]).is_ok());
        let refused = refuse_busy(
            &t,
            &[("hr.events".into(), idle), ("hr.events.2".into(), busy)],
        );
        assert!(
            matches!(refused, Err(TopologyError::Leftover { ref queue, messages: 3, .. }) if queue == "hr.events.2")
        );
    }
}
