//! `spec.metrics` of a LoadTest: where the master sends the test's figures besides its
//! `/metrics` endpoint. Today that is Prometheus remote-write, so that a test shorter than
//! a scrape interval is not missed. The model crate checks the values (URL, interval,
//! Secret reference); these types only say what may be written.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The master's environment variable holding the remote-write bearer token: the operator
/// sets it from the Secret key that `bearerTokenSecret` names; outside a cluster a person
/// may set it.
pub const REMOTE_WRITE_TOKEN_ENV: &str = "MURMUR_REMOTE_WRITE_TOKEN";

/// `spec.metrics`: the test's figures pushed where people look.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSpec {
    /// Push the series of the master's `/metrics` to a Prometheus remote-write endpoint
    /// (remote-write 1.0), e.g. `{url: http://prometheus.monitoring:9090/api/v1/write,
    /// bearerTokenSecret: {name: prom-writer, key: token}, interval: 5s}`. Samples wait in
    /// a bounded buffer while the endpoint is down and are sent when it is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_write: Option<RemoteWriteSpec>,
}

/// `spec.metrics.remoteWrite`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteWriteSpec {
    /// The endpoint: `http://` or `https://` with a host, e.g.
    /// `http://prometheus.monitoring:9090/api/v1/write`.
    pub url: String,

    /// A key of a Secret in the test's namespace holding the bearer token sent as
    /// `Authorization: Bearer ...`. Without it, no `Authorization` header is sent.
    /// `murmur run` cannot read Secrets: it takes the token from `--remote-write-token-file`
    /// or `MURMUR_REMOTE_WRITE_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<SecretKeyRef>,

    /// How often the figures are sampled and pushed, from `1s` to `1m`. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_duration_string")]
    pub interval: Option<String>,
}

/// A key of a Secret in the test's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key within the Secret's `data`.
    pub key: String,
}
