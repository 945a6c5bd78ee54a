//! `spec.metrics.remoteWrite`, checked: where the master pushes the test's series with
//! Prometheus remote-write, how often, and which Secret key holds the bearer token. One
//! rule for `murmur run`, the master and the operator.

use std::time::Duration;

use murmuration_crds::metrics::MetricsSpec;
use murmuration_crds::units::parse_duration;

use crate::error::FieldError;

/// Push interval when `interval` is left out.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest push interval: Prometheus keeps milliseconds, but one request per second per
/// test is already more than any dashboard reads.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest push interval: beyond a minute, a short test is missed again.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Where and how often the series go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWritePlan {
    /// The endpoint, `http://` or `https://` with a host.
    pub url: String,
    /// Time between two samples (and pushes).
    pub interval: Duration,
    /// The Secret and key holding the bearer token, when one is sent.
    pub token_secret: Option<(String, String)>,
}

/// Checks `spec.metrics` and returns the remote-write plan, if any.
pub fn compile(spec: Option<&MetricsSpec>) -> Result<Option<RemoteWritePlan>, FieldError> {
    let Some(rw) = spec.and_then(|m| m.remote_write.as_ref()) else {
        return Ok(None);
    };
    let at = "spec.metrics.remoteWrite";
    let url = rw.url.trim();
    let example = "e.g. http://prometheus.monitoring:9090/api/v1/write";
    if url.is_empty() {
        return Err(FieldError::new(
            format!("{at}.url"),
            format!("is empty ({example})"),
        ));
    }
    let (_, uri) = crate::http::absolute(url)
        .map_err(|e| FieldError::new(format!("{at}.url"), format!("{e} ({example})")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(FieldError::new(
            format!("{at}.url"),
            format!("{url:?} has no host ({example})"),
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(FieldError::new(
            format!("{at}.url"),
            "must not hold credentials: put the token in bearerTokenSecret",
        ));
    }
    let interval = match rw.interval.as_deref() {
        None => DEFAULT_INTERVAL,
        Some(text) => {
            let d =
                parse_duration(text).map_err(|e| FieldError::new(format!("{at}.interval"), e))?;
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
                return Err(FieldError::new(
                    format!("{at}.interval"),
                    format!("{text:?} is not between 1s and 1m"),
                ));
            }
            d
        }
    };
    let token_secret = match &rw.bearer_token_secret {
        None => None,
        Some(s) => {
            let field = format!("{at}.bearerTokenSecret");
            if !is_dns_subdomain(&s.name) {
                return Err(FieldError::new(
                    format!("{field}.name"),
                    format!(
                        "{:?} is not a Secret name (lowercase letters, digits, '-' and '.', at most 253)",
                        s.name
                    ),
                ));
            }
            if s.key.is_empty()
                || s.key.len() > 253
                || !s
                    .key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(FieldError::new(
                    format!("{field}.key"),
                    format!(
                        "{:?} is not a Secret key (letters, digits, '-', '_' and '.')",
                        s.key
                    ),
                ));
            }
            Some((s.name.clone(), s.key.clone()))
        }
    };
    Ok(Some(RemoteWritePlan {
        url: url.to_owned(),
        interval,
        token_secret,
    }))
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmuration_crds::metrics::{RemoteWriteSpec, SecretKeyRef};

    fn spec(url: &str, interval: Option<&str>, secret: Option<(&str, &str)>) -> MetricsSpec {
        MetricsSpec {
            remote_write: Some(RemoteWriteSpec {
                url: url.into(),
                interval: interval.map(Into::into),
                bearer_token_secret: secret.map(|(name, key)| SecretKeyRef {
                    name: name.into(),
                    key: key.into(),
                }),
            }),
        }
    }

    fn field_of(s: MetricsSpec) -> String {
        compile(Some(&s)).unwrap_err().field
    }

    #[test]
    fn a_good_spec_compiles_with_its_default_interval() {
        let p = compile(Some(&spec(
            "https://prom.example:9090/api/v1/write",
            None,
            Some(("prom-writer", "token")),
        )))
        .unwrap()
        .unwrap();
        assert_eq!(p.interval, DEFAULT_INTERVAL);
        assert_eq!(p.token_secret, Some(("prom-writer".into(), "token".into())));
        assert_eq!(compile(None).unwrap(), None);
        assert_eq!(compile(Some(&MetricsSpec::default())).unwrap(), None);
    }

    #[test]
    fn each_bad_value_is_named_by_its_field() {
        let url = "spec.metrics.remoteWrite.url";
        assert_eq!(field_of(spec("", None, None)), url);
        assert_eq!(field_of(spec("ftp://h/w", None, None)), url);
        assert_eq!(field_of(spec("/api/v1/write", None, None)), url);
        assert_eq!(field_of(spec("http://u:p@h/w", None, None)), url);
        let iv = "spec.metrics.remoteWrite.interval";
        assert_eq!(field_of(spec("http://h/w", Some("100ms"), None)), iv);
        assert_eq!(field_of(spec("http://h/w", Some("5m"), None)), iv);
        assert_eq!(field_of(spec("http://h/w", Some("soon"), None)), iv);
        assert_eq!(
            field_of(spec("http://h/w", None, Some(("Bad_Name", "k")))),
            "spec.metrics.remoteWrite.bearerTokenSecret.name"
        );
        assert_eq!(
            field_of(spec("http://h/w", None, Some(("s", "a/b")))),
            "spec.metrics.remoteWrite.bearerTokenSecret.key"
        );
    }
}
