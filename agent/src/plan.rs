//! From manifests to a test plan, for this binary: the model's compiler
//! ([`murmuration_model`]) with the custom scenarios of this binary's [`Registry`]. Errors
//! name the document, the field and the reason: `checkout.yaml: document 1 (LoadTest
//! checkout): spec.userRate: "20 per second" is not a rate: ...`.

pub use murmuration_model::{
    parse_manifests, read_manifests, FieldError, ManifestError, Manifests, RepeatPlan,
    ScenarioPlan, TestPlan,
};

use murmuration_model::CustomScenarios;

use crate::registry::Registry;
use crate::scenario::Vars;

/// Reads a manifest file and builds its plan, with errors naming document and field.
pub fn load_plan(path: &str, registry: &Registry) -> Result<TestPlan, ManifestError> {
    load_plan_with_vars(path, registry, &Vars::new())
}

/// Like [`load_plan`], with variables set on top of `spec.vars` (`murmur run --set`).
pub fn load_plan_with_vars(
    path: &str,
    registry: &Registry,
    vars: &Vars,
) -> Result<TestPlan, ManifestError> {
    murmuration_model::compile_file(path, vars, CustomScenarios::Known(&registry.names()))
}

/// Builds the plan of manifests given as text (`label` names them in errors): what the
/// master does with `MURMUR_TEST` and an agent with what its master sends.
pub fn plan_from_text(
    label: &str,
    text: &str,
    registry: &Registry,
    vars: &Vars,
) -> Result<TestPlan, ManifestError> {
    murmuration_model::compile_text(label, text, vars, CustomScenarios::Known(&registry.names()))
}

/// Checks a LoadTest spec (with its throttles and coordinators) and builds its plan, with
/// the custom scenarios of `registry`; errors name the field.
pub fn build_plan(
    name: &str,
    spec: &murmuration_crds::LoadTestSpec,
    throttles: &[(String, murmuration_crds::ThrottleSpec)],
    coordinators: &[(String, murmuration_crds::CoordinatorSpec)],
    registry: &Registry,
) -> Result<TestPlan, FieldError> {
    murmuration_model::build_plan(
        name,
        spec,
        throttles,
        coordinators,
        CustomScenarios::Known(&registry.names()),
    )
}
