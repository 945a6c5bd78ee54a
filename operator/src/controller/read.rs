//! Read: a test's Throttles and Coordinators, from the watch caches.

#[allow(unused_imports)]
use super::*;

pub(super) trait TestPart:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    /// The kind, for messages.
    const KIND: &'static str;
    /// The test it belongs to.
    fn load_test(&self) -> Option<&str>;
}

impl TestPart for Throttle {
    const KIND: &'static str = "Throttle";
    fn load_test(&self) -> Option<&str> {
        self.spec.load_test.as_deref()
    }
}

impl TestPart for Coordinator {
    const KIND: &'static str = "Coordinator";
    fn load_test(&self) -> Option<&str> {
        self.spec.load_test.as_deref()
    }
}

/// The Throttles and Coordinators of a test, from the caches. A name a step uses but the
/// cache does not have yet (applied with the test a moment ago, or the operator just
/// started) is looked up in the API before the test is called invalid for it.
pub(super) async fn parts_of(
    ctx: &Context,
    ns: &str,
    test: &str,
) -> Result<(Vec<Throttle>, Vec<Coordinator>), Error> {
    let (want_t, want_c) = ctx
        .tests
        .get(&ObjectRef::new(test).within(ns))
        .map(|t| murmuration_model::names_used(&t.spec))
        .unwrap_or_default();
    Ok((
        parts(ctx, &ctx.throttles, ns, test, want_t).await?,
        parts(ctx, &ctx.coordinators, ns, test, want_c).await?,
    ))
}

/// The parts of one kind of test `test` in `ns`, by name: those in `cache`, and those of
/// `wanted` read from the API.
pub(super) async fn parts<K: TestPart>(
    ctx: &Context,
    cache: &Store<K>,
    ns: &str,
    test: &str,
    wanted: Vec<String>,
) -> Result<Vec<K>, Error> {
    let mut found: Vec<K> = cache
        .state()
        .iter()
        .filter(|p| p.meta().namespace.as_deref() == Some(ns) && p.load_test() == Some(test))
        .map(|p| (**p).clone())
        .collect();
    for n in wanted {
        if !found.iter().any(|p| p.meta().name.as_deref() == Some(&n)) {
            let got = Api::<K>::namespaced(ctx.client.clone(), ns)
                .get_opt(&n)
                .await
                .map_err(kube_err(format!("read {} {n}", K::KIND)))?;
            found.extend(got.filter(|p| p.load_test() == Some(test)));
        }
    }
    found.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    Ok(found)
}
