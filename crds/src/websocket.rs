//! The `websocket` scenario of a `LoadTest`: every user holds one WebSocket connection and
//! runs steps written in the manifest (connect, send, receive, close, with think, throttle,
//! coordinate and loop as in the `http` scenario). Field docs here are the `kubectl
//! explain` text.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::loadtest::Think;
use crate::schema::{any_value, optional_duration_string};

/// A declarative WebSocket scenario. Every user holds its own connection, across
/// iterations too, until a `close` step or the server closes it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSocketScenario {
    /// Time limit of a connect (TCP, TLS and the WebSocket handshake) and of a `receive`
    /// that sets none, e.g. `10s`. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub timeout: Option<String>,

    /// Accept any TLS certificate on `wss://` (for self-signed test targets). Default
    /// false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,

    /// The steps every user runs, in order.
    #[schemars(length(min = 1))]
    pub steps: Vec<WebSocketStep>,
}

/// One step of a WebSocket scenario: exactly one of its fields is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["connect"]}, {"required": ["send"]}, {"required": ["receive"]}, {"required": ["close"]}, {"required": ["think"]}, {"required": ["throttle"]}, {"required": ["coordinate"]}, {"required": ["loop"]}]))]
pub struct WebSocketStep {
    /// Open the user's connection (kept from an earlier iteration when still open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Connect>,

    /// Send one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Send>,

    /// Wait for a message that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Receive>,

    /// Close the connection (close handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<Close>,

    /// Pause; messages arriving meanwhile are kept for later receives, pings answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Think>,

    /// Wait for a permit of the named Throttle (a global rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub throttle: Option<String>,

    /// Wait until this user's group of the named Coordinator forms; the group's members are
    /// then available as `{{group.ids}}`, `{{group.size}}` and `{{group.peer}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub coordinate: Option<String>,

    /// Run inner steps several times (inner steps cannot hold another loop).
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub loop_: Option<WebSocketLoop>,
}

/// A repeated block of WebSocket steps.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSocketLoop {
    /// How many times the inner steps run.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub times: i64,

    /// The steps to repeat. A step inside a loop cannot itself be a loop.
    #[schemars(length(min = 1))]
    pub steps: Vec<WebSocketInnerStep>,
}

/// One step inside a loop: like a step, without nested loops.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["connect"]}, {"required": ["send"]}, {"required": ["receive"]}, {"required": ["close"]}, {"required": ["think"]}, {"required": ["throttle"]}, {"required": ["coordinate"]}]))]
pub struct WebSocketInnerStep {
    /// Open the user's connection (kept when still open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Connect>,

    /// Send one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Send>,

    /// Wait for a message that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Receive>,

    /// Close the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<Close>,

    /// Pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Think>,

    /// Wait for a permit of the named Throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub throttle: Option<String>,

    /// Wait until this user's group of the named Coordinator forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub coordinate: Option<String>,
}

impl From<WebSocketInnerStep> for WebSocketStep {
    fn from(s: WebSocketInnerStep) -> WebSocketStep {
        WebSocketStep {
            connect: s.connect,
            send: s.send,
            receive: s.receive,
            close: s.close,
            think: s.think,
            throttle: s.throttle,
            coordinate: s.coordinate,
            loop_: None,
        }
    }
}

/// Opening the connection. Measured (TCP, TLS and handshake) under its name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Connect {
    /// Name of the step in metrics, thresholds and the report. Default `connect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,

    /// `ws://` or `wss://` URL (templates allowed), e.g. `{{vars.target}}/chat`.
    #[schemars(length(min = 1))]
    pub url: String,

    /// Extra headers of the handshake request (templates allowed), e.g. `authorization`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,

    /// Subprotocols offered (`Sec-WebSocket-Protocol`); the server must pick one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subprotocols: Vec<String>,
}

/// One message sent: exactly one of `text` or `json`. Measured (writing it) under its
/// name; a `receive` with `after` measures from it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Send {
    /// Name of the step in metrics and for `receive.after`. Default `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,

    /// A text message (templates allowed), e.g. `hello from {{user.id}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,

    /// A JSON message, sent as text; string values may be templates, and a string that is
    /// one placeholder keeps its value's type (`"{{user.id}}"` sends a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub json: Option<serde_json::Value>,
}

/// Waiting for a message that matches `bodyContains`, `json`, or both. Messages that do
/// not match are kept (the 64 most recent) for later receives, and counted.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receive {
    /// Name of the step in metrics, thresholds and the report. Default `receive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,

    /// The name of a `send` step: the latency is measured from this user's last send of
    /// it (a round trip), instead of from the start of the wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,

    /// Text the message must contain (templates allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,

    /// A field of the JSON message that must equal a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonMatch>,

    /// How long to wait, e.g. `5s`. Default: the scenario's `timeout`. Counted as an error
    /// of kind `timeout`, and the user goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub timeout: Option<String>,

    /// Values taken from the matching JSON message into user variables: `{room: "$.room"}`
    /// makes `{{room}}` available to later steps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extract: BTreeMap<String, String>,
}

/// A JSON field equality: the first value `path` selects must equal `equals`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonMatch {
    /// A JSONPath into the message, e.g. `$.from`.
    #[schemars(length(min = 1))]
    pub path: String,

    /// The value it must equal (JSON; strings may be templates, and `"{{group.peer}}"`
    /// keeps its number type). Numbers and strings are not equal to each other.
    #[schemars(schema_with = "any_value")]
    pub equals: serde_json::Value,
}

/// Closing the connection: a close frame, then the server's answer. Measured under its
/// name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Close {
    /// Name of the step in metrics, thresholds and the report. Default `close`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,
}
