//! Pure retry logic (DESIGN §3): what an attempt's result means, and when and where the next
//! attempt waits. No I/O and no clock here; callers pass `now` and the jitter draw.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// What one attempt came to, as far as the policy cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again, no sooner than `at_least` if the receiver asked (Retry-After).
    Retry {
        at_least: Option<Duration>,
    },
    /// 410: the receiver wants no more; the webhook is disabled.
    Gone,
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
                expiration: scheduled.mul_f64(0.8 + 0.4 * draw),
            }),
        }
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
}
