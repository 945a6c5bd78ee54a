//! The end: the report kept in a ConfigMap, then the pods and the test go per
//! `spec.cleanup`.

#[allow(unused_imports)]
use super::*;

/// Keeps the report in a ConfigMap owned by the test, before any pod goes away. Whether
/// it is kept: a master that cannot give it is asked again (the reconcile fails and is
/// retried) for [`REPORT_PATIENCE`], then the test ends without it.
pub(super) async fn store_report(
    lt: &LoadTest,
    ctx: &Context,
    master: &MasterClient,
) -> Result<bool, Error> {
    let ns = lt.namespace().unwrap_or_default();
    let uid = lt.metadata.uid.clone().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let name = names::report(&lt.name_any());
    if cms
        .get_opt(&name)
        .await
        .map_err(kube_err("read the report ConfigMap"))?
        .is_some()
    {
        return Ok(true);
    }
    let fetched = murmuration_crds::report::fit(|points| master.report(points)).await;
    let (gz, points) = match fetched {
        Ok(fitted) => fitted,
        Err(e) => {
            let since = ctx.memo(&uid, |m| {
                *m.report_failing_since.get_or_insert_with(Instant::now)
            });
            if since.elapsed() < REPORT_PATIENCE {
                return Err(Error::Report(e));
            }
            tracing::warn!("the report could not be fetched for {REPORT_PATIENCE:?}: {e}");
            return Ok(false);
        }
    };
    tracing::info!(bytes = gz.len(), points, "report stored");
    match cms
        .create(&PostParams::default(), &build::report_configmap(lt, gz))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(true),
        Err(e) => Err(kube_err("store the report")(e)),
    }
}

/// After the end: pods go per `spec.cleanup.policy`, the test after its TTL.
pub(super) async fn finished(lt: &LoadTest, ctx: &Context) -> Result<Action, Error> {
    let ns = lt.namespace().unwrap_or_default();
    let name = lt.name_any();
    let plan = status::after_the_end(lt, &now());
    if plan.remove_pods {
        let dp = DeleteParams::background();
        let gone = |r: Result<_, kube::Error>, what: &str| match r {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(kube_err(format!("delete the {what}"))(e)),
        };
        gone(
            Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
                .delete(&names::agents(&name), &dp)
                .await
                .map(|_| ()),
            "agents",
        )?;
        gone(
            Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .delete(&names::master(&name), &dp)
                .await
                .map(|_| ()),
            "master pod",
        )?;
        gone(
            Api::<Service>::namespaced(ctx.client.clone(), &ns)
                .delete(&names::master(&name), &dp)
                .await
                .map(|_| ()),
            "master Service",
        )?;
    }
    match plan.delete_test_in {
        Some(left) if left.is_zero() => {
            tracing::info!("time to live over: deleting the test");
            Api::<LoadTest>::namespaced(ctx.client.clone(), &ns)
                .delete(&name, &DeleteParams::background())
                .await
                .map_err(kube_err("delete the finished LoadTest"))?;
            Ok(Action::await_change())
        }
        Some(left) => Ok(Action::requeue(left.max(Duration::from_secs(1)))),
        None => Ok(Action::await_change()),
    }
}
