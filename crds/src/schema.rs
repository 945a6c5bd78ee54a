//! Hand-written OpenAPI schemas for fields whose Rust type says less than the manifest
//! does: duration and rate strings (with patterns, so the API server rejects typos), free
//! JSON values, and coordinator group sizes. Everything here is valid on Kubernetes 1.20:
//! structural, no CEL.

use schemars::{json_schema, Schema, SchemaGenerator};

/// Pattern of a duration string: `0`, or number+unit groups such as `1m30s`, `500ms`.
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h|d))+)$";

/// Pattern of a rate string: `20/s`, `1200/m`, `5/10s`, `0.5/s`.
pub const RATE_PATTERN: &str =
    r"^[0-9]+(\.[0-9]+)?/(s|m|h|ms|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h|d))+)$";

/// A required duration string.
pub fn duration_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
    })
}

/// An optional duration string (the field may be left out).
pub fn optional_duration_string(g: &mut SchemaGenerator) -> Schema {
    duration_string(g)
}

/// An optional rate string.
pub fn rate_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": RATE_PATTERN,
    })
}

/// Any JSON value, kept as written.
pub fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Scenario variables: names to any JSON value.
pub fn vars_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}

/// A coordinator group size: a number, `all`, or `{min, max}`. A structural schema cannot
/// say "number or string or object", so the API server keeps it as written and the operator
/// (and `murmur run`) reject bad values naming the field.
pub fn group_size(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// For enums used as fields: drops the type's own description from its schema, so that
/// the field's doc (what `kubectl explain` shows) is not replaced by it when the schema is
/// inlined into the CRD.
pub fn field_describes(schema: &mut Schema) {
    schema.remove("description");
}
