//! Apply: the test's token Secret and master pod (created once, read from the watch
//! caches), and its Service and StatefulSet (applied when what they derive from changed).

#[allow(unused_imports)]
use super::*;

/// The token of the test: created once, kept for the life of the test.
pub(super) async fn ensure_token(lt: &LoadTest, ctx: &Context) -> Result<String, Error> {
    let ns = lt.namespace().unwrap_or_default();
    let name = names::token_secret(&lt.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let token_of = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| {
                d.get(TOKEN_KEY)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            })
            .ok_or_else(|| Error::NoToken(name.clone()))
    };
    if let Some(s) = ctx.secrets.get(&ObjectRef::new(&name).within(&ns)) {
        return token_of(&s);
    }
    let token: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..40)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
            .collect()
    };
    match secrets
        .create(&PostParams::default(), &build::token_secret(lt, &token))
        .await
    {
        Ok(_) => Ok(token),
        // There already (the cache has not caught up yet, after a start of the
        // operator): take that one.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = secrets
                .get(&name)
                .await
                .map_err(kube_err("read the token Secret"))?;
            token_of(&s)
        }
        Err(e) => Err(kube_err("create the token Secret")(e)),
    }
}

/// The master pod is created once: pods are immutable, and the live settings go to the
/// master through its API. Returns it (when it could be read back).
pub(super) async fn ensure_master(
    lt: &LoadTest,
    ctx: &Context,
    throttles: &[Throttle],
    coordinators: &[Coordinator],
) -> Result<Option<Pod>, Error> {
    let ns = lt.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let name = names::master(&lt.name_any());
    if let Some(p) = ctx.master_pods.get(&ObjectRef::new(&name).within(&ns)) {
        return Ok(Some((*p).clone()));
    }
    match pods
        .create(
            &PostParams::default(),
            &build::master_pod(
                lt,
                &build::test_manifests(lt, throttles, coordinators),
                &ctx.pods,
            ),
        )
        .await
    {
        Ok(p) => {
            tracing::info!("master pod created");
            Ok(Some(p))
        }
        // There already; the cache has not caught up yet.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(kube_err("create the master pod")(e)),
    }
}

/// Applies `desired` (server-side apply) unless the cached object was applied from the
/// same desired state ([`build::stamped`], [`build::needs_apply`]): the Service and the
/// StatefulSet change only when the test's spec does, not at every poll.
pub(super) async fn apply_if_changed<K>(
    ctx: &Context,
    cache: &Store<K>,
    desired: K,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let desired = build::stamped(desired);
    let ns = desired.meta().namespace.clone().unwrap_or_default();
    let name = desired.meta().name.clone().unwrap_or_default();
    let cached = cache.get(&ObjectRef::new(&name).within(&ns));
    if !build::needs_apply(&desired, cached.as_deref()) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(kube_err(format!("apply {} {name}", K::kind(&()))))?;
    ctx.metrics
        .applies
        .with_label_values(&[&K::kind(&())])
        .inc();
    Ok(())
}
