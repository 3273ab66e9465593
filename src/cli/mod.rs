//! The `hookrelay` subcommands (DESIGN §6). Each prints records as text, or as one JSON document
//! on stdout with `--json`; logs go to stderr.

mod dlq;
mod publish;
mod webhooks;

use crate::config::Settings;
use crate::event::EventType;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "hookrelay",
    version,
    about = "Webhook delivery from RabbitMQ events"
)]
pub struct Cli {
    /// Configuration file (TOML); also HOOKRELAY_CONFIG. Environment HOOKRELAY__SECTION__KEY wins.
    #[arg(long, global = true, env = "HOOKRELAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Consume events and deliver them (run as many replicas as needed).
    Worker,
    /// Serve the admin HTTP API and the Webhooks page on api.listen (needs api.admin_token).
    Api,
    /// Declare the exchanges and queues (idempotent; workers also do it at start-up).
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// List the 27 event types with their descriptions.
    Events {
        #[arg(long)]
        json: bool,
    },
    /// Publish one event with publisher confirms; prints its id.
    Publish(publish::PublishArgs),
    /// Manage webhook subscriptions in Redis.
    Webhooks {
        #[command(subcommand)]
        action: webhooks::WebhooksAction,
    },
    /// Inspect, replay and purge the dead-letter queues.
    Dlq {
        #[command(subcommand)]
        action: dlq::DlqAction,
    },
    /// Run a local receiver that verifies and prints deliveries.
    Listen(publish::ListenArgs),
    /// Measure end-to-end throughput and latency against the broker's own ceiling.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Events in the throughput run (the latency run publishes half as many).
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Accounts the events are spread over.
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Webhooks per account (fan-out), 1 to 10.
    #[arg(long, default_value_t = 1)]
    webhooks: usize,
    /// Size of each event's data in bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Worker processes to start.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Use workers already running on the configured prefix instead of starting them.
    #[arg(long)]
    attach: bool,
    /// Events per second in the latency run (default: half the measured maximum).
    #[arg(long)]
    rate: Option<f64>,
    /// Skip measuring the broker's ceiling.
    #[arg(long)]
    skip_ceiling: bool,
    /// Make the first N webhooks hang (never answer), to measure endpoint isolation.
    #[arg(long, default_value_t = 0)]
    hanging: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TopologyAction {
    /// Declare everything of DESIGN §4 for the configured prefix and schedule.
    Declare,
}

/// Runs a parsed command line: loads the settings, then builds the runtime they ask for (the
/// worker's thread count is a setting, so the runtime cannot be built before they are read).
pub fn main(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    let mut runtime = if matches!(cli.command, Command::Worker) && settings.worker.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if matches!(cli.command, Command::Worker) && settings.worker.threads > 1 {
        runtime.worker_threads(settings.worker.threads);
    }
    runtime
        .enable_all()
        .build()?
        .block_on(run(cli.command, settings))
}

/// Runs one command with loaded settings.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    crate::telemetry::init(settings.log.format);
    match command {
        Command::Worker => {
            let shutdown = crate::shutdown::on_signal();
            let worker = crate::worker::start(settings, shutdown).await?;
            worker.wait().await
        }
        Command::Api => crate::api::run(settings).await,
        Command::Topology {
            action: TopologyAction::Declare,
        } => declare_topology(&settings).await,
        Command::Events { json } => {
            print_events(json);
            Ok(())
        }
        Command::Publish(args) => publish::publish(&settings, args).await,
        Command::Webhooks { action } => webhooks::run(&settings, action).await,
        Command::Dlq { action } => dlq::run(&settings, action).await,
        Command::Listen(args) => publish::listen(&settings, args).await,
        Command::Bench(a) => {
            let options = crate::bench::BenchOptions {
                events: a.events,
                accounts: a.accounts,
                webhooks_per_account: a.webhooks,
                payload_bytes: a.payload_bytes,
                workers: a.workers,
                attach: a.attach,
                rate: a.rate,
                skip_ceiling: a.skip_ceiling,
                hanging: a.hanging,
                json: a.json,
            };
            crate::bench::run(settings, options).await
        }
    }
}

async fn declare_topology(settings: &Settings) -> anyhow::Result<()> {
    let topology = crate::broker::topology::Topology::new(
        &settings.amqp.prefix,
        &settings.delivery.retry_schedule,
        settings.amqp.delivery_limit,
    );
    let conn = crate::broker::Connector::new(&settings.amqp)
        .connect("hookrelay topology")
        .await
        .context("connecting to RabbitMQ (amqp.url / amqp.urls)")?
        .connection;
    let channel = conn.create_channel().await?;
    topology
        .declare(&channel)
        .await
        .context("declaring (a queue that exists with other arguments is refused by RabbitMQ)")?;
    println!("exchange {} (topic)", topology.events_exchange());
    for q in topology.all_queues() {
        println!("queue {q} (quorum)");
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

fn print_events(json: bool) {
    if json {
        let types: Vec<_> = EventType::ALL
            .iter()
            .map(|t| serde_json::json!({"label": t.label(), "description": t.description()}))
            .collect();
        println!("{}", serde_json::json!({ "event_types": types }));
    } else {
        for t in EventType::ALL {
            println!("{:<36} {}", t.label(), t.description());
        }
    }
}

/// Prints a JSON document on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}
