//! Pure retry logic (DESIGN §3): what an attempt's result means ([`classify`]), and what
//! follows from it ([`settle`]): delivered, the delay queue the next attempt waits in, or the
//! reason it is dead-lettered. No I/O and no clock here; callers pass `now` and the jitter draw.

use crate::messages::DeadReason;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again, no sooner than `at_least` if the receiver asked (Retry-After).
    Retry {
        at_least: Option<Duration>,
    },
    /// 410: the receiver wants no more; the webhook is disabled.
    Gone,
    /// No request was made: the target is not public, or its scheme is not allowed.
    Refused,
    /// No request was made: the rendered body is over the limit.
    BodyTooLarge,
}

impl Verdict {
    /// The `result` label of `hookrelay_attempts_total`.
    /// Every value [`Verdict::label`] returns (the `result` label of `hookrelay_attempts_total`).
    pub const LABELS: &'static [&'static str] =
        &["delivered", "failed", "gone", "refused", "body_too_large"];

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Retry { .. } => "failed",
            Verdict::Gone => "gone",
            Verdict::Refused => "refused",
            Verdict::BodyTooLarge => "body_too_large",
        }
    }
}

/// What the worker does after an attempt: one value, decided before any I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    Delivered,
    Retry(NextAttempt),
    Dead(DeadReason),
}

/// Settles attempt number `attempt` (1 = the first) that came to `verdict`. `draw` is uniform
/// in [0, 1) and picks the retry's jitter.
pub fn settle(verdict: &Verdict, attempt: u32, schedule: &RetrySchedule, draw: f64) -> Settlement {
    match verdict {
        Verdict::Delivered => Settlement::Delivered,
        Verdict::Retry { at_least } => match schedule.next(attempt, *at_least, draw) {
            Some(next) => Settlement::Retry(next),
            None => Settlement::Dead(DeadReason::Exhausted),
        },
        Verdict::Gone => Settlement::Dead(DeadReason::Gone),
        Verdict::Refused => Settlement::Dead(DeadReason::TargetRefused),
        Verdict::BodyTooLarge => Settlement::Dead(DeadReason::BodyTooLarge),
    }
}

/// ±20 % around `step`: `draw` uniform in [0, 1) maps to [0.8, 1.2) × step. The one jitter of
/// both retries and deferrals.
pub fn jitter(step: Duration, draw: f64) -> Duration {
    step.mul_f64(0.8 + 0.4 * draw.clamp(0.0, 1.0))
}

