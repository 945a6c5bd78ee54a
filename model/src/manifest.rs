//! Reading manifests: exactly one LoadTest and any number of Throttle and Coordinator
//! documents, from YAML (a file, `MURMUR_TEST`) or from the JSON the model writes itself
//! (what a master hands its agents, what the operator gives a master).
//!
//! YAML is read with limits suited to a manifest, so that hostile input is refused at once
//! with the limit named: the API server refuses objects over about 1.5 MiB, and no manifest
//! needs deep nesting or alias expansion.

use std::io::Read as _;

use murmuration_crds::{Coordinator, CoordinatorSpec, LoadTest, Throttle, ThrottleSpec};
use serde::Deserialize;

use crate::error::ManifestError;

/// The largest manifest text read: beyond the API server's limit on objects (about 1.5 MiB),
/// with room for comments.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// The deepest nesting of mappings and sequences a manifest may have.
pub const MAX_DEPTH: usize = 64;
/// The most YAML nodes (mappings, sequences, scalars) in a file.
pub const MAX_NODES: usize = 200_000;
/// The most events replayed by aliases (`*ref`) in a file.
pub const MAX_ALIAS_REPLAY: usize = 10_000;
/// The most documents in a file.
pub const MAX_DOCUMENTS: usize = 1_000;

/// The group and version of Murmuration's kinds.
pub const API_VERSION: &str = "murmuration.dev/v1alpha1";

/// What the manifests hold.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// The LoadTest.
    pub test: LoadTest,
    /// Throttles, by name.
    pub throttles: Vec<(String, ThrottleSpec)>,
    /// Coordinators, by name.
    pub coordinators: Vec<(String, CoordinatorSpec)>,
    /// Where each came from, for messages: (kind, name) → document label.
    labels: Vec<(String, String, String)>,
}

impl Manifests {
    /// Manifests of objects already typed (the operator's, from the API server): documents
    /// are labelled `Kind name`.
    pub fn of_objects(
        test: &LoadTest,
        throttles: &[Throttle],
        coordinators: &[Coordinator],
    ) -> Self {
        let name = |m: &Option<String>| m.clone().unwrap_or_default();
        let mut labels = vec![(
            "LoadTest".to_owned(),
            name(&test.metadata.name),
            format!("LoadTest {}", name(&test.metadata.name)),
        )];
        let throttles: Vec<(String, ThrottleSpec)> = throttles
            .iter()
            .map(|t| (name(&t.metadata.name), t.spec.clone()))
            .collect();
        let coordinators: Vec<(String, CoordinatorSpec)> = coordinators
            .iter()
            .map(|c| (name(&c.metadata.name), c.spec.clone()))
            .collect();
        for (n, _) in &throttles {
            labels.push(("Throttle".into(), n.clone(), format!("Throttle {n}")));
        }
        for (n, _) in &coordinators {
            labels.push(("Coordinator".into(), n.clone(), format!("Coordinator {n}")));
        }
        // Only what a test is made of: not the cluster's metadata or status.
        let test = LoadTest::new(&name(&test.metadata.name), test.spec.clone());
        Manifests {
            test,
            throttles,
            coordinators,
            labels,
        }
    }

    /// The test's name.
    pub fn name(&self) -> String {
        self.test.metadata.name.clone().unwrap_or_default()
    }

    /// The documents as a JSON array (the one form in which a test travels between
    /// processes: operator → master, master → agents), read back by [`parse_manifests`].
    pub fn to_json(&self) -> String {
        let mut docs = vec![document("LoadTest", &self.name(), &self.test.spec)];
        for (name, spec) in &self.throttles {
            docs.push(document("Throttle", name, spec));
        }
        for (name, spec) in &self.coordinators {
            docs.push(document("Coordinator", name, spec));
        }
        serde_json::Value::Array(docs).to_string()
    }

    /// The label (`FILE: document N (Kind name)`) of a document.
    pub fn label(&self, kind: &str, name: &str) -> String {
        self.labels
            .iter()
            .find(|(k, n, _)| k == kind && n == name)
            .map(|(_, _, l)| l.clone())
            .unwrap_or_else(|| format!("{kind} {name}"))
    }
}

/// A document as `kubectl apply` files have it, without cluster metadata.
fn document(kind: &str, name: &str, spec: &impl serde::Serialize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    name: Option<String>,
}

/// Reads a manifest file (at most [`MAX_BYTES`]).
pub fn read_manifests(path: &str) -> Result<Manifests, ManifestError> {
    let read = |source| ManifestError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    // Read one byte more than allowed, to tell a file at the limit from a larger one
    // without reading all of a huge file.
    let mut bytes = Vec::new();
    file.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() > MAX_BYTES {
        return Err(too_large(path));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| ManifestError::invalid(path, "(file)", format!("is not UTF-8 text: {e}")))?;
    parse_manifests(path, &text)
}

