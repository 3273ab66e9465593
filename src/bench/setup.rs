//! What a bench run prepares before it measures: options it refuses, its own names (so it never
//! touches a deployment's queues or keys), and one webhook per (account, index) pointing at the
//! built-in receiver.

use super::{BenchOptions, SEED_BATCH};
use crate::config::Settings;
use crate::event::AccountId;
use crate::subscription::store::{NewWebhook, Store};
use crate::subscription::{EventFilter, Format, Secret, WebhookUrl};
use futures_util::StreamExt;

/// Refuses option combinations the bench cannot run.
pub(super) fn check_options(opts: &BenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.events > 0 && opts.accounts > 0,
        "--events and --accounts must be positive"
    );
    anyhow::ensure!(
        (1..=crate::subscription::MAX_WEBHOOKS_PER_ACCOUNT).contains(&opts.webhooks_per_account),
        "--webhooks must be 1 to 10 (the per-account limit)"
    );
    anyhow::ensure!(
        !(opts.attach && opts.scenario.workers_start_late()),
        "--scenario {} starts its own workers; it cannot --attach",
        opts.scenario.name()
    );
    Ok(())
}

/// The bench's settings: its own names unless attached, and the loopback receiver allowed.
pub(super) fn bench_settings(base: &Settings, opts: &BenchOptions) -> Settings {
    let mut settings = base.clone();
    if !opts.attach {
        // Its own names, so a bench never touches a deployment's queues or keys.
        let prefix = format!("hrbench-{}", crate::random_token(6).to_lowercase());
        settings.amqp.prefix = prefix.clone();
        settings.redis.prefix = prefix;
    }
    // The receiver is on loopback over http.
    settings.delivery.allow_http = true;
    settings.delivery.allow_private_targets = true;
    settings
}

/// Creates webhook `i` of `accounts[i]` pointing at the receiver's `/b/<i>`; returns the secrets
/// in that order.
pub(super) async fn create_webhooks(
    store: &Store,
    opts: &BenchOptions,
    addr: std::net::SocketAddr,
    accounts: &[String],
) -> anyhow::Result<Vec<Secret>> {
    let new_webhook = |index: usize| {
        Ok::<_, anyhow::Error>(NewWebhook {
            url: WebhookUrl::parse(&format!("http://{addr}/b/{index}"), true)?,
            events: EventFilter::All,
            format: Format::Standard,
            description: "hookrelay bench".into(),
            rate_limit: None,
        })
    };
    let account_id = |index: usize| -> AccountId {
        accounts[index]
            .parse()
            .expect("bench account ids are valid")
    };
    if opts.attach {
        // Running workers may have cached these accounts: create them the announced way.
        let created = futures_util::stream::iter(0..accounts.len())
            .map(|index| {
                let store = store.clone();
                let new = new_webhook(index);
                let account = account_id(index);
                async move { Ok::<_, anyhow::Error>(store.create(&account, new?).await?.secret) }
            })
            .buffered(64)
            .collect::<Vec<_>>()
            .await;
        return created.into_iter().collect();
    }
    eprintln!("creating {} webhooks…", accounts.len());
    let mut secrets = Vec::with_capacity(accounts.len());
    for batch in (0..accounts.len()).collect::<Vec<_>>().chunks(SEED_BATCH) {
        let webhooks = batch
            .iter()
            .map(|&i| Ok((account_id(i), new_webhook(i)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        secrets.extend(store.seed(webhooks).await?);
    }
    Ok(secrets)
}
