//! `hookrelay publish` and `hookrelay listen`: the two ends of a delivery, from the command line.

use crate::broker::publisher::{EventPublisher, NewEvent, PublishError};
use crate::config::Settings;
use crate::delivery::signing::Secret;
use crate::event::{AccountId, EventId, EventType};
use crate::listen::{self, Secrets};
use crate::subscription::store::Store;
use anyhow::{bail, Context};
use clap::Args;
use std::net::SocketAddr;

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The event type (one of `hookrelay events`); also the routing key.
    #[arg(long = "type")]
    event_type: EventType,
    #[arg(long)]
    account: AccountId,
    /// The event's data: a JSON object, passed through untouched.
    #[arg(long, default_value = "{}")]
    data: String,
    /// The event id (default: a fresh `evt_…`).
    #[arg(long)]
    id: Option<String>,
    /// Print the envelope instead of the id.
    #[arg(long)]
    json: bool,
}

pub async fn publish(settings: &Settings, args: PublishArgs) -> anyhow::Result<()> {
    let data = serde_json::value::RawValue::from_string(args.data.clone())
        .context("--data is not valid JSON")?;
    if !data.get().trim_start().starts_with('{') {
        bail!("--data must be a JSON object");
    }
    let id = match args.id {
        Some(id) => Some(EventId::parse(&id).context("--id must be 1 to 128 of A-Z a-z 0-9 _ -")?),
        None => None,
    };
    let publisher = EventPublisher::connect(
        &crate::broker::Connector::new(&settings.amqp),
        &settings.amqp.prefix,
        settings.amqp.publish_timeout,
    )
    .await
    .context("connecting to RabbitMQ (amqp.url / amqp.urls)")?;
    let event = publisher
        .publish(NewEvent {
            id,
            event_type: args.event_type,
            account_id: args.account,
            created_at: None,
            data,
        })
        .await
        .map_err(|e| {
            // A broker that blocks publishers or does not confirm says nothing of the topology.
            let what = match e {
                PublishError::Blocked(_) | PublishError::Timeout(_) => "publishing",
                _ => "publishing (is the topology declared? run a worker or `hookrelay topology declare`)",
            };
            anyhow::Error::new(e).context(what)
        })?;
    publisher.close().await;
    if args.json {
        let envelope: serde_json::Value = serde_json::from_str(&event.to_envelope_json())?;
        super::print_json(&envelope);
    } else {
        println!("{}", event.id);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// A secret to verify with (repeatable).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Verify with the secrets of this account's webhooks, read from Redis on each request.
    #[arg(long)]
    account: Option<AccountId>,
    /// Exit after this many deliveries.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per delivery (JSON lines: received_at, path, format, webhook_id,
    /// verified, problem, body).
    #[arg(long)]
    json: bool,
}

pub async fn listen(settings: &Settings, args: ListenArgs) -> anyhow::Result<()> {
    let secrets = match (&args.account, args.secrets.is_empty()) {
        (Some(account), _) => Secrets::Account(
            Store::from_settings(&settings.redis)
                .await
                .context("connecting to Redis (redis.url)")?,
            account.clone(),
        ),
        (None, false) => Secrets::Fixed(
            args.secrets
                .iter()
                .map(|s| Secret::parse(s).with_context(|| format!("--secret {s:?}")))
                .collect::<anyhow::Result<_>>()?,
        ),
        (None, true) => bail!("give --secret (repeatable) or --account to verify signatures"),
    };
    let shutdown = crate::shutdown::on_signal();
    let (addr, mut received) = listen::serve(args.listen, secrets, shutdown.clone()).await?;
    eprintln!("listening on http://{addr}/ (verifying signatures)");
    let mut seen = 0u64;
    // On a signal the server stops accepting; what it already answered is still printed (the
    // channel closes after the last answer), within listen::DRAIN_GRACE.
    let drained_by = async {
        shutdown.cancelled().await;
        tokio::time::sleep(listen::DRAIN_GRACE).await;
    };
    tokio::pin!(drained_by);
    loop {
        let r = tokio::select! {
            _ = &mut drained_by => {
                eprintln!("stopped with requests still unanswered after {:?}", listen::DRAIN_GRACE);
                return Ok(());
            }
            r = received.recv() => match r { Some(r) => r, None => return Ok(()) },
        };
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else if r.verified {
            println!(
                "✔ verified {} {} {}",
                r.format,
                r.webhook_id.unwrap_or_default(),
                r.body
            );
        } else {
            println!("✘ rejected: {} {}", r.problem.unwrap_or_default(), r.body);
        }
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
    }
}
