//! The broker's own ceiling, measured the same way every time: temporary durable quorum
//! queues (one, or one per partition with `bench --partitions`, leaders placed `balanced`),
//! persistent messages of the bench's body size spread round-robin over them, publisher
//! confirms with 512 in flight, one consumer per queue with prefetch 256 acking each message.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};
use std::time::Instant;
use tokio::task::JoinHandle;

/// Messages per second from the first publish to the last ack.
pub async fn measure(
    connector: &crate::broker::Connector,
    prefix: &str,
    n: usize,
    body_bytes: usize,
    partitions: u16,
) -> anyhow::Result<f64> {
    let conn = connector
        .connect("hookrelay bench ceiling")
        .await?
        .connection;
    let queues: Vec<String> = (0..partitions.max(1))
        .map(|p| format!("{prefix}.ceiling.{p}"))
        .collect();
    let mut publish = None;
    let mut consuming = Vec::new();
    for (i, queue) in queues.iter().enumerate() {
        publish = Some(declare(&conn, queue).await?);
        // The first queues take one more when n does not divide evenly.
        let share = n / queues.len() + usize::from(i < n % queues.len());
        consuming.push(consume(&conn, queue, share).await?);
    }
    let publish = publish.expect("at least one queue");
    let started = Instant::now();
    publish_all(&publish, &queues, n, body_bytes).await?;
    let mut finished = started;
    let mut seen = 0;
    for c in consuming {
        let (count, at) = c.await??;
        seen += count;
        finished = finished.max(at);
    }
    anyhow::ensure!(seen == n, "the ceiling consumers saw {seen} of {n}");
    for queue in &queues {
        let _ = publish
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(n as f64 / (finished - started).as_secs_f64())
}

/// Declares the temporary quorum queue; returns a channel in confirm mode to publish on.
async fn declare(conn: &Connection, queue: &str) -> anyhow::Result<Channel> {
    let publish = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    // As the partitions of amqp.partitions: on a cluster, leaders on different nodes.
    args.insert(
        "x-queue-leader-locator".into(),
        AMQPValue::LongString(LongString::from(b"balanced".to_vec())),
    );
    publish
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(publish)
}

/// One consumer, prefetch 256, acking each message; ends after `n` with how many it saw and
/// when it saw the last.
async fn consume(
    conn: &Connection,
    queue: &str,
    n: usize,
) -> anyhow::Result<JoinHandle<Result<(usize, Instant), lapin::Error>>> {
    let consume = conn.create_channel().await?;
    consume.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            delivery.acker.ack(BasicAckOptions::default()).await?;
            seen += 1;
        }
        Ok((seen, Instant::now()))
    }))
}

/// `n` persistent messages of `body_bytes`, `IN_FLIGHT` confirms outstanding at once; every
/// one must be acked.
async fn publish_all(
    publish: &Channel,
    queues: &[String],
    n: usize,
    body_bytes: usize,
) -> anyhow::Result<()> {
    let body = vec![b'x'; body_bytes.max(1)];
    let confirms = futures_util::stream::iter(0..n)
        .map(|i| {
            let body = &body;
            let queue = queues[i % queues.len()].as_str();
            async move {
                publish
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await
            }
        })
        .buffer_unordered(super::IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    for c in confirms {
        anyhow::ensure!(c?.is_ack(), "the broker nacked a ceiling message");
    }
    Ok(())
}