fn too_large(file: &str) -> ManifestError {
    ManifestError::invalid(
        file,
        "(file)",
        format!(
            "is larger than the limit of {} MiB for a manifest (the API server refuses objects over about 1.5 MiB)",
            MAX_BYTES / (1024 * 1024)
        ),
    )
}

/// The YAML reader's limits.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_documents: MAX_DOCUMENTS,
            max_total_scalar_bytes: MAX_BYTES,
            max_reader_input_bytes: Some(MAX_BYTES),
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_REPLAY,
        },
        // YAML 1.2, as Kubernetes reads `on`/`yes`: strings, not booleans.
        strict_booleans: true,
        // One-line messages: the document, field and reason are given around them.
        with_snippet: false,
    }
}

/// Why the YAML reader stopped, naming the limit when one was hit.
fn yaml_reason(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    use serde_saphyr::Error as E;
    // The error at the bottom: an alias or a snippet wraps the one that says what happened.
    let mut inner = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let limit = match inner {
        E::Budget { breach, .. } => match breach {
            B::Depth { .. } => Some(format!("nesting deeper than {MAX_DEPTH} levels (limit: depth {MAX_DEPTH})")),
            B::Nodes { .. } => Some(format!("more than {MAX_NODES} YAML nodes (limit: nodes {MAX_NODES})")),
            B::Documents { .. } => Some(format!("more than {MAX_DOCUMENTS} documents (limit: documents {MAX_DOCUMENTS})")),
            B::ScalarBytes { .. } | B::InputBytes { .. } => Some(format!(
                "more than {} MiB of text (limit: size {} MiB)",
                MAX_BYTES / (1024 * 1024),
                MAX_BYTES / (1024 * 1024)
            )),
            B::Aliases { .. } | B::AliasAnchorRatio { .. } | B::RecordedAnchorEvents { .. } | B::RecordedAnchorBytes { .. } => {
                Some(format!("too many aliases (limit: alias expansion {MAX_ALIAS_REPLAY} events)"))
            }
            other => Some(format!("too large or too complex (limit: {other:?})")),
        },
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => Some(format!(
            "aliases expand to more than {MAX_ALIAS_REPLAY} events (limit: alias expansion {MAX_ALIAS_REPLAY} events)"
        )),
        // The parser's own guard on flow collections (`[[[[...`) is the same depth limit.
        other if other.to_string().contains("recursion limit exceeded") => Some(format!(
            "nesting deeper than {MAX_DEPTH} levels (limit: depth {MAX_DEPTH})"
        )),
        _ => None,
    };
    match limit {
        Some(l) => format!("not valid YAML: {l}"),
        // The reader's advice to its programmer is not for the person writing the file.
        None => format!(
            "not valid YAML: {}",
            e.to_string().replace(
                ", set DuplicateKeyPolicy in Options if acceptable",
                " (each key once)"
            )
        ),
    }
}

/// Parses manifest text (YAML, or the JSON of [`Manifests::to_json`]); `file` names it in
/// messages.
pub fn parse_manifests(file: &str, text: &str) -> Result<Manifests, ManifestError> {
    if text.len() > MAX_BYTES {
        return Err(too_large(file));
    }
    let values: Vec<serde_json::Value> = if text.trim_start().starts_with('[') {
        // A YAML file is never a list at the top: this is the model's own JSON.
        serde_json::from_str(text).map_err(|e| {
            ManifestError::invalid(file, "(document)", format!("not valid JSON: {e}"))
        })?
    } else {
        serde_saphyr::from_multiple_with_options(text, yaml_options())
            .map_err(|e| ManifestError::invalid(file, "(document)", yaml_reason(&e)))?
    };
    let mut test: Option<(LoadTest, String)> = None;
    let mut throttles = Vec::new();
    let mut coordinators = Vec::new();
    let mut labels = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let index = i + 1;
        if value.is_null() {
            continue; // an empty document between `---` separators
        }
        let head: Head = serde_json::from_value(value.clone()).map_err(|e| {
            ManifestError::invalid(
                format!("{file}: document {index}"),
                "(document)",
                format!("not a Kubernetes object: {e}"),
            )
        })?;
        let kind = head.kind.unwrap_or_default();
        let name = head.metadata.and_then(|m| m.name).unwrap_or_default();
        let label = format!("{file}: document {index} ({kind} {name})");
        if head.api_version.as_deref() != Some(API_VERSION) {
            return Err(ManifestError::invalid(
                &label,
                "apiVersion",
                format!(
                    "must be {API_VERSION} (found {:?})",
                    head.api_version.unwrap_or_default()
                ),
            ));
        }
        if name.is_empty() {
            return Err(ManifestError::invalid(
                &label,
                "metadata.name",
                "is required",
            ));
        }
        labels.push((kind.clone(), name.clone(), label.clone()));
        match kind.as_str() {
            "LoadTest" => {
                let lt: LoadTest = typed(&label, value)?;
                if let Some((_, first)) = &test {
                    return Err(ManifestError::invalid(
                        &label,
                        "kind",
                        format!("a file runs one LoadTest, and {first} is one already"),
                    ));
                }
                test = Some((lt, label));
            }
            "Throttle" => {
                let t: Throttle = typed(&label, value)?;
                if throttles.iter().any(|(n, _)| *n == name) {
                    return Err(ManifestError::invalid(
                        &label,
                        "metadata.name",
                        "another Throttle has this name",
                    ));
                }
                throttles.push((name, t.spec));
            }
            "Coordinator" => {
                let c: Coordinator = typed(&label, value)?;
                if coordinators.iter().any(|(n, _)| *n == name) {
                    return Err(ManifestError::invalid(
                        &label,
                        "metadata.name",
                        "another Coordinator has this name",
                    ));
                }
                coordinators.push((name, c.spec));
            }
            other => {
                return Err(ManifestError::invalid(
                    &label,
                    "kind",
                    format!("{other:?} is not LoadTest, Throttle or Coordinator"),
                ))
            }
        }
    }
    let (test, _) =
        test.ok_or_else(|| ManifestError::invalid(file, "(file)", "holds no LoadTest document"))?;
    Ok(Manifests {
        test,
        throttles,
        coordinators,
        labels,
    })
}

