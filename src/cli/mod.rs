//! The `hookrelay` subcommands (DESIGN §6). Each prints records as text, or as one JSON document
//! on stdout with `--json`; logs and progress go to stderr; the exit status says why a command
//! failed ([`exit`]).

mod backup;
mod config;
mod dlq;
pub mod exit;
mod progress;
mod publish;
mod store;
mod webhooks;

use crate::config::Settings;
use crate::event::EventType;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "hookrelay",
    version,
    about = "Webhook delivery from RabbitMQ events",
    after_help = "Exit status: 0 success, 1 failed (not found, refused), 64 usage, 65 data refused, \
                  69 RabbitMQ or Redis unreachable, 75 temporary failure (try again), \
                  78 configuration or topology not declared, 130 interrupted."
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
    #[command(
        after_help = "Example:\n  HOOKRELAY__AMQP__URL=amqp://hr:pw@rabbit:5672/%2f hookrelay worker"
    )]
    Worker,
    /// Serve the admin HTTP API and the Webhooks page on api.listen (needs api.admin_token).
    #[command(
        after_help = "Example:\n  HOOKRELAY__API__ADMIN_TOKEN=$(openssl rand -hex 24) hookrelay api"
    )]
    Api,
    /// Declare the exchanges and queues (idempotent; workers also do it at start-up).
    #[command(after_help = "Example:\n  hookrelay topology declare --json")]
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// List the 27 event types with their descriptions (--operational: the operational event
    /// types hookrelay publishes on <prefix>.operational).
    #[command(
        after_help = "Example:\n  hookrelay events --json\n  hookrelay events --operational"
    )]
    Events {
        #[arg(long)]
        json: bool,
        /// The operational event types (webhook.failing, ...) instead of the 27.
        #[arg(long)]
        operational: bool,
    },
    /// Publish one event with publisher confirms; prints its id.
    #[command(
        after_help = "Example:\n  hookrelay publish --type payment.card.success --account 68 --data '{\"amount\":\"10.00\"}'"
    )]
    Publish(publish::PublishArgs),
    /// The subscription store's identity: create its marker (once per install), show its state.
    #[command(after_help = "Example:\n  hookrelay store init\n  hookrelay store status --json")]
    Store {
        #[command(subcommand)]
        action: store::StoreAction,
    },
    /// Print a JSON Schema: `envelope`, what upstream publishes, with this deployment's limits.
    #[command(after_help = "Example:\n  hookrelay schema envelope > envelope.schema.json")]
    Schema { name: SchemaName },
    /// Manage webhook subscriptions in Redis, and see why an account's deliveries fail.
    #[command(after_help = "Example:\n  hookrelay webhooks status --account 68")]
    Webhooks {
        #[command(subcommand)]
        action: webhooks::WebhooksAction,
    },
    /// Inspect, replay and purge the dead-letter queues.
    #[command(after_help = "Example:\n  hookrelay dlq list --account 68 --reason exhausted")]
    Dlq {
        #[command(subcommand)]
        action: dlq::DlqAction,
    },
    /// Run a local receiver that verifies and prints deliveries.
    #[command(after_help = "Example:\n  hookrelay listen --listen 127.0.0.1:8765 --account 68")]
    Listen(publish::ListenArgs),
    /// Measure end-to-end throughput and latency against the broker's own ceiling.
    #[command(
        after_help = "Example:\n  hookrelay bench --events 20000 --workers 2 --json\n  hookrelay bench --scenario many-accounts"
    )]
    Bench(BenchArgs),
    /// Show the effective configuration (secrets redacted) or check it.
    #[command(after_help = "Example:\n  hookrelay config show")]
    Config {
        #[command(subcommand)]
        action: config::ConfigAction,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  hookrelay completions bash > /etc/bash_completion.d/hookrelay\n  hookrelay completions zsh > \"${fpath[1]}/_hookrelay\""
    )]
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure; each scenario sets the defaults of the four options below it.
    #[arg(long, value_enum, default_value_t = crate::bench::Scenario::Headline)]
    scenario: crate::bench::Scenario,
    /// Events in the main run (headline 20,000; many-accounts 200,000; backlog 1,000,000).
    #[arg(long)]
    events: Option<usize>,
    /// Accounts the events are spread over (100; many-accounts 1,000,000; fan-out 1,000).
    #[arg(long)]
    accounts: Option<usize>,
    /// Webhooks per account, 1 to 10 (1; fan-out 10).
    #[arg(long)]
    webhooks: Option<usize>,
    /// Size of each event's data in bytes (100; large-payloads 65,536).
    #[arg(long)]
    payload_bytes: Option<usize>,
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
    /// Run twice, with 1 and with N work-queue partitions (amqp.partitions), and compare.
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..=64))]
    partitions: Option<u16>,
    /// Make the first N webhooks hang (never answer), to measure endpoint isolation.
    #[arg(long, default_value_t = 0)]
    hanging: usize,
    /// Measure only the subscription cache: its memory after N distinct accounts.
    #[arg(long)]
    cache_accounts: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TopologyAction {
    /// Declare everything of DESIGN §4 for the configured prefix and schedule.
    #[command(
        after_help = "Example:\n  HOOKRELAY__AMQP__PREFIX=staging hookrelay topology declare"
    )]
    Declare {
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command line: loads the settings, then builds the runtime they ask for (the
/// worker's thread count is a setting, so the runtime cannot be built before they are read).
pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config { action } => return config::run(cli.config.as_deref(), action),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "hookrelay", &mut std::io::stdout());
            return Ok(());
        }
        _ => {}
    }
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

