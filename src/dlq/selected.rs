//! The letters a replay or purge selected, handed out one at a time in queue order, each acked
//! only when the command is done with it, and everything else handed back to the broker in order.

use super::snapshot::{self, Held, Snapshot};
use super::{Control, Dlq, DlqError, Selection, Summary};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// The selected letters of a replay or purge, one at a time in queue order. With ids named,
/// every queue is read first (holding the matches) so that a missing id fails the command
/// before anything changed; with `--all` or a filter, letters are handed out as they are read,
/// so memory does not grow with the queue.
pub(crate) struct Selected<'a> {
    selection: &'a Selection,
    control: Control<'a>,
    now: DateTime<Utc>,
    /// The queues, read one after the other; `current` is the one being read.
    snapshots: Vec<Snapshot>,
    current: usize,
    /// With ids: every selected letter, read up front.
    buffered: Option<std::collections::VecDeque<(usize, Held)>>,
    /// Per queue, the ids of the letters removed, in case the broker hands some back.
    removed: Vec<HashSet<String>>,
    pub summary: Summary,
}

impl<'a> Selected<'a> {
    /// Opens the queues the selection looks in; fails, holding nothing, when nothing is
    /// selected or a named id is in none of them.
    pub(super) async fn open(
        dlq: &Dlq,
        selection: &'a Selection,
        control: Control<'a>,
    ) -> Result<Selected<'a>, DlqError> {
        if selection.ids.is_empty() && !selection.all && selection.filter.is_empty() {
            return Err(DlqError::NothingSelected);
        }
        let mut selected = Selected {
            selection,
            control,
            now: Utc::now(),
            snapshots: Vec::new(),
            current: 0,
            buffered: None,
            removed: Vec::new(),
            summary: Summary::default(),
        };
        for queue in selection.queues() {
            match dlq.open(queue).await {
                Ok(s) => {
                    selected.snapshots.push(s);
                    selected.removed.push(HashSet::new());
                }
                Err(e) => {
                    let _ = selected.release(dlq).await; // nothing was acked yet
                    return Err(e);
                }
            }
        }
        if !selection.ids.is_empty() {
            if let Err(e) = selected.read_up_front().await {
                let _ = selected.release(dlq).await; // nothing was acked yet
                return Err(e);
            }
        }
        Ok(selected)
    }

    async fn read_up_front(&mut self) -> Result<(), DlqError> {
        let mut found = std::collections::VecDeque::new();
        while let Some(next) = self.read_next().await? {
            found.push_back(next);
        }
        if self.summary.interrupted {
            return Err(DlqError::Interrupted);
        }
        let missing: Vec<String> = self
            .selection
            .ids
            .iter()
            .filter(|id| !found.iter().any(|(_, h)| &h.letter.id == *id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(DlqError::NotFound(missing));
        }
        self.summary.selected = found.len() as u64;
        self.buffered = Some(found);
        Ok(())
    }

    /// The next selected letter and the index of its queue.
    pub async fn next(&mut self) -> Result<Option<(usize, Held)>, DlqError> {
        match &mut self.buffered {
            Some(buffered) => Ok(buffered.pop_front()),
            None => {
                let next = self.read_next().await?;
                self.summary.selected += u64::from(next.is_some());
                Ok(next)
            }
        }
    }

    async fn read_next(&mut self) -> Result<Option<(usize, Held)>, DlqError> {
        while let Some(snapshot) = self.snapshots.get_mut(self.current) {
            if self.control.shutdown.is_cancelled() {
                self.summary.interrupted = true;
                return Ok(None);
            }
            match snapshot.next().await? {
                Some(held) if self.selection.matches(&held.letter, self.now) => {
                    return Ok(Some((self.current, held)))
                }
                Some(_) => {
                    if snapshot.read % 1024 == 0 {
                        self.progress(0);
                    }
                }
                None => self.current += 1,
            }
        }
        Ok(None)
    }

    /// Reports how far the reading got, with `done` letters acted on.
    pub fn progress(&self, done: u64) {
        let at = self.current.min(self.snapshots.len().saturating_sub(1));
        if let Some(s) = self.snapshots.get(at) {
            self.control.progress.update(s.queue, s.read, s.depth, done);
        }
    }

    /// Removes the letter `id` held at `tag` in queue number `at`.
    pub async fn ack(&mut self, at: usize, tag: snapshot::Tag, id: &str) -> Result<(), DlqError> {
        self.snapshots[at].ack(tag).await?;
        self.removed[at].insert(id.to_owned());
        Ok(())
    }

    /// Hands back everything not acked, queue by queue; then, where the broker reports more
    /// letters than were left, removes again by id any removed letter it handed back. Fails if
    /// a channel had ended before its close (then acks sent shortly before may not have been
    /// applied).
    pub(super) async fn release(self, dlq: &Dlq) -> (Summary, Result<(), DlqError>) {
        let mut summary = self.summary;
        let mut result = Ok(());
        for (s, removed) in self.snapshots.into_iter().zip(self.removed) {
            summary.note(&s);
            let queue = s.queue;
            match s.release().await {
                Ok(r) if r.surplus > 0 && !removed.is_empty() => {
                    if let Err(e) = dlq.sweep(queue, &removed).await {
                        result = result.and(Err(e));
                    }
                }
                Ok(_) => {}
                Err(e) => result = result.and(Err(DlqError::Unconfirmed(e))),
            }
        }
        (summary, result)
    }
}
