//! `hookrelay webhooks export|import` (DESIGN §5 "The store"): every webhook as JSON lines, for
//! backups and for moving a store to another Redis deployment, and back, with the same ids and
//! secrets. The line format and the rules are `subscription::backup`; docs/backup.md is the
//! user's guide.
//!
//! Both stream: export holds one SCAN page of accounts at a time, import one batch of
//! [`BATCH`] accounts. Import reads the file twice: first it checks every line (and the
//! rules against what the store holds) and writes nothing if one is wrong, then it writes the
//! accounts in batches. So the file must be a regular file, not a pipe.
//!
//! One file, though long: export and import are the two halves of one format and one set of
//! messages; the rules they share live in `subscription::backup`.

use super::exit::Usage;
use crate::config::Settings;
use crate::event::AccountId;
use crate::subscription::backup::{check_group, Line, Refusal, Seen, MAX_LINE_BYTES};
use crate::subscription::store::{ExportedAccount, ImportOutcome, Store, StoreError};
use crate::subscription::MAX_WEBHOOKS_PER_ACCOUNT;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Accounts checked or written at once by an import.
const BATCH: usize = 1000;
/// A progress line on stderr at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Subcommand, Debug)]
pub enum BackupAction {
    /// Write every webhook (or one account's) as JSON lines, exactly as stored: ids, secrets
    /// (still sealed when redis.secret_key is set), events, format, rate limit, state.
    #[command(
        after_help = "Example:\n  hookrelay webhooks export --output /backups/webhooks-$(date +%F).jsonl"
    )]
    Export(ExportArgs),
    /// Restore webhooks from an export (same ids and secrets; idempotent). Every line is checked
    /// first: a bad one is reported with its number and nothing is written.
    #[command(after_help = "Example:\n  hookrelay webhooks import /backups/webhooks.jsonl")]
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Only this account's webhooks.
    #[arg(long)]
    account: Option<AccountId>,
    /// Write to FILE (mode 0600; written as FILE.partial and renamed once complete) instead of
    /// stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An export (JSON lines); a regular file, as it is read twice.
    file: PathBuf,
    /// Create the store marker (as `hookrelay store init`) if there is none, once every line
    /// is checked: for restoring a lost store or filling a new one. Without it, a store with
    /// no marker is refused (exit 78).
    #[arg(long)]
    init_store: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(settings: &Settings, store: &Store, action: BackupAction) -> anyhow::Result<()> {
    match action {
        BackupAction::Export(a) => export(store, a).await,
        BackupAction::Import(a) => import(settings, store, a).await,
    }
}

// --- export -----------------------------------------------------------------------------------

async fn export(store: &Store, args: ExportArgs) -> anyhow::Result<()> {
    let mut out = Output::open(args.output.as_deref())?;
    let mut count = Counter::new("exported");
    let result = match args.account {
        Some(account) => {
            let exported = store.export_account(account).await?;
            write_account(&mut out, &exported, &mut count)
        }
        None => export_all(store, &mut out, &mut count).await,
    };
    match result.and_then(|()| out.finish()) {
        Ok(()) => {
            count.done(&format!("to {}", out.name()));
            match count.unreadable {
                0 => Ok(()),
                n => anyhow::bail!(
                    "{n} stored records could not be read and are not in the export (listed above)"
                ),
            }
        }
        Err(e) => {
            out.abandon();
            Err(e)
        }
    }
}

async fn export_all(store: &Store, out: &mut Output, count: &mut Counter) -> anyhow::Result<()> {
    let mut pages = store.account_pages();
    let mut seen = SeenAccounts::default();
    while let Some(keys) = pages.next_page().await.map_err(StoreError::from)? {
        let accounts: Vec<AccountId> = keys
            .iter()
            .filter_map(|k| store.account_of_key(k))
            .filter(|a| seen.first_time(a))
            .collect();
        for exported in store.export_accounts(accounts).await? {
            write_account(out, &exported, count)?;
        }
    }
    Ok(())
}

fn write_account(
    out: &mut Output,
    exported: &ExportedAccount,
    count: &mut Counter,
) -> anyhow::Result<()> {
    for line in &exported.lines {
        out.write_line(line)?;
    }
    for (id, error) in &exported.unreadable {
        eprintln!(
            "hookrelay: account {} webhook {id}: the stored record is unreadable ({error}); not exported",
            exported.account
        );
    }
    count.unreadable += exported.unreadable.len() as u64;
    if !exported.lines.is_empty() {
        count.add(1, exported.lines.len() as u64);
    }
    Ok(())
}