/// Runs one command with loaded settings; the spans still batched for export are sent before
/// it returns, whatever its outcome.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    let telemetry = crate::telemetry::start(&settings);
    let result = run_command(command, settings).await;
    // The exporter's own thread sends the last batch (within a few seconds); waiting for it
    // blocks this runtime thread only at exit, when nothing else is left to run.
    telemetry.shutdown();
    result
}

async fn run_command(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Worker => {
            let shutdown = crate::shutdown::on_signal();
            let worker = crate::worker::start(settings, shutdown).await?;
            worker.wait().await
        }
        Command::Api => crate::api::run(settings).await,
        Command::Topology {
            action: TopologyAction::Declare { json },
        } => declare_topology(&settings, json).await,
        Command::Events { json, operational } => {
            print_events(json, operational);
            Ok(())
        }
        Command::Publish(args) => publish::publish(&settings, args).await,
        Command::Store { action } => store::run(&settings, action).await,
        Command::Schema {
            name: SchemaName::Envelope,
        } => {
            print_json(&crate::event::schema::envelope_schema(event_limits(
                &settings,
            )));
            Ok(())
        }
        Command::Webhooks { action } => webhooks::run(&settings, action).await,
        Command::Dlq { action } => dlq::run(&settings, action).await,
        Command::Listen(args) => publish::listen(&settings, args).await,
        Command::Bench(a) => {
            let preset = a.scenario.preset();
            let options = crate::bench::BenchOptions {
                scenario: a.scenario,
                events: a.events.unwrap_or(preset.events),
                accounts: a.accounts.unwrap_or(preset.accounts),
                webhooks_per_account: a.webhooks.unwrap_or(preset.webhooks),
                payload_bytes: a.payload_bytes.unwrap_or(preset.payload_bytes),
                workers: a.workers,
                attach: a.attach,
                rate: a.rate,
                skip_ceiling: a.skip_ceiling,
                hanging: a.hanging,
                cache_accounts: a.cache_accounts,
                partitions: a.partitions,
                json: a.json,
            };
            crate::bench::run(settings, options).await
        }
        Command::Config { .. } | Command::Completions { .. } => {
            unreachable!("`main` runs them before loading the settings")
        }
    }
}

async fn declare_topology(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let topology = crate::broker::topology::Topology::from_settings(settings);
    let conn = crate::broker::Connector::new(&settings.amqp)
        .connect("hookrelay topology")
        .await
        .map_err(exit::Unavailable::rabbitmq)?
        .connection;
    crate::broker::partitions::prepare(&topology, &conn).await?;
    if json {
        let queues: Vec<_> = topology
            .all_queues()
            .into_iter()
            .map(|q| serde_json::json!({"name": q, "type": "quorum"}))
            .collect();
        let hash: Vec<_> = topology.all_exchanges()[2..]
            .iter()
            .map(|x| serde_json::json!({"name": x, "type": crate::broker::topology::HASH_EXCHANGE_TYPE}))
            .collect();
        print_json(&serde_json::json!({
            "exchange": {"name": topology.events_exchange(), "type": "topic"},
            "operational_exchange": {"name": topology.operational_exchange(), "type": "topic"},
            "hash_exchanges": hash,
            "queues": queues,
        }));
    } else {
        println!("exchange {} (topic)", topology.events_exchange());
        println!("exchange {} (topic)", topology.operational_exchange());
        for x in &topology.all_exchanges()[2..] {
            println!(
                "exchange {x} ({})",
                crate::broker::topology::HASH_EXCHANGE_TYPE
            );
        }
        for q in topology.all_queues() {
            println!("queue {q} (quorum)");
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The schemas `hookrelay schema` prints.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SchemaName {
    /// The event envelope (DESIGN §2), as docs/asyncapi.yaml and GET /v1/schemas/envelope.json.
    Envelope,
}

/// The limits a worker checks envelopes against (`delivery.max_event_*`).
fn event_limits(settings: &Settings) -> crate::event::Limits {
    crate::event::Limits {
        max_bytes: settings.delivery.max_event_bytes,
        max_depth: settings.delivery.max_event_depth,
    }
}

fn print_events(json: bool, operational: bool) {
    let rows: Vec<(&str, &str)> = if operational {
        crate::operational::TYPES.to_vec()
    } else {
        EventType::ALL
            .iter()
            .map(|t| (t.label(), t.description()))
            .collect()
    };
    if json {
        let types: Vec<_> = rows
            .iter()
            .map(|(label, description)| {
                serde_json::json!({"label": label, "description": description})
            })
            .collect();
        println!("{}", serde_json::json!({ "event_types": types }));
    } else {
        let mut table = table(&["LABEL", "DESCRIPTION"]);
        for (label, description) in rows {
            table.add_row(vec![label, description]);
        }
        println!("{table}");
    }
}

pub(crate) use crate::print_json;

/// A table with a header row, without borders (easy to read and to `grep`/`awk`).
pub(crate) fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.to_vec());
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_has_an_example_in_its_help() {
        let root = Cli::command();
        let mut missing = Vec::new();
        // An explicit stack: the command tree is walked without recursion.
        let mut stack: Vec<(String, &clap::Command)> = root
            .get_subcommands()
            .map(|c| (c.get_name().to_owned(), c))
            .collect();
        while let Some((path, command)) = stack.pop() {
            let help = command.get_after_help().map(|h| h.to_string());
            if !help.is_some_and(|h| h.contains("Example")) {
                missing.push(path.clone());
            }
            for sub in command.get_subcommands() {
                stack.push((format!("{path} {}", sub.get_name()), sub));
            }
        }
        assert!(missing.is_empty(), "no example in: {missing:?}");
    }
}
