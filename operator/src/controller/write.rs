//! Write: the test's status (merge patches), its Throttles' and Coordinators' live
//! figures, and Events.

#[allow(unused_imports)]
use super::*;

/// Live figures into the Throttles' and Coordinators' status.
pub(super) async fn write_figures(
    ctx: &Context,
    ns: &str,
    state: &MasterStatus,
    throttles: &[Throttle],
    coordinators: &[Coordinator],
) {
    let tapi: Api<Throttle> = Api::namespaced(ctx.client.clone(), ns);
    for t in throttles {
        let Some(f) = state.throttles.iter().find(|f| f.name == t.name_any()) else {
            continue;
        };
        let status = ThrottleStatus {
            rate: f.rate as i64,
            requested: f.requested as i64,
            executed: f.executed as i64,
            waiting: f.waiting as i64,
        };
        if t.status.as_ref() != Some(&status) {
            let patch = serde_json::json!({"status": status});
            if let Err(e) = tapi
                .patch_status(
                    &t.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!("status of Throttle {}: {e}", t.name_any());
            }
        }
    }
    let capi: Api<Coordinator> = Api::namespaced(ctx.client.clone(), ns);
    for c in coordinators {
        let Some(f) = state.coordinators.iter().find(|f| f.name == c.name_any()) else {
            continue;
        };
        let status = CoordinatorStatus {
            waiting: f.waiting as i64,
            groups: f.groups as i64,
            timeouts: f.timeouts as i64,
        };
        if c.status.as_ref() != Some(&status) {
            let patch = serde_json::json!({"status": status});
            if let Err(e) = capi
                .patch_status(
                    &c.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!("status of Coordinator {}: {e}", c.name_any());
            }
        }
    }
}

pub(super) async fn write_status(
    ctx: &Context,
    lt: &LoadTest,
    status: &LoadTestStatus,
) -> Result<(), Error> {
    if lt.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<LoadTest> =
        Api::namespaced(ctx.client.clone(), &lt.namespace().unwrap_or_default());
    // A merge patch replaces lists whole and leaves out nothing that is set.
    let patch = serde_json::json!({"status": status});
    api.patch_status(
        &lt.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_err("write the LoadTest status"))?;
    let uid = lt.metadata.uid.clone().unwrap_or_default();
    ctx.memo(&uid, |m| m.written = Some((status.clone(), Instant::now())));
    Ok(())
}

/// Edits the running test does not take, told when they change (not at every scale): the
/// spec the master started with is in its pod.
pub(super) fn edits_not_taken(
    lt: &LoadTest,
    ctx: &Context,
    master: Option<&Pod>,
) -> Option<Transition> {
    let generation = lt.metadata.generation.unwrap_or(0);
    let uid = lt.metadata.uid.clone().unwrap_or_default();
    // A spec compared once is not parsed again at every follow-up poll.
    let told = ctx.memo(&uid, |m| m.edits_told.clone());
    if told.as_ref().is_some_and(|(g, _)| *g == generation) {
        return None;
    }
    let started = build::started_spec(master?)?;
    let fields = status::edits_not_taken(&started, &lt.spec);
    ctx.memo(&uid, |m| m.edits_told = Some((generation, fields.clone())));
    if fields.is_empty() || told.is_some_and(|(_, f)| f == fields) {
        return None;
    }
    tracing::warn!(?fields, "edits the running test does not take");
    Some(Transition::EditsNotTaken { fields })
}

pub(super) async fn publish(ctx: &Context, lt: &LoadTest, events: &[Transition]) {
    for t in events {
        let ev = Event {
            type_: if t.warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason().into(),
            note: Some(t.note()),
            action: t.reason().into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &lt.object_ref(&())).await {
            tracing::warn!("event {}: {e}", t.reason());
        }
    }
}
