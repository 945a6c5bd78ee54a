//! Coordinator specs checked: the plan (its group sizes are checked as they are read) and
//! the timeout.

use std::time::Duration;

use murmuration_crds::units::parse_duration;
use murmuration_crds::CoordinatorSpec;

use crate::error::FieldError;

/// How long a coordinator waits for a new arrival when `spec.timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks a Coordinator's spec; returns its timeout. Errors name the field.
pub fn compile(spec: &CoordinatorSpec) -> Result<Duration, FieldError> {
    let timeout = match &spec.timeout {
        Some(t) => parse_duration(t).map_err(|e| FieldError::new("spec.timeout", e))?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err(FieldError::new("spec.timeout", "must be longer than zero"));
    }
    if spec.plan.is_empty() {
        return Err(FieldError::new("spec.plan", "needs at least one item"));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        let spec = |yaml: &str| -> CoordinatorSpec { serde_saphyr::from_str(yaml).unwrap() };
        assert_eq!(
            compile(&spec("plan: [{users: 2, action: pairs}]")).unwrap(),
            DEFAULT_TIMEOUT
        );
        for (yaml, field) in [
            (
                "timeout: soon\nplan: [{users: 2, action: pairs}]",
                "spec.timeout",
            ),
            (
                "timeout: 0s\nplan: [{users: 2, action: pairs}]",
                "spec.timeout",
            ),
            ("plan: []", "spec.plan"),
        ] {
            assert_eq!(compile(&spec(yaml)).unwrap_err().field, field, "{yaml}");
        }
    }
}