/// Deserialises a document, naming the exact field that does not fit.
fn typed<T: serde::de::DeserializeOwned>(
    label: &str,
    value: serde_json::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(document)".to_owned()
        } else {
            path
        };
        ManifestError::invalid(label, field, plain_reason(&e.into_inner().to_string()))
    })
}

/// A reader's reason in the manifest's words: serde says `expected i32` or `expected
/// struct Think`; a person writing YAML needs "a whole number" or the shape with an
/// example. Every type error of every document goes through here.
fn plain_reason(reason: &str) -> String {
    let Some((what, expected)) = reason.rsplit_once(", expected ") else {
        return reason.to_owned();
    };
    let expected = match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            let max = match expected {
                "i8" => i8::MAX.to_string(),
                "i16" => i16::MAX.to_string(),
                "i32" => i32::MAX.to_string(),
                "u8" => u8::MAX.to_string(),
                "u16" => u16::MAX.to_string(),
                "u32" => u32::MAX.to_string(),
                _ => i64::MAX.to_string(),
            };
            format!("a whole number (at most {max})")
        }
        "f32" | "f64" => "a number".to_owned(),
        "a string" | "a boolean" => expected.to_owned(),
        "a sequence" => "a list, e.g. [a, b] or one `- item` per line".to_owned(),
        other => match other.strip_prefix("struct ") {
            Some(name) => format!("a mapping of fields{}", shape_of(name)),
            None => return reason.to_owned(),
        },
    };
    format!("{what}, expected {expected}")
}

/// An example of each mapping a person is likely to write in another shape.
fn shape_of(name: &str) -> &'static str {
    match name {
        "Repeat" => ", e.g. repeat: {times: 3, interval: 1s}",
        "Think" => ", e.g. think: {duration: 1s} or think: {min: 500ms, max: 1500ms}",
        "Request" => ", e.g. request: {method: GET, path: /items}",
        "Expect" => ", e.g. expect: {status: 200, bodyContains: ok}",
        "Loop" | "WebSocketLoop" => ", e.g. loop: {times: 3, steps: [...]}",
        "Step" | "InnerStep" => ", e.g. - request: {path: /} or - think: {duration: 1s}",
        "WebSocketStep" | "WebSocketInnerStep" => {
            ", e.g. - send: {text: hello} or - receive: {bodyContains: hello}"
        }
        "ScenarioSpec" => ", e.g. scenario: {http: {baseUrl: http://svc:8080, steps: [...]}}",
        "HttpScenario" => ", e.g. http: {baseUrl: http://svc:8080, steps: [{request: {path: /}}]}",
        "Arrivals" => ", e.g. arrivals: {rate: 200/s, maxConcurrent: 5000}",
        "UserStage" => ", e.g. - {duration: 2m, users: 100}",
        "RateStage" => ", e.g. - {duration: 5m, rate: 1000/s}",
        "Threshold" => ", e.g. - {metric: latency.p99, max: 250ms}",
        "Connect" => ", e.g. connect: {url: \"ws://chat:8080/ws\"}",
        "Send" => ", e.g. send: {text: \"hello {{user.id}}\"}",
        "Receive" => ", e.g. receive: {bodyContains: hello, timeout: 5s}",
        "Close" => ", e.g. close: {}",
        "PlanItem" => ", e.g. - {users: 2, action: pairs}",
        _ => " (see `kubectl explain` or the README for its fields)",
    }
}
