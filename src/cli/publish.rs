//! `hookrelay publish` and `hookrelay listen`: the two ends of a delivery, from the command line.

use super::exit::NotDeclared;
use crate::broker::publisher::{EventPublisher, NewEvent};
use crate::config::Settings;
use crate::delivery::signing::Secret;
use crate::event::{AccountId, Event, EventId, EventType, Limits};
use crate::listen::{self, Secrets};
use crate::subscription::store::Store;
use crate::telemetry::context::{TraceContext, TraceParent};
use anyhow::{bail, Context};
use clap::Args;
use std::net::SocketAddr;

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The event type (one of `hookrelay events`); also the routing key.
    #[arg(long = "type", required_unless_present = "check")]
    event_type: Option<EventType>,
    #[arg(long, required_unless_present = "check")]
    account: Option<AccountId>,
    /// Publish nothing: check the envelope in FILE (`-` for stdin) with the worker's own parser
    /// and limits, the routing key being its `type`; prints `ok`, or fails (exit 65) with the
    /// reason a worker would dead-letter it with.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["event_type", "account", "data", "id", "json"])]
    check: Option<std::path::PathBuf>,
    /// The event's data: a JSON object, passed through untouched.
    #[arg(long, default_value = "{}")]
    data: String,
    /// The event id (default: a fresh `evt_…`).
    #[arg(long)]
    id: Option<String>,
    /// Print the envelope instead of the id.
    #[arg(long)]
    json: bool,
    /// Publish in this W3C trace (`00-<trace id>-<parent id>-<flags>`), e.g. the caller's;
    /// default: a new trace, sampled as `telemetry.sampling_ratio` says.
    #[arg(long, value_parser = parse_traceparent, conflicts_with = "check")]
    traceparent: Option<TraceContext>,
}

fn parse_traceparent(text: &str) -> Result<TraceContext, String> {
    TraceParent::parse(text.as_bytes())
        .map(TraceContext::new)
        .ok_or_else(|| "not a W3C traceparent like 00-<32 hex>-<16 hex>-01".to_owned())
}

pub async fn publish(settings: &Settings, args: PublishArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.check {
        check_envelope(settings, file)?;
        println!("ok");
        return Ok(());
    }
    let (Some(event_type), Some(account_id)) = (args.event_type, args.account) else {
        bail!(super::exit::Usage(
            "--type and --account are required".into()
        ));
    };
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
    .context("connecting to RabbitMQ (amqp.url / amqp.urls)")?
    .with_sampling_ratio(settings.telemetry.sampling_ratio);
    let new = NewEvent {
        id,
        event_type,
        account_id,
        created_at: None,
        data,
    };
    let event = publisher
        .publish_in_trace(new, args.traceparent)
        .await
        .map_err(|e| match e.is_not_declared() {
            true => NotDeclared(format!("exchange {}.events", settings.amqp.prefix)).into(),
            false => anyhow::Error::new(e).context("publishing"),
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

/// The envelope in `file` as a worker would take it: [`Event::parse`] with the configured
/// limits and its own `type` as the routing key (a body that has none gets an empty key, and the
/// parser names what is missing before it compares keys).
fn check_envelope(settings: &Settings, file: &std::path::Path) -> anyhow::Result<()> {
    let limit = settings.delivery.max_event_bytes;
    let body = read_bounded(file, limit).with_context(|| format!("reading {}", file.display()))?;
    let routing_key = routing_key_of(&body);
    let limits = Limits {
        max_bytes: limit,
        max_depth: settings.delivery.max_event_depth,
    };
    Event::parse(&body, &routing_key, limits)?;
    Ok(())
}

/// At most `limit + 1` bytes of `file` (`-`: stdin): enough for the parser to say `too_large`.
fn read_bounded(file: &std::path::Path, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let source: Box<dyn Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file)?)
    };
    let mut body = Vec::new();
    source.take(limit as u64 + 1).read_to_end(&mut body)?;
    Ok(body)
}

/// The top-level `type` of a JSON object, when it is a string; else empty. Read through
/// borrowed raw values only, so a deep `data` costs no recursion here.
fn routing_key_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct TypeOnly<'a> {
        #[serde(borrow, rename = "type")]
        event_type: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<TypeOnly>(body)
        .ok()
        .and_then(|t| t.event_type)
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .unwrap_or_default()
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