/// Classifies an HTTP status (plus its parsed `Retry-After`).
pub fn classify(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        429 | 503 => Verdict::Retry {
            at_least: retry_after,
        },
        _ => Verdict::Retry { at_least: None },
    }
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`; a date in the past is zero.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Where the next attempt waits: a delay queue (named by `step`) and the message's expiration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextAttempt {
    pub step: Duration,
    pub expiration: Duration,
}

/// The retry schedule: n steps, n + 1 attempts.
#[derive(Clone, Debug)]
pub struct RetrySchedule {
    steps: Vec<Duration>,
}

impl RetrySchedule {
    pub fn new(steps: Vec<Duration>) -> Self {
        RetrySchedule { steps }
    }

    pub fn steps(&self) -> &[Duration] {
        &self.steps
    }

    pub fn max_attempts(&self) -> u32 {
        self.steps.len() as u32 + 1
    }

    /// After `attempts_made` attempts failed, where the next one waits, or `None` when the
    /// schedule is exhausted. `draw` is uniform in [0, 1) and picks the jitter within ±20 %.
    /// A Retry-After replaces that attempt's step: min(max(step, retry after), largest step),
    /// in the queue of the smallest step at least that long, and is never undercut by jitter.
    pub fn next(
        &self,
        attempts_made: u32,
        at_least: Option<Duration>,
        draw: f64,
    ) -> Option<NextAttempt> {
        let scheduled = *self.steps.get(attempts_made.checked_sub(1)? as usize)?;
        let largest = self.steps.iter().copied().max()?;
        match at_least {
            Some(asked) if asked > scheduled => {
                let wait = asked.min(largest);
                let step = self
                    .steps
                    .iter()
                    .copied()
                    .filter(|s| *s >= wait)
                    .min()
                    .unwrap_or(largest);
                // Up to +20 %, never below what the receiver asked (capped at the largest step).
                let expiration = wait.mul_f64(1.0 + 0.2 * draw).min(step.mul_f64(1.2));
                Some(NextAttempt { step, expiration })
            }
            _ => Some(NextAttempt {
                step: scheduled,
                expiration: jitter(scheduled, draw),
            }),
        }
    }

    /// Where a delivery deferred without an attempt waits (a slow endpoint, an open circuit, a
    /// rate limit): the first step, then longer each time it is deferred again (capped at the
    /// last step), so a long-slow endpoint does not cycle its backlog through the broker every
    /// few seconds. `None` without a schedule: there is no delay queue to wait in.
    pub fn deferral(&self, deferrals_so_far: u32, draw: f64) -> Option<NextAttempt> {
        let last = self.steps.len().checked_sub(1)?;
        let step = self.steps[(deferrals_so_far as usize).min(last)];
        Some(NextAttempt {
            step,
            expiration: jitter(step, draw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn schedule() -> RetrySchedule {
        RetrySchedule::new(vec![secs(5), secs(300), secs(1800)])
    }

    #[test]
    fn every_verdict_label_is_one_of_the_labels_exported_at_zero() {
        let verdicts = [
            Verdict::Delivered,
            Verdict::Retry { at_least: None },
            Verdict::Gone,
            Verdict::Refused,
            Verdict::BodyTooLarge,
        ];
        let labels: Vec<&str> = verdicts.iter().map(Verdict::label).collect();
        assert_eq!(labels, Verdict::LABELS);
    }

    #[test]
    fn statuses_are_classified_as_the_contract_says() {
        assert_eq!(classify(200, None), Verdict::Delivered);
        assert_eq!(classify(204, None), Verdict::Delivered);
        assert_eq!(classify(410, None), Verdict::Gone);
        assert_eq!(classify(301, None), Verdict::Retry { at_least: None });
        assert_eq!(
            classify(404, Some(secs(9))),
            Verdict::Retry { at_least: None }
        );
        assert_eq!(
            classify(429, Some(secs(9))),
            Verdict::Retry {
                at_least: Some(secs(9))
            }
        );
        assert_eq!(classify(500, None), Verdict::Retry { at_least: None });
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn n_steps_mean_n_plus_one_attempts() {
        let s = schedule();
        assert_eq!(s.max_attempts(), 4);
        assert_eq!(s.next(1, None, 0.5).unwrap().step, secs(5));
        assert_eq!(s.next(3, None, 0.5).unwrap().step, secs(1800));
        assert_eq!(s.next(4, None, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_of_the_step() {
        let s = schedule();
        assert_eq!(s.next(1, None, 0.0).unwrap().expiration, secs(4));
        let top = s.next(1, None, 0.999_999).unwrap().expiration;
        assert!(top < secs(6) && top > Duration::from_millis(5990));
    }

    #[test]
    fn retry_after_replaces_the_step_capped_by_the_largest() {
        let s = schedule();
        let next = s.next(1, Some(secs(60)), 0.0).unwrap();
        assert_eq!(
            next,
            NextAttempt {
                step: secs(300),
                expiration: secs(60)
            }
        );
        let next = s.next(1, Some(secs(99_999)), 0.0).unwrap();
        assert_eq!(
            next,
            NextAttempt {
                step: secs(1800),
                expiration: secs(1800)
            }
        );
        // A Retry-After shorter than the scheduled step changes nothing.
        assert_eq!(s.next(2, Some(secs(1)), 0.0).unwrap().step, secs(300));
    }

    /// Every row of DESIGN §3's outcome list that follows an attempt.
    #[test]
    fn each_outcome_settles_as_the_contract_says() {
        let s = schedule();
        let retry = |at_least| Verdict::Retry { at_least };
        assert_eq!(
            settle(&Verdict::Delivered, 1, &s, 0.5),
            Settlement::Delivered
        );
        assert_eq!(
            settle(&retry(None), 1, &s, 0.5),
            Settlement::Retry(NextAttempt {
                step: secs(5),
                expiration: secs(5)
            })
        );
        assert_eq!(
            settle(&retry(Some(secs(60))), 1, &s, 0.0),
            Settlement::Retry(NextAttempt {
                step: secs(300),
                expiration: secs(60)
            })
        );
        assert_eq!(
            settle(&retry(None), 4, &s, 0.5),
            Settlement::Dead(DeadReason::Exhausted)
        );
        assert_eq!(
            settle(&Verdict::Gone, 1, &s, 0.5),
            Settlement::Dead(DeadReason::Gone)
        );
        assert_eq!(
            settle(&Verdict::Refused, 2, &s, 0.5),
            Settlement::Dead(DeadReason::TargetRefused)
        );
        assert_eq!(
            settle(&Verdict::BodyTooLarge, 1, &s, 0.5),
            Settlement::Dead(DeadReason::BodyTooLarge)
        );
        // No schedule: the first failure is the last.
        assert_eq!(
            settle(&retry(None), 1, &RetrySchedule::new(vec![]), 0.5),
            Settlement::Dead(DeadReason::Exhausted)
        );
    }

    #[test]
    fn deferrals_wait_longer_each_time_up_to_the_last_step() {
        let s = schedule();
        assert_eq!(s.deferral(0, 0.5).unwrap().step, secs(5));
        assert_eq!(s.deferral(1, 0.5).unwrap().step, secs(300));
        assert_eq!(s.deferral(u32::MAX, 0.5).unwrap().step, secs(1800));
        assert_eq!(RetrySchedule::new(vec![]).deferral(0, 0.5), None);
    }
}
