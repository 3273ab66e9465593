//! `hookrelay store init|status`: the store's identity (DESIGN §5 "The store"). `init` writes
//! the marker once (idempotent); `status` says which store the configuration reaches, what it
//! holds, and how Redis keeps it (its persistence settings).

use super::exit::Unavailable;
use crate::config::{RedisMode, Settings};
use crate::subscription::marker::Marker;
use crate::subscription::store::Store;
use clap::Subcommand;
use serde::Serialize;

#[derive(Subcommand, Debug)]
pub enum StoreAction {
    /// Create the store's marker (idempotent): run once per install, before workers and writes.
    #[command(after_help = "Example:\n  hookrelay store init --json")]
    Init {
        #[arg(long)]
        json: bool,
    },
    /// The store's id, webhook and account counts, Redis mode and persistence settings.
    #[command(after_help = "Example:\n  hookrelay store status --json")]
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, action: StoreAction) -> anyhow::Result<()> {
    let store = Store::from_settings(&settings.redis)
        .await
        .map_err(Unavailable::redis)?;
    match action {
        StoreAction::Init { json } => init(&store, json).await,
        StoreAction::Status { json } => status(&store, settings.redis.mode, json).await,
    }
}

async fn init(store: &Store, json: bool) -> anyhow::Result<()> {
    let (marker, created) = store.init_marker().await?;
    if json {
        super::print_json(&serde_json::json!({
            "created": created,
            "store": marker,
            "prefix": store.prefix(),
            "location": store.location(),
        }));
    } else if created {
        println!(
            "store {} created at {}, redis.prefix {:?}",
            marker.id,
            store.location(),
            store.prefix()
        );
    } else {
        println!(
            "store {} already exists at {}, redis.prefix {:?} (created {})",
            marker.id,
            store.location(),
            store.prefix(),
            marker
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(())
}

/// What `store status` reports.
#[derive(Serialize)]
struct Status {
    /// `None`: no marker (the command still reports the rest, and exits 78).
    store: Option<Marker>,
    prefix: String,
    location: String,
    mode: &'static str,
    webhooks: u64,
    accounts: u64,
    persistence: Persistence,
}

/// Redis' own persistence settings, as `CONFIG GET` reports them (`None` where refused).
#[derive(Serialize)]
struct Persistence {
    appendonly: Option<String>,
    appendfsync: Option<String>,
    save: Option<String>,
    /// Why the settings could not be read (CONFIG disabled or renamed, an ACL), if so.
    error: Option<String>,
}

async fn status(store: &Store, mode: RedisMode, json: bool) -> anyhow::Result<()> {
    let marker = store.marker().await?;
    let (webhooks, accounts) = counts(store).await?;
    let status = Status {
        store: marker,
        prefix: store.prefix().to_owned(),
        location: store.location().to_owned(),
        mode: match mode {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        },
        webhooks,
        accounts,
        persistence: persistence(store).await,
    };
    if json {
        super::print_json(&status);
    } else {
        print_status(&status);
    }
    match status.store {
        Some(_) => Ok(()),
        None => Err(store.missing().into()),
    }
}

fn print_status(s: &Status) {
    match &s.store {
        Some(m) => println!(
            "store       {} (created {}, layout {})",
            m.id,
            m.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            m.layout
        ),
        None => println!("store       MISSING (no marker {}:store)", s.prefix),
    }
    println!("redis       {} ({} mode)", s.location, s.mode);
    println!("prefix      {}", s.prefix);
    println!("webhooks    {}", s.webhooks);
    println!("accounts    {} (with at least one webhook)", s.accounts);
    let p = &s.persistence;
    match &p.error {
        Some(e) => println!("persistence unknown: {e}"),
        None => println!(
            "persistence appendonly {}, appendfsync {}, save {:?}",
            p.appendonly.as_deref().unwrap_or("?"),
            p.appendfsync.as_deref().unwrap_or("?"),
            p.save.as_deref().unwrap_or("?")
        ),
    }
}

/// Webhooks (the id index) and accounts with a webhook (their hashes, counted by SCAN, which
/// visits every master of a cluster and holds one key name per account meanwhile).
async fn counts(store: &Store) -> anyhow::Result<(u64, u64)> {
    let mut conn = store.redis().clone();
    let webhooks: u64 = redis::cmd("HLEN")
        .arg(format!("{}:webhook-accounts", store.prefix()))
        .query_async(&mut conn)
        .await?;
    let pattern = format!("{}:{{*}}:webhooks", store.prefix());
    let accounts = store.redis().scan_match(&pattern).await?.len() as u64;
    Ok((webhooks, accounts))
}

async fn persistence(store: &Store) -> Persistence {
    let mut result = Persistence {
        appendonly: None,
        appendfsync: None,
        save: None,
        error: None,
    };
    for name in ["appendonly", "appendfsync", "save"] {
        let mut conn = store.redis().clone();
        let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut conn)
            .await;
        match reply {
            // [name, value]; an unknown parameter answers an empty list.
            Ok(pair) => {
                let value = pair.get(1).cloned();
                match name {
                    "appendonly" => result.appendonly = value,
                    "appendfsync" => result.appendfsync = value,
                    _ => result.save = value,
                }
            }
            Err(e) => {
                result.error = Some(format!("CONFIG GET is not allowed here ({e})"));
                break;
            }
        }
    }
    result
}
