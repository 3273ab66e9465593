//! The broker's own ceiling, measured the same way every time: a temporary durable quorum
//! queue, persistent messages of the bench's body size, publisher confirms with 512 in flight,
//! one consumer with prefetch 256 acking each message.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use std::time::Instant;

/// Messages per second from the first publish to the last ack.
pub async fn measure(
    connector: &crate::broker::Connector,
    prefix: &str,
    n: usize,
    body_bytes: usize,
) -> anyhow::Result<f64> {
    let conn = connector
        .connect("hookrelay bench ceiling")
        .await?
        .connection;
    let queue = format!("{prefix}.ceiling");
    let publish = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    publish
        .queue_declare(
            queue.as_str().into(),
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

    let consume = conn.create_channel().await?;
    consume.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consuming = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            delivery.acker.ack(BasicAckOptions::default()).await?;
            seen += 1;
        }
        Ok::<_, lapin::Error>((seen, Instant::now()))
    });

    let body = vec![b'x'; body_bytes.max(1)];
    let started = Instant::now();
    let confirms = futures_util::stream::iter(0..n)
        .map(|_| {
            let (publish, queue, body) = (&publish, &queue, &body);
            async move {
                publish
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
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
    let (seen, finished) = consuming.await??;
    anyhow::ensure!(seen == n, "the ceiling consumer saw {seen} of {n}");
    let _ = publish
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    Ok(n as f64 / (finished - started).as_secs_f64())
}
