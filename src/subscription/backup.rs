//! `webhooks export` and `import` (DESIGN §5 "The store"): the line format and the rules an
//! import checks before it writes anything, as pure functions; the Redis side is in
//! `store::backup`, the command in `cli::backup`.
//!
//! A line is one webhook exactly as stored: its JSON record with ids, URL, events, format,
//! description, created_at, rate limit, enabled and disabled_reason, secret and previous secret.
//! Secrets stay as stored, so with `redis.secret_key` set an export holds no readable secret
//! (they are sealed bound to their account and webhook id, which an import keeps).
//!
//! Lines come grouped by account, as export writes them. An import checks and writes one account
//! at a time, so that it holds one account's lines (at most [`MAX_WEBHOOKS_PER_ACCOUNT`]) and,
//! to refuse an account or a webhook id that comes back later in the file, an 8-byte
//! fingerprint of each account and id seen ([`Seen`]).

use super::record::{RecordError, Sealer, Stored};
use super::{UrlError, WebhookId, WebhookUrl, MAX_WEBHOOKS_PER_ACCOUNT};
use crate::event::AccountId;
use std::collections::HashSet;
use std::hash::BuildHasher;

/// The longest line an import reads; a stored record is a few KiB at most (a 2 KiB URL, a
/// description, two sealed secrets).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One webhook of the file, checked.
#[derive(Clone, Debug)]
pub struct Line {
    /// 1-based, as editors count.
    pub number: u64,
    pub account: AccountId,
    pub id: WebhookId,
    pub url: String,
    /// The record as it is stored (normalised: the same bytes an export writes).
    pub json: String,
}

/// Why one line cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not a webhook record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("{0}")]
    Url(#[from] UrlError),
}

/// Parses one line: a stored record whose secrets open with this store's `redis.secret_key`
/// (or are plain), whose URL passes `delivery.allow_http`.
pub(super) fn parse_line(
    number: u64,
    text: &str,
    sealer: Option<&Sealer>,
    allow_http: bool,
) -> Result<Line, LineError> {
    let record = Stored::parse(text)?;
    // The URL rule of `webhooks add`; stored URLs were only checked against the setting of
    // the store they were written in.
    WebhookUrl::parse(record.url().as_str(), allow_http)?;
    let webhook = record.clone().into_webhook(sealer)?;
    Ok(Line {
        number,
        account: webhook.account_id,
        id: webhook.id,
        url: webhook.url.as_str().to_owned(),
        json: record.to_json(),
    })
}

/// A refusal, naming the line.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct Refusal {
    pub line: u64,
    pub message: String,
}

fn refuse(line: &Line, message: String) -> Refusal {
    Refusal {
        line: line.number,
        message,
    }
}

/// What the store holds now for an account being imported.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// Its webhooks: id and URL (`None` when the stored record does not read).
    pub webhooks: Vec<(String, Option<String>)>,
    /// For each line of the group, in order: the account the store's index gives its id.
    pub owners: Vec<Option<String>>,
}

/// Checks one account's lines against each other and against the store: no id or URL twice,
/// no URL of another of the account's stored webhooks, no id of another account's, and at
/// most [`MAX_WEBHOOKS_PER_ACCOUNT`] webhooks once imported (an id already stored replaces
/// its webhook and counts once).
pub fn check_group(lines: &[Line], existing: &Existing) -> Result<(), Refusal> {
    for (i, line) in lines.iter().enumerate() {
        check_against_earlier_lines(line, &lines[..i])?;
        check_owner(line, existing.owners.get(i).and_then(Option::as_deref))?;
        check_url_in_store(line, lines, existing)?;
    }
    check_limit(lines, existing)
}

/// No id and no URL twice in the file.
fn check_against_earlier_lines(line: &Line, earlier: &[Line]) -> Result<(), Refusal> {
    if let Some(earlier) = earlier.iter().find(|l| l.id == line.id) {
        return Err(refuse(
            line,
            format!("webhook {} is also on line {}", line.id, earlier.number),
        ));
    }
    if let Some(earlier) = earlier.iter().find(|l| l.url == line.url) {
        return Err(refuse(
            line,
            format!(
                "url {} is also the url of webhook {} on line {}: an account has one webhook per url",
                line.url, earlier.id, earlier.number
            ),
        ));
    }
    Ok(())
}

/// No id that the store's index gives another account.
fn check_owner(line: &Line, owner: Option<&str>) -> Result<(), Refusal> {
    match owner {
        Some(owner) if owner != line.account.as_str() => Err(refuse(
            line,
            format!(
                "webhook {} belongs to account {owner} in this store",
                line.id
            ),
        )),
        _ => Ok(()),
    }
}

/// No URL of a stored webhook of the account that the file does not replace.
fn check_url_in_store(line: &Line, lines: &[Line], existing: &Existing) -> Result<(), Refusal> {
    let in_file = |id: &str| lines.iter().any(|l| l.id.as_str() == id);
    let clash = existing
        .webhooks
        .iter()
        .find(|(id, url)| url.as_deref() == Some(line.url.as_str()) && !in_file(id));
    match clash {
        Some((id, _)) => Err(refuse(
            line,
            format!(
                "account {} already has webhook {id} for url {} in this store",
                line.account, line.url
            ),
        )),
        None => Ok(()),
    }
}