/// Accounts already exported: SCAN may return a key twice. 128-bit fingerprints, so that two
/// accounts never pass for one (an account skipped by mistake would be missing from a backup).
#[derive(Default)]
struct SeenAccounts {
    keys: (std::hash::RandomState, std::hash::RandomState),
    seen: HashSet<u128>,
}

impl SeenAccounts {
    fn first_time(&mut self, account: &AccountId) -> bool {
        let high = u128::from(self.keys.0.hash_one(account.as_str()));
        let low = u128::from(self.keys.1.hash_one(account.as_str()));
        self.seen.insert(high << 64 | low)
    }
}

/// Where an export goes: stdout, or FILE.partial renamed to FILE once complete.
struct Output {
    writer: std::io::BufWriter<Box<dyn Write>>,
    /// (partial, final) paths of a file output.
    paths: Option<(PathBuf, PathBuf)>,
}

impl Output {
    fn open(path: Option<&Path>) -> anyhow::Result<Output> {
        let Some(path) = path else {
            return Ok(Output {
                writer: std::io::BufWriter::with_capacity(1 << 20, Box::new(std::io::stdout())),
                paths: None,
            });
        };
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file =
            open_private(&partial).with_context(|| format!("creating {}", partial.display()))?;
        Ok(Output {
            writer: std::io::BufWriter::with_capacity(1 << 20, Box::new(file)),
            paths: Some((partial, path.to_owned())),
        })
    }

    fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.writer.flush().context("writing the export")?;
        if let Some((partial, path)) = &self.paths {
            std::fs::File::open(partial)?.sync_all()?;
            std::fs::rename(partial, path)
                .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
        }
        Ok(())
    }

    /// Removes an unfinished file, so that no partial export passes for a complete one.
    fn abandon(&self) {
        if let Some((partial, _)) = &self.paths {
            let _ = std::fs::remove_file(partial);
        }
    }

    fn name(&self) -> String {
        match &self.paths {
            Some((_, path)) => path.display().to_string(),
            None => "stdout".to_owned(),
        }
    }
}

/// A new file readable by its owner only: an export holds secrets (plain unless
/// redis.secret_key is set).
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

// --- import -----------------------------------------------------------------------------------

async fn import(settings: &Settings, store: &Store, args: ImportArgs) -> anyhow::Result<()> {
    let allow_http = settings.delivery.allow_http;
    let stamp = file_stamp(&args.file)?;
    if !args.init_store && store.marker().await?.is_none() {
        // Refused before reading a line: an import into a store without its marker is most
        // likely aimed at the wrong Redis, database or prefix (DESIGN §5 "The store").
        return Err(anyhow::Error::new(store.missing())
            .context("webhooks import writes only to an initialised store; pass --init-store to restore into a new or lost one"));
    }
    let mut checked = Counter::new("checked");
    let mut batches = Batches::open(&args.file)?;
    let mut seen = Seen::default();
    while let Some(batch) = batches.next(store, allow_http)? {
        for group in &batch {
            seen.note(group)?;
        }
        let states = store.import_state(&batch).await?;
        for (group, state) in batch.iter().zip(&states) {
            check_group(group, state)?;
            checked.add(1, group.len() as u64);
        }
    }
    checked.done(&format!("in {}: every line is valid", args.file.display()));
    drop(seen);
    if file_stamp(&args.file)? != stamp {
        anyhow::bail!(
            "{} changed while it was being checked; nothing was written",
            args.file.display()
        );
    }
    let mut written = Counter::new("imported");
    let mut outcome = ImportOutcome::default();
    let mut batches = Batches::open(&args.file)?;
    while let Some(batch) = batches.next(store, allow_http)? {
        let done = store.import_groups(&batch).await.map_err(|e| {
            let first = batch.first().and_then(|g| g.first()).map_or(0, |l| l.number);
            anyhow::Error::new(e).context(format!(
                "writing the accounts from line {first} on ({} webhooks of {} accounts were written before them; the rest of the file was not; another write to the same account during the import can cause this: run the import again)",
                written.webhooks, written.accounts
            ))
        })?;
        outcome.created += done.created;
        outcome.updated += done.updated;
        outcome.unchanged += done.unchanged;
        written.add(
            batch.len() as u64,
            batch.iter().map(|g| g.len() as u64).sum(),
        );
    }
    written.done(&format!("from {}", args.file.display()));
    // The marker last: a paused worker resumes the moment it sees one, and would ack as
    // unmatched the events of accounts an import had not written yet.
    if args.init_store {
        init_store(store).await?;
    }
    print_summary(&written, outcome, args.json);
    Ok(())
}

/// `--init-store`: creates the store marker unless there is one, once every webhook of the file
/// is written (a bad file writes nothing, the marker neither).
async fn init_store(store: &Store) -> anyhow::Result<()> {
    let (marker, created) = store.init_marker().await?;
    if created {
        eprintln!("created the store marker (store id {})", marker.id);
    }
    Ok(())
}

