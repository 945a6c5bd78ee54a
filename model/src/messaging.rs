//! The `messaging` scenario's settings (the users of amoc's Livebook demo), checked: the
//! server address template, message counts, timers and neighbourhood.

use std::time::Duration;

use murmuration_crds::loadtest::MessagingScenario;
use murmuration_crds::units::parse_duration;

use crate::error::FieldError;
use crate::template::Template;

/// The messaging users' settings, checked.
#[derive(Debug, Clone)]
pub struct MessagingPlan {
    /// `host:port` of the server, rendered per user.
    pub server: Template,
    /// Fewest messages a user sends.
    pub min_messages: u32,
    /// Most messages a user sends.
    pub max_messages: u32,
    /// About how often a user sends.
    pub interval: Duration,
    /// How long a user with nothing left to say waits for news before it leaves.
    pub silence: Duration,
    /// A user talks to ids within this distance of its own.
    pub neighbours: u64,
}

impl MessagingPlan {
    /// Checks `spec.scenario.messaging` (`at`); errors name the field.
    pub fn compile(s: &MessagingScenario, at: &str) -> Result<MessagingPlan, FieldError> {
        let server =
            Template::parse(&s.server).map_err(|e| FieldError::new(format!("{at}.server"), e))?;
        let d = |v: &Option<String>, f: &str, default: Duration| -> Result<Duration, FieldError> {
            let d = match v {
                Some(v) => {
                    parse_duration(v).map_err(|e| FieldError::new(format!("{at}.{f}"), e))?
                }
                None => default,
            };
            if d.is_zero() {
                return Err(FieldError::new(
                    format!("{at}.{f}"),
                    "must be longer than zero",
                ));
            }
            Ok(d)
        };
        let (min, max) = (s.min_messages.unwrap_or(20), s.max_messages.unwrap_or(30));
        if min > max {
            return Err(FieldError::new(
                format!("{at}.minMessages"),
                format!("minMessages ({min}) is more than maxMessages ({max})"),
            ));
        }
        Ok(MessagingPlan {
            server,
            min_messages: min,
            max_messages: max,
            interval: d(&s.interval, "interval", Duration::from_secs(1))?,
            silence: d(&s.silence, "silence", Duration::from_secs(3))?,
            neighbours: s.neighbours.unwrap_or(10) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_field_by_field() {
        let spec = |yaml: &str| -> MessagingScenario { serde_saphyr::from_str(yaml).unwrap() };
        let at = "spec.scenario.messaging";
        let ok = MessagingPlan::compile(&spec("server: \"{{vars.target}}\""), at).unwrap();
        assert_eq!((ok.min_messages, ok.max_messages), (20, 30));
        for (yaml, field) in [
            ("server: x\nminMessages: 5\nmaxMessages: 2", "minMessages"),
            ("server: x\ninterval: 0s", "interval"),
            ("server: x\nsilence: soon", "silence"),
            ("server: \"{{vars.x\"", "server"),
        ] {
            let e = MessagingPlan::compile(&spec(yaml), at).unwrap_err();
            assert_eq!(e.field, format!("{at}.{field}"), "{yaml}: {e}");
        }
    }
}