/// At most MAX_WEBHOOKS_PER_ACCOUNT once imported; the refusal names the first line past it.
fn check_limit(lines: &[Line], existing: &Existing) -> Result<(), Refusal> {
    let kept = existing
        .webhooks
        .iter()
        .filter(|(id, _)| !lines.iter().any(|l| l.id.as_str() == id))
        .count();
    if kept + lines.len() <= MAX_WEBHOOKS_PER_ACCOUNT {
        return Ok(());
    }
    let line = &lines[MAX_WEBHOOKS_PER_ACCOUNT
        .saturating_sub(kept)
        .min(lines.len() - 1)];
    Err(refuse(
        line,
        format!(
            "account {} would have {} webhooks ({kept} already in this store, {} in the file); an account has at most {MAX_WEBHOOKS_PER_ACCOUNT}",
            line.account,
            kept + lines.len(),
            lines.len()
        ),
    ))
}

/// Accounts and webhook ids met so far in a file, as 8-byte fingerprints: a repeat is refused
/// (a false repeat has a chance of about n²/2⁶⁴, and would only refuse a valid file).
pub struct Seen {
    hasher: std::collections::hash_map::RandomState,
    accounts: HashSet<u64>,
    ids: HashSet<u64>,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            hasher: std::collections::hash_map::RandomState::new(),
            accounts: HashSet::new(),
            ids: HashSet::new(),
        }
    }
}

impl Seen {
    /// Notes a group's account and ids; refuses one met in an earlier group.
    pub fn note(&mut self, lines: &[Line]) -> Result<(), Refusal> {
        let Some(first) = lines.first() else {
            return Ok(());
        };
        if !self
            .accounts
            .insert(self.hasher.hash_one(first.account.as_str()))
        {
            return Err(refuse(
                first,
                format!(
                    "account {} appears again after other accounts: an account's webhooks must be on consecutive lines, as `webhooks export` writes them",
                    first.account
                ),
            ));
        }
        for line in lines {
            if !self.ids.insert(self.hasher.hash_one(line.id.as_str())) {
                return Err(refuse(
                    line,
                    format!(
                        "webhook {} appears earlier in the file, in another account",
                        line.id
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(number: u64, account: &str, id: &str, url: &str) -> Line {
        Line {
            number,
            account: AccountId::parse(account).unwrap(),
            id: id.parse().unwrap(),
            url: url.to_owned(),
            json: String::new(),
        }
    }

    fn stored(id: &str, url: &str) -> (String, Option<String>) {
        (id.to_owned(), Some(url.to_owned()))
    }

    #[test]
    fn an_account_with_room_takes_new_and_replaced_webhooks() {
        let lines = vec![
            line(1, "a", "wh_1", "https://x/1"),
            line(2, "a", "wh_2", "https://x/2"),
        ];
        let existing = Existing {
            webhooks: vec![
                stored("wh_1", "https://x/old"),
                stored("wh_9", "https://x/9"),
            ],
            owners: vec![Some("a".into()), None],
        };
        assert!(check_group(&lines, &existing).is_ok());
    }

    #[test]
    fn the_eleventh_webhook_of_an_account_is_refused_naming_its_line() {
        let existing = Existing {
            webhooks: (0..8)
                .map(|n| stored(&format!("wh_s{n}"), &format!("https://s/{n}")))
                .collect(),
            owners: vec![None; 3],
        };
        let lines: Vec<Line> = (0..3)
            .map(|n| line(10 + n, "a", &format!("wh_f{n}"), &format!("https://f/{n}")))
            .collect();
        let err = check_group(&lines, &existing).unwrap_err();
        assert_eq!(err.line, 12, "{err}");
        assert!(err.to_string().contains("at most 10"), "{err}");
    }

    #[test]
    fn a_url_twice_in_an_account_is_refused_in_the_file_and_against_the_store() {
        let twice = vec![
            line(4, "a", "wh_1", "https://x/1"),
            line(5, "a", "wh_2", "https://x/1"),
        ];
        let err = check_group(&twice, &Existing::default()).unwrap_err();
        assert_eq!(err.line, 5);
        assert!(err.to_string().contains("line 4"), "{err}");

        let one = vec![line(7, "a", "wh_1", "https://x/1")];
        let taken = Existing {
            webhooks: vec![stored("wh_other", "https://x/1")],
            owners: vec![None],
        };
        let err = check_group(&one, &taken).unwrap_err();
        assert_eq!(err.line, 7);
        assert!(err.to_string().contains("wh_other"), "{err}");
    }

    #[test]
    fn an_id_of_another_account_is_refused() {
        let one = vec![line(3, "a", "wh_1", "https://x/1")];
        let existing = Existing {
            webhooks: vec![],
            owners: vec![Some("b".into())],
        };
        let err = check_group(&one, &existing).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("line 3: webhook wh_1 belongs to account b"),
            "{err}"
        );
    }

    #[test]
    fn an_account_or_id_that_comes_back_later_is_refused() {
        let mut seen = Seen::default();
        seen.note(&[line(1, "a", "wh_1", "https://x/1")]).unwrap();
        seen.note(&[line(2, "b", "wh_2", "https://x/2")]).unwrap();
        let err = seen
            .note(&[line(3, "a", "wh_3", "https://x/3")])
            .unwrap_err();
        assert_eq!(err.line, 3);
        let err = seen
            .note(&[line(4, "c", "wh_2", "https://x/4")])
            .unwrap_err();
        assert!(err.to_string().contains("wh_2"), "{err}");
    }
}
