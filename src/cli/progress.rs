//! Progress of a long `dlq` command on stderr: a bar (`indicatif`) on a terminal, else a line
//! every [`EVERY`] letters read (count, rate, ETA), so that logs of a scripted replay show how
//! far it got. Stdout stays the command's data.

use crate::dlq::{DlqQueue, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// On a pipe, a line per this many letters read.
pub const EVERY: u32 = 10_000;

/// Draws progress on stderr.
pub struct Reporter {
    /// What is counted as done: "listed", "replayed", "purged".
    verb: &'static str,
    bar: Option<ProgressBar>,
    lines: Mutex<Lines>,
    enabled: bool,
}

struct Lines {
    started: Instant,
    /// The `read` count of the last line printed, per queue.
    last: Option<(DlqQueue, u32)>,
}

impl Reporter {
    /// A bar when stderr is a terminal, lines otherwise; nothing at all when `enabled` is
    /// false (e.g. a listing printed on the same terminal).
    pub fn new(verb: &'static str, enabled: bool) -> Reporter {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} read, {msg} ({per_sec}, ETA {eta})",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Reporter {
            verb,
            bar,
            lines: Mutex::new(Lines {
                started: Instant::now(),
                last: None,
            }),
            enabled,
        }
    }

    /// Prints a line above the bar (or on stderr).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar, leaving the last state printed as a line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

impl Progress for Reporter {
    fn update(&self, queue: DlqQueue, read: u32, depth: u32, done: u64) {
        if !self.enabled {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_prefix(queue.as_str());
            bar.set_length(u64::from(depth));
            bar.set_position(u64::from(read));
            bar.set_message(format!("{} {done}", self.verb));
            return;
        }
        let mut lines = self
            .lines
            .lock()
            .expect("never poisoned: no panics while held");
        let due = match lines.last {
            Some((q, at)) if q == queue => read >= at + EVERY || (read == depth && at != read),
            _ => read > 0,
        };
        if !due {
            return;
        }
        lines.last = Some((queue, read));
        let secs = lines.started.elapsed().as_secs_f64().max(0.001);
        let rate = f64::from(read) / secs;
        let eta = match rate > 0.0 {
            true => format!("{:.0}s", f64::from(depth.saturating_sub(read)) / rate),
            false => "?".to_owned(),
        };
        eprintln!(
            "{}: read {read}/{depth}, {} {done}, {rate:.0} letters/s, ETA {eta}",
            queue.as_str(),
            self.verb,
        );
    }
}
