//! Durations and rates as they are written in manifests (`"500ms"`, `"1m"`, `"20/s"`,
//! `"1200/m"`), parsed into typed values with errors that say what was expected.
//!
//! Manifests keep these as strings (design section 9) so that `kubectl explain` and YAML
//! stay readable; everything that runs a test works with the parsed forms below.

use std::fmt;
use std::time::Duration;

/// Why a duration or rate string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The duration is not of the form `<number><unit>` (`500ms`, `1s`, `2m`, `1h30m`).
    #[error("{value:?} is not a duration: {reason} (expected e.g. \"500ms\", \"10s\", \"1m30s\")")]
    Duration {
        /// The text that was given.
        value: String,
        /// What the parser objected to.
        reason: String,
    },
    /// The rate is not of the form `<count>/<period>` (`20/s`, `1200/m`, `5/10s`).
    #[error("{value:?} is not a rate: {reason} (expected e.g. \"20/s\", \"1200/m\", \"1/500ms\")")]
    Rate {
        /// The text that was given.
        value: String,
        /// What the parser objected to.
        reason: String,
    },
}

/// The longest duration a manifest may give (a year): long enough for any test, short
/// enough that every deadline computed from it (now + duration) stays representable.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// The fastest rate a manifest may give, per second (far beyond what any agent sends).
pub const MAX_RATE_PER_SECOND: f64 = 1e9;

/// Parses a manifest duration such as `"500ms"`, `"10s"`, `"1m30s"` or `"0s"`.
///
/// A bare `"0"` is accepted as zero; any other number needs a unit, because `"30"` is
/// ambiguous (seconds? milliseconds?) and guessing is how load tests go wrong.
pub fn parse_duration(value: &str) -> Result<Duration, UnitError> {
    let trimmed = value.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    if trimmed.is_empty() {
        return Err(UnitError::Duration {
            value: value.to_owned(),
            reason: "it is empty".into(),
        });
    }
    if trimmed.starts_with('-') {
        return Err(UnitError::Duration {
            value: value.to_owned(),
            reason: "durations cannot be negative".into(),
        });
    }
    if trimmed.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(UnitError::Duration {
            value: value.to_owned(),
            reason: "a unit is missing".into(),
        });
    }
    let duration = humantime::parse_duration(trimmed).map_err(|e| UnitError::Duration {
        value: value.to_owned(),
        reason: e.to_string(),
    })?;
    if duration > MAX_DURATION {
        return Err(UnitError::Duration {
            value: value.to_owned(),
            reason: "it is longer than 366d, the longest a manifest may give".into(),
        });
    }
    Ok(duration)
}

/// Formats a duration the way manifests write them (`1m30s`, `500ms`, `0s`).
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(duration)
        .to_string()
        .replace(' ', "")
}

/// A rate: `count` events per `per`. Kept as a fraction so that `"1200/m"` stays exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// How many events per period (may be fractional: `"0.5/s"`).
    pub count: f64,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parses `"20/s"`, `"1200/m"`, `"3/h"`, `"5/10s"` or `"1/500ms"`.
    pub fn parse(value: &str) -> Result<Rate, UnitError> {
        let err = |reason: &str| UnitError::Rate {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let (count, period) = value
            .trim()
            .split_once('/')
            .ok_or_else(|| err("the \"/\" between count and period is missing"))?;
        let count: f64 = count
            .trim()
            .parse()
            .map_err(|_| err("the count before \"/\" is not a number"))?;
        if !count.is_finite() || count < 0.0 {
            return Err(err("the count must be a non-negative number"));
        }
        let period = period.trim();
        let per = match period {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "ms" => Duration::from_millis(1),
            other => parse_duration(other).map_err(|_| {
                err("the period after \"/\" must be s, m, h or a duration such as 10s")
            })?,
        };
        if per.is_zero() {
            return Err(err("the period must be longer than zero"));
        }
        let rate = Rate { count, per };
        if rate.per_second() > MAX_RATE_PER_SECOND {
            return Err(err(
                "it is faster than 1000000000/s, the fastest a manifest may give",
            ));
        }
        if count > 0.0 && rate.per.as_secs_f64() / count > MAX_DURATION.as_secs_f64() {
            return Err(err(
                "it is slower than one per 366d, the slowest a manifest may give (or 0/s for none)",
            ));
        }
        Ok(rate)
    }

    /// Events per second.
    pub fn per_second(&self) -> f64 {
        self.count / self.per.as_secs_f64()
    }

    /// The time between two events when they are spread evenly, or `None` for a zero rate.
    pub fn interarrival(&self) -> Option<Duration> {
        if self.count <= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(self.per.as_secs_f64() / self.count))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let period = match self.per.as_millis() {
            1_000 => "s".to_owned(),
            60_000 => "m".to_owned(),
            3_600_000 => "h".to_owned(),
            _ => format_duration(self.per),
        };
        write!(f, "{}/{}", self.count, period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn bad_durations_say_why() {
        let e = parse_duration("30").unwrap_err().to_string();
        assert!(e.contains("unit is missing"), "{e}");
        let e = parse_duration("-1s").unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        let e = parse_duration("ten seconds").unwrap_err().to_string();
        assert!(e.contains("\"ten seconds\" is not a duration"), "{e}");
        assert!(parse_duration("").is_err());
        // Every deadline computed from a manifest's duration must stay representable.
        for huge in ["18446744073709551615s", "367d", "99999999999h"] {
            let e = parse_duration(huge).unwrap_err().to_string();
            assert!(e.contains("longer than 366d"), "{huge}: {e}");
        }
        assert_eq!(parse_duration("366d").unwrap(), MAX_DURATION);
    }

    #[test]
    fn rates_parse() {
        let r = Rate::parse("20/s").unwrap();
        assert_eq!(r.per_second(), 20.0);
        assert_eq!(r.interarrival(), Some(Duration::from_millis(50)));
        assert_eq!(Rate::parse("1200/m").unwrap().per_second(), 20.0);
        assert_eq!(Rate::parse("5/10s").unwrap().per_second(), 0.5);
        assert_eq!(Rate::parse("1/500ms").unwrap().per_second(), 2.0);
        assert_eq!(Rate::parse("0/s").unwrap().interarrival(), None);
        assert_eq!(Rate::parse("1200/m").unwrap().to_string(), "1200/m");
    }

    #[test]
    fn bad_rates_say_why() {
        for (input, expect) in [
            ("20", "\"/\" between count and period is missing"),
            ("x/s", "not a number"),
            ("-3/s", "non-negative"),
            ("3/fortnight", "period after"),
            ("3/0s", "longer than zero"),
            ("1/18446744073709551615s", "period after"),
            ("1e-300/s", "slower than one per 366d"),
            ("1e12/s", "faster than 1000000000/s"),
            ("inf/s", "non-negative"),
            ("NaN/s", "non-negative"),
        ] {
            let e = Rate::parse(input).unwrap_err().to_string();
            assert!(e.contains(expect), "{input}: {e}");
        }
    }

    #[test]
    fn durations_format_like_manifests() {
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }
}
