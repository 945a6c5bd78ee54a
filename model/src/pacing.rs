//! How users come and go, and when a test has completed: the rules the local engine and
//! the distributed master share.
//!
//! `userRate` moves the number of launched users towards the desired number one user at a
//! time, one every `1/userRate`; time spent with nothing to change is not banked, so a
//! later change starts at the rate, not in a burst.

use std::time::{Duration, Instant};

use murmuration_crds::units::Rate;

/// Paces user starts and stops at `userRate`.
#[derive(Debug, Clone)]
pub struct UserPacer {
    /// Time between two changes; `None` changes everything at once.
    interarrival: Option<Duration>,
    /// When the last change was due.
    last_change: Instant,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// How many users to start (when launched < desired) or stop (when launched > desired).
    pub due: u64,
    /// When the next change is due, if the gap is not closed by this one.
    pub next: Option<Instant>,
}

impl UserPacer {
    /// A pacer for `rate` (`None`: all at once), counting from `now`.
    pub fn new(rate: Option<Rate>, now: Instant) -> UserPacer {
        UserPacer {
            interarrival: rate.and_then(|r| r.interarrival()),
            last_change: now,
        }
    }

    /// Starts counting afresh from `now` (nothing to change, or a pause).
    pub fn reset(&mut self, now: Instant) {
        self.last_change = now;
    }

    /// How many users to start or stop at `now` to move `launched` towards `desired`.
    pub fn pace(&mut self, desired: u64, launched: u64, now: Instant) -> Pace {
        let gap = desired.abs_diff(launched);
        if gap == 0 {
            self.last_change = now;
            return Pace { due: 0, next: None };
        }
        let Some(ia) = self.interarrival else {
            return Pace {
                due: gap,
                next: None,
            };
        };
        let n = (now
            .saturating_duration_since(self.last_change)
            .as_secs_f64()
            / ia.as_secs_f64()) as u64;
        // Do not bank time while idle: at most what is due since the last change.
        self.last_change = if n >= gap {
            now
        } else {
            self.last_change + ia.mul_f64(n as f64)
        };
        let due = n.min(gap);
        Pace {
            due,
            next: (gap > due).then(|| self.last_change + ia),
        }
    }
}

/// Whether a test has completed by itself: users were launched, as many as desired, and
/// none of them is still running (all repeats done, or every user failed for good).
pub fn completed(desired: u64, launched: u64, still_running: u64) -> bool {
    launched > 0 && launched == desired && still_running == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_come_one_by_one_at_the_rate() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = UserPacer::new(Some(Rate::parse("10/s").unwrap()), t0);
        assert_eq!(
            p.pace(5, 0, t0),
            Pace {
                due: 0,
                next: Some(t0 + ms(100))
            }
        );
        let at = t0 + ms(250);
        let pace = p.pace(5, 0, at);
        assert_eq!(pace.due, 2);
        assert_eq!(pace.next, Some(t0 + ms(300)));
        // Everything due at once once the time for the whole gap went by.
        let pace = p.pace(5, 2, t0 + ms(10_000));
        assert_eq!(pace, Pace { due: 3, next: None });
        // Going down follows the same rate, without banked time.
        let t1 = t0 + ms(20_000);
        assert_eq!(p.pace(5, 5, t1).due, 0);
        assert_eq!(p.pace(0, 5, t1 + ms(150)).due, 1);
    }

    #[test]
    fn without_a_rate_everything_changes_at_once() {
        let t0 = Instant::now();
        let mut p = UserPacer::new(None, t0);
        assert_eq!(
            p.pace(1000, 0, t0),
            Pace {
                due: 1000,
                next: None
            }
        );
        assert_eq!(p.pace(10, 1000, t0).due, 990);
    }

    #[test]
    fn a_test_completes_when_every_launched_user_ended() {
        assert!(completed(10, 10, 0));
        assert!(!completed(10, 10, 1));
        assert!(!completed(10, 9, 0));
        assert!(
            !completed(0, 0, 0),
            "a test of zero users runs until stopped"
        );
    }
}
