//! Throttle specs checked (rate, interval, ramp), and the ramp's rate at a time: the one
//! rule that the engine's throttles and the master's shared throttles both follow.

use std::time::Duration;

use murmuration_crds::units::parse_duration;
use murmuration_crds::ThrottleSpec;

use crate::error::FieldError;

/// A rate limit: `rate` permits per `interval`; `interval` zero means at most `rate` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Permits per interval (or parallel slots).
    pub rate: u64,
    /// The interval; zero for a parallel limit.
    pub interval: Duration,
}

/// A gradual rate change as written (amoc's `change_rate_gradually`): by `step` every
/// `every` until `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RampPlan {
    /// The rate to end at.
    pub to: u64,
    /// How much the rate moves at each step.
    pub step: u64,
    /// Time between two steps.
    pub every: Duration,
}

/// A throttle's spec, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePlan {
    /// The limit it starts with.
    pub limit: Limit,
    /// Its gradual change, if any.
    pub ramp: Option<RampPlan>,
}

/// Checks a Throttle's spec; errors name the field (`spec.interval`).
pub fn compile(spec: &ThrottleSpec) -> Result<ThrottlePlan, FieldError> {
    if spec.rate < 0 {
        return Err(FieldError::new("spec.rate", "cannot be negative"));
    }
    let interval = match &spec.interval {
        Some(i) => parse_duration(i).map_err(|e| FieldError::new("spec.interval", e))?,
        None => Duration::from_secs(60),
    };
    if !interval.is_zero() && interval < Duration::from_millis(1) {
        return Err(FieldError::new(
            "spec.interval",
            "must be 0s or at least 1ms",
        ));
    }
    let ramp = match &spec.ramp {
        None => None,
        Some(r) => {
            let every =
                parse_duration(&r.every).map_err(|e| FieldError::new("spec.ramp.every", e))?;
            if every.is_zero() {
                return Err(FieldError::new(
                    "spec.ramp.every",
                    "must be longer than zero",
                ));
            }
            if r.step < 1 {
                return Err(FieldError::new("spec.ramp.step", "must be at least 1"));
            }
            if r.to < 0 {
                return Err(FieldError::new("spec.ramp.to", "cannot be negative"));
            }
            Some(RampPlan {
                to: r.to as u64,
                step: r.step as u64,
                every,
            })
        }
    };
    Ok(ThrottlePlan {
        limit: Limit {
            rate: spec.rate as u64,
            interval,
        },
        ramp,
    })
}

/// A ramp under way: from `from` towards `to`, started at a time the caller keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ramp {
    /// The rate when it started.
    pub from: u64,
    /// The rate to end at.
    pub to: u64,
    /// How much the rate moves at each step (at least 1).
    pub step: u64,
    /// Time between two steps (at least 1 ms).
    pub every: Duration,
}

impl Ramp {
    /// A ramp of `plan` from the rate `from`.
    pub fn new(from: u64, plan: RampPlan) -> Ramp {
        Ramp {
            from,
            to: plan.to,
            step: plan.step.max(1),
            every: plan.every.max(Duration::from_millis(1)),
        }
    }

    /// The rate in force `elapsed` after the start: moved by `step` for every whole
    /// `every` gone by, never past `to`.
    pub fn rate_after(&self, elapsed: Duration) -> u64 {
        let steps = (elapsed.as_nanos() / self.every.as_nanos().max(1)) as u64;
        let moved = steps.saturating_mul(self.step);
        if self.to >= self.from {
            self.from.saturating_add(moved).min(self.to)
        } else {
            self.from.saturating_sub(moved).max(self.to)
        }
    }

    /// When (as time after the start) the rate changes next, or `None` once at `to`.
    pub fn next_step_after(&self, elapsed: Duration) -> Option<Duration> {
        if self.rate_after(elapsed) == self.to {
            return None;
        }
        let every = self.every.as_nanos().max(1);
        let steps = elapsed.as_nanos() / every + 1;
        Some(Duration::from_nanos((steps * every) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ThrottleSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn specs_are_checked() {
        assert_eq!(
            compile(&spec("rate: 5")).unwrap().limit,
            Limit {
                rate: 5,
                interval: Duration::from_secs(60)
            }
        );
        for (yaml, field) in [
            ("rate: -1", "spec.rate"),
            ("rate: 5\ninterval: fast", "spec.interval"),
            ("rate: 5\ninterval: 10us", "spec.interval"),
            (
                "rate: 5\nramp: {to: 9, step: 0, every: 1s}",
                "spec.ramp.step",
            ),
            (
                "rate: 5\nramp: {to: 9, step: 1, every: 0s}",
                "spec.ramp.every",
            ),
            (
                "rate: 5\nramp: {to: -9, step: 1, every: 1s}",
                "spec.ramp.to",
            ),
        ] {
            assert_eq!(compile(&spec(yaml)).unwrap_err().field, field, "{yaml}");
        }
    }

    #[test]
    fn a_ramp_moves_by_whole_steps_and_stops_at_its_end() {
        let up = Ramp::new(
            100,
            RampPlan {
                to: 350,
                step: 100,
                every: Duration::from_secs(1),
            },
        );
        let s = Duration::from_secs;
        assert_eq!(up.rate_after(s(0)), 100);
        assert_eq!(up.rate_after(Duration::from_millis(999)), 100);
        assert_eq!(up.rate_after(s(1)), 200);
        assert_eq!(up.rate_after(s(3)), 350);
        assert_eq!(up.next_step_after(Duration::from_millis(1500)), Some(s(2)));
        assert_eq!(up.next_step_after(s(3)), None);
        let down = Ramp::new(
            10,
            RampPlan {
                to: 0,
                step: 4,
                every: s(1),
            },
        );
        assert_eq!(down.rate_after(s(2)), 2);
        assert_eq!(down.rate_after(s(100)), 0);
    }
}