fn print_summary(written: &Counter, outcome: ImportOutcome, json: bool) {
    if json {
        super::print_json(&serde_json::json!({
            "accounts": written.accounts,
            "webhooks": written.webhooks,
            "created": outcome.created,
            "updated": outcome.updated,
            "unchanged": outcome.unchanged,
        }));
    } else {
        println!(
            "imported {} webhooks of {} accounts: {} created, {} updated, {} unchanged",
            written.webhooks, written.accounts, outcome.created, outcome.updated, outcome.unchanged
        );
    }
}

/// Size and modification time: a file changed between the check and the writes is refused.
fn file_stamp(path: &Path) -> anyhow::Result<(u64, Option<std::time::SystemTime>)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        return Err(Usage(format!(
            "{} is not a regular file: import reads its file twice (check, then write), so save the export to a file first",
            path.display()
        ))
        .into());
    }
    Ok((meta.len(), meta.modified().ok()))
}

/// The lines of an export, parsed and grouped by account, [`BATCH`] accounts at a time.
struct Batches {
    reader: BufReader<std::fs::File>,
    number: u64,
    /// The first line of the next group, read while ending the previous one.
    pending: Option<Line>,
    buf: Vec<u8>,
}

impl Batches {
    fn open(path: &Path) -> anyhow::Result<Batches> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Batches {
            reader: BufReader::with_capacity(1 << 20, file),
            number: 0,
            pending: None,
            buf: Vec::with_capacity(4096),
        })
    }

    fn next(&mut self, store: &Store, allow_http: bool) -> anyhow::Result<Option<Vec<Vec<Line>>>> {
        let mut batch: Vec<Vec<Line>> = Vec::new();
        loop {
            let line = match self.pending.take() {
                Some(line) => line,
                None => match self.read(store, allow_http)? {
                    Some(line) => line,
                    None => break,
                },
            };
            let full = batch.len() == BATCH;
            match batch.last_mut() {
                Some(group) if group[0].account == line.account => {
                    if group.len() == MAX_WEBHOOKS_PER_ACCOUNT {
                        return Err(Refusal {
                            line: line.number,
                            message: format!(
                                "account {} has more than {MAX_WEBHOOKS_PER_ACCOUNT} webhooks in the file; an account has at most {MAX_WEBHOOKS_PER_ACCOUNT}",
                                line.account
                            ),
                        }
                        .into());
                    }
                    group.push(line);
                }
                // A new account once the batch is full: it starts the next batch.
                _ if full => {
                    self.pending = Some(line);
                    break;
                }
                _ => batch.push(vec![line]),
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }

    /// The next non-blank line, parsed; `None` at the end of the file.
    fn read(&mut self, store: &Store, allow_http: bool) -> anyhow::Result<Option<Line>> {
        loop {
            self.buf.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.number += 1;
            let refuse = |message: String| Refusal {
                line: self.number,
                message,
            };
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(refuse(format!("longer than {MAX_LINE_BYTES} bytes")).into());
            }
            let text = std::str::from_utf8(&self.buf)
                .map_err(|_| refuse("not UTF-8".to_owned()))?
                .trim();
            if text.is_empty() {
                continue;
            }
            return store
                .parse_backup_line(self.number, text, allow_http)
                .map(Some)
                .map_err(|e| refuse(e.to_string()).into());
        }
    }
}

/// Counts and a progress line on stderr every [`PROGRESS_EVERY`].
struct Counter {
    verb: &'static str,
    accounts: u64,
    webhooks: u64,
    unreadable: u64,
    started: Instant,
    last: Instant,
}

impl Counter {
    fn new(verb: &'static str) -> Counter {
        let now = Instant::now();
        Counter {
            verb,
            accounts: 0,
            webhooks: 0,
            unreadable: 0,
            started: now,
            last: now,
        }
    }

    fn add(&mut self, accounts: u64, webhooks: u64) {
        self.accounts += accounts;
        self.webhooks += webhooks;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            eprintln!(
                "{} {} webhooks of {} accounts ({:.0} webhooks/s)",
                self.verb,
                self.webhooks,
                self.accounts,
                self.rate()
            );
        }
    }

    fn rate(&self) -> f64 {
        self.webhooks as f64 / self.started.elapsed().as_secs_f64().max(0.001)
    }

    fn done(&self, what: &str) {
        eprintln!(
            "{} {} webhooks of {} accounts {what} in {:.1} s ({:.0} webhooks/s)",
            self.verb,
            self.webhooks,
            self.accounts,
            self.started.elapsed().as_secs_f64(),
            self.rate()
        );
    }
}
