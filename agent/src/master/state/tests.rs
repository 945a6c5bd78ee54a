//! Unit tests of the master's books, without sockets: placement, recovery after a
//! restart, throttle shares within the limit, and failures with a reason.

use super::*;
use crate::plan::plan_from_text;
use crate::registry::Registry;
use crate::wire::FromAgent;
use murmuration_crds::loadtest::TestResult;

const TEST: &str = "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: t}
spec:
  users: 100
  agents: 2
  scenario:
    http:
      baseUrl: http://127.0.0.1:9
      steps:
        - throttle: shared
---
apiVersion: murmuration.dev/v1alpha1
kind: Throttle
metadata: {name: shared}
spec: {loadTest: t, rate: 1000, interval: 1s}
";

fn core(now: Instant) -> Core {
    let plan = plan_from_text("t.yaml", TEST, &Registry::new(), &Vars::new()).unwrap();
    Core::new(plan, TEST.into(), MasterOptions::default(), now)
}

fn hello(name: &str, running: &[UserId]) -> FromAgent {
    FromAgent::Hello {
        name: name.into(),
        running: Ids::of(running.iter().copied()),
        ended: Ids::default(),
        memo: None,
        points: Vec::new(),
        throttles: BTreeMap::new(),
        shares: BTreeMap::new(),
        ids_left: 0,
    }
}

/// Who runs what, as the messages say.
fn apply(out: &Outbox, runs: &mut BTreeMap<String, BTreeSet<UserId>>) {
    for (agent, msg) in out {
        let set = runs.entry(agent.clone()).or_default();
        match msg {
            ToAgent::Start { ids } => set.extend(ids.iter()),
            ToAgent::Stop { ids, .. } => {
                for id in ids.iter() {
                    set.remove(&id);
                }
            }
            _ => {}
        }
    }
}

fn exactly_once(runs: &BTreeMap<String, BTreeSet<UserId>>, n: u64) {
    let mut all: Vec<UserId> = runs.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=n).collect::<Vec<_>>());
}

#[test]
fn fair_shares_fill_the_small_demands_and_split_the_rest() {
    let d = |v: &[(&str, u64)]| {
        v.iter()
            .map(|(a, d)| (a.to_string(), *d))
            .collect::<Vec<_>>()
    };
    let s = fair_shares(
        1000,
        &d(&[("a", UNBOUNDED), ("b", UNBOUNDED), ("c", UNBOUNDED)]),
    );
    assert_eq!(s.values().sum::<u64>(), 1000);
    assert!(s.values().all(|v| *v == 333 || *v == 334), "{s:?}");
    let s = fair_shares(1000, &d(&[("a", 100), ("b", UNBOUNDED), ("c", UNBOUNDED)]));
    assert_eq!(s["a"], 100);
    assert_eq!(s["b"] + s["c"], 900);
    // Everyone satisfied: the leftover is spread too.
    let s = fair_shares(1000, &d(&[("a", 100), ("b", 200)]));
    assert_eq!((s["a"], s["b"]), (450, 550));
    assert_eq!(
        fair_shares(7, &d(&[("a", 0), ("b", 0)]))
            .values()
            .sum::<u64>(),
        7
    );
}

#[test]
fn users_start_when_every_agent_is_here_and_move_when_one_is_lost() {
    let t0 = Instant::now();
    let mut c = core(t0);
    let mut runs = BTreeMap::new();
    apply(&c.hello(1, hello("a", &[]), t0).unwrap(), &mut runs);
    apply(&c.tick(t0), &mut runs);
    assert_eq!(c.phase(), TestPhase::Starting, "one agent of two");
    apply(&c.hello(2, hello("b", &[]), t0).unwrap(), &mut runs);
    apply(&c.tick(t0 + Duration::from_millis(100)), &mut runs);
    assert_eq!(c.phase(), TestPhase::Running);
    exactly_once(&runs, 100);
    assert_eq!(runs["a"].len(), 50);
    // b goes away: after the grace its users start on a.
    c.disconnected(2, "b", t0 + Duration::from_secs(1));
    apply(&c.tick(t0 + Duration::from_secs(2)), &mut runs);
    assert_eq!(runs["a"].len(), 50, "not before the reconnect grace");
    let out = c.tick(t0 + Duration::from_secs(4));
    runs.remove("b");
    apply(&out, &mut runs);
    exactly_once(&runs, 100);
    // b comes back still running its old users: they are stopped there.
    let out = c
        .hello(3, hello("b", &[2, 4, 6]), t0 + Duration::from_secs(5))
        .unwrap();
    let stopped: Vec<UserId> = out
        .iter()
        .filter_map(|(a, m)| match m {
            ToAgent::Stop { ids, forced: true } if a == "b" => Some(ids.iter().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stopped, [2, 4, 6]);
    // New users go to it.
    c.set_users(110).unwrap();
    let out = c.tick(t0 + Duration::from_secs(6));
    let mut more = BTreeMap::new();
    apply(&out, &mut more);
    assert_eq!(more["b"], (101..=110).collect());
}

#[test]
fn a_restarted_master_takes_the_test_back() {
    let t0 = Instant::now();
    let mut old = core(t0);
    let mut runs = BTreeMap::new();
    apply(&old.hello(1, hello("a", &[]), t0).unwrap(), &mut runs);
    apply(&old.hello(2, hello("b", &[]), t0).unwrap(), &mut runs);
    apply(&old.tick(t0), &mut runs);
    old.set_users(120).unwrap();
    apply(&old.tick(t0 + Duration::from_millis(100)), &mut runs);
    exactly_once(&runs, 120);
    let memo = old.memo.clone();
    // The new master hears from a (with the memo) but never from b.
    let t1 = t0 + Duration::from_secs(10);
    let mut new = core(t1);
    let FromAgent::Hello {
        name,
        running,
        ended,
        points,
        throttles,
        shares,
        ..
    } = hello("a", &runs["a"].iter().copied().collect::<Vec<_>>())
    else {
        unreachable!()
    };
    let h = FromAgent::Hello {
        name,
        running,
        ended,
        memo: Some(memo),
        points,
        throttles,
        shares,
        ids_left: 0,
    };
    let mut runs2: BTreeMap<String, BTreeSet<UserId>> = BTreeMap::new();
    runs2.insert("a".into(), runs["a"].clone());
    apply(&new.hello(1, h, t1).unwrap(), &mut runs2);
    assert_eq!(new.phase(), TestPhase::Running);
    assert_eq!(new.memo.desired, 120);
    apply(&new.tick(t1 + Duration::from_secs(1)), &mut runs2);
    assert_eq!(runs2["a"].len(), 60, "b's users wait for b a while");
    apply(
        &new.tick(t1 + RECOVERY_WAIT + Duration::from_secs(1)),
        &mut runs2,
    );
    exactly_once(&runs2, 120);
}

#[test]
fn shares_never_let_agents_grant_more_than_the_limit_in_a_window() {
    let t0 = Instant::now();
    let mut c = core(t0);
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        c.hello(i as u64, hello(n, &[]), t0).unwrap();
    }
    c.set_agents(3).unwrap();
    let mut held: BTreeMap<String, Vec<(Instant, u64)>> = BTreeMap::new();
    let memory = Duration::from_millis(1500);
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
    for step in 0..400u64 {
        let now = t0 + Duration::from_millis(100 * step);
        // Demand moves around at random, and so does the limit, now and then.
        if step % 10 == 0 {
            for n in ["a", "b", "c"] {
                let d: u64 = rand::Rng::random_range(&mut rng, 0..900);
                c.agents
                    .get_mut(n)
                    .unwrap()
                    .demand
                    .insert("shared".into(), if d > 600 { UNBOUNDED } else { d });
            }
        }
        if step == 150 {
            let spec: ThrottleSpec =
                serde_json::from_str(r#"{"loadTest":"t","rate":300,"interval":"1s"}"#).unwrap();
            c.set_throttle("shared", spec, now).unwrap();
        }
        for (agent, msg) in c.tick(now) {
            if let ToAgent::Shares { shares } = msg {
                held.entry(agent).or_default().push((now, shares["shared"]));
            }
        }
        let rate = c.throttles["shared"].rate_at(now);
        // What each agent may have granted at within the last window: every share it
        // held since one window ago (the one in force then, and all after).
        let in_window: u64 = held
            .values()
            .map(|h| {
                let from = now.checked_sub(memory).unwrap_or(t0);
                let before = h
                    .iter()
                    .rev()
                    .find(|(t, _)| *t <= from)
                    .map(|(_, s)| *s)
                    .unwrap_or(0);
                h.iter()
                    .filter(|(t, _)| *t > from)
                    .map(|(_, s)| *s)
                    .max()
                    .unwrap_or(0)
                    .max(before)
            })
            .sum();
        if (150..170).contains(&step) {
            // Right after the limit was lowered, grants made under the old one are
            // still in the window: nothing more is given until they age out.
            continue;
        }
        assert!(
            in_window <= rate,
            "step {step}: {in_window} may be granted against a limit of {rate}: {held:?}"
        );
    }
    // Saturated at the end: the shares add up to the limit.
    for n in ["a", "b", "c"] {
        c.agents
            .get_mut(n)
            .unwrap()
            .demand
            .insert("shared".into(), UNBOUNDED);
    }
    for step in 400..440u64 {
        c.tick(t0 + Duration::from_millis(100 * step));
    }
    assert_eq!(c.throttles["shared"].shares.values().sum::<u64>(), 300);
}

#[test]
fn a_ramp_and_a_parallel_limit_are_shared_too() {
    let t0 = Instant::now();
    let mut c = core(t0);
    c.hello(1, hello("a", &[]), t0).unwrap();
    c.hello(2, hello("b", &[]), t0).unwrap();
    c.tick(t0);
    for n in ["a", "b"] {
        c.agents
            .get_mut(n)
            .unwrap()
            .demand
            .insert("shared".into(), UNBOUNDED);
    }
    let ramp: ThrottleSpec = serde_json::from_str(
        r#"{"loadTest":"t","rate":100,"interval":"1s","ramp":{"to":1000,"step":100,"every":"1s"}}"#,
    )
    .unwrap();
    c.set_throttle("shared", ramp.clone(), t0).unwrap();
    let sum = |c: &Core| c.throttles["shared"].shares.values().sum::<u64>();
    c.tick(t0 + Duration::from_millis(100));
    assert_eq!(sum(&c), 100);
    for step in 1..=80u64 {
        c.tick(t0 + Duration::from_millis(100 * step));
    }
    // 8 s in: 100 + 8 x 100, shared by both agents.
    assert_eq!(
        c.throttles["shared"].rate_at(t0 + Duration::from_secs(8)),
        900
    );
    assert_eq!(sum(&c), 900);
    // Pushing the same spec again does not restart the ramp.
    c.set_throttle("shared", ramp, t0 + Duration::from_secs(8))
        .unwrap();
    assert_eq!(
        c.throttles["shared"].rate_at(t0 + Duration::from_secs(8)),
        900
    );
    // Parallel executions: 5 slots over two agents.
    let parallel: ThrottleSpec =
        serde_json::from_str(r#"{"loadTest":"t","rate":5,"interval":"0s"}"#).unwrap();
    let t1 = t0 + Duration::from_secs(9);
    c.set_throttle("shared", parallel, t1).unwrap();
    for step in 0..30u64 {
        c.tick(t1 + Duration::from_millis(100 * step));
    }
    assert_eq!(sum(&c), 5);
    assert!(c.throttles["shared"]
        .shares
        .values()
        .all(|s| *s == 2 || *s == 3));
}

#[test]
fn an_agent_restarted_within_the_grace_gets_its_users_started_again() {
    let t0 = Instant::now();
    let mut c = core(t0);
    let mut runs = BTreeMap::new();
    apply(&c.hello(1, hello("a", &[]), t0).unwrap(), &mut runs);
    apply(&c.hello(2, hello("b", &[]), t0).unwrap(), &mut runs);
    apply(&c.tick(t0), &mut runs);
    exactly_once(&runs, 100);
    // b's process restarts (a new pod under the same name) and is back in 1 s, with
    // nothing running: its 50 users must run again, once.
    c.disconnected(2, "b", t0 + Duration::from_millis(500));
    runs.insert("b".into(), BTreeSet::new());
    apply(
        &c.hello(3, hello("b", &[]), t0 + Duration::from_secs(1))
            .unwrap(),
        &mut runs,
    );
    apply(&c.tick(t0 + Duration::from_millis(1100)), &mut runs);
    exactly_once(&runs, 100);
}

#[test]
fn missing_agents_fail_the_test_with_a_reason() {
    let t0 = Instant::now();
    let mut c = core(t0);
    c.hello(1, hello("a", &[]), t0).unwrap();
    c.tick(t0 + Duration::from_secs(1));
    assert_eq!(c.phase(), TestPhase::Starting);
    // spec.start.waitForAgents defaults to 5 minutes.
    c.tick(t0 + Duration::from_secs(301));
    let st = c.status(t0 + Duration::from_secs(301));
    assert_eq!(st.phase, TestPhase::Stopping);
    assert_eq!(
        st.message.as_deref(),
        Some("only 1 of 2 agents connected within 5m")
    );
    c.tick(t0 + Duration::from_secs(309));
    let st = c.status(t0 + Duration::from_secs(309));
    assert_eq!(st.phase, TestPhase::Finished);
    assert_eq!(st.result, Some(TestResult::Failed));
    assert_eq!(st.users.started, 0, "no user started");
}

/// A restarted master hears from the agents one by one; those not back yet still grant at
/// the shares the former master gave them. So no share is raised until every agent is
/// back: what the agents may grant together never exceeds the limit across the restart.
#[test]
fn a_restarted_master_raises_no_share_before_every_agent_is_back() {
    let t0 = Instant::now();
    let mut old = core(t0);
    old.hello(1, hello("a", &[]), t0).unwrap();
    old.hello(2, hello("b", &[]), t0).unwrap();
    old.tick(t0);
    for n in ["a", "b"] {
        old.agents
            .get_mut(n)
            .unwrap()
            .demand
            .insert("shared".into(), UNBOUNDED);
    }
    old.tick(t0 + Duration::from_secs(3));
    let held = old.throttles["shared"].shares.clone();
    assert_eq!(held.values().sum::<u64>(), 1000, "{held:?}");
    let memo = old.memo.clone();
    // The new master: a says hello first, with the memo and the share it holds.
    let back = |name: &str, memo: Option<Memo>| {
        let FromAgent::Hello {
            name,
            running,
            ended,
            points,
            throttles,
            ..
        } = hello(name, &[])
        else {
            unreachable!()
        };
        FromAgent::Hello {
            shares: [("shared".to_string(), held[&name])].into(),
            name,
            running,
            ended,
            memo,
            points,
            throttles,
            ids_left: 0,
        }
    };
    let t1 = t0 + Duration::from_secs(10);
    let mut new = core(t1);
    let mut given: BTreeMap<String, u64> = held.clone();
    let take = |out: Outbox, given: &mut BTreeMap<String, u64>| {
        for (agent, msg) in out {
            if let ToAgent::Shares { shares } = msg {
                given.insert(agent, shares["shared"]);
            }
        }
    };
    take(new.hello(1, back("a", Some(memo)), t1).unwrap(), &mut given);
    new.agents
        .get_mut("a")
        .unwrap()
        .demand
        .insert("shared".into(), UNBOUNDED);
    for ms in [100, 500, 1000, 2000] {
        take(new.tick(t1 + Duration::from_millis(ms)), &mut given);
        assert!(
            given["a"] <= held["a"],
            "a raised to {} while b still grants at {}",
            given["a"],
            held["b"]
        );
    }
    // b is back: the shares may move again, within the limit.
    let t2 = t1 + Duration::from_millis(2500);
    take(new.hello(2, back("b", None), t2).unwrap(), &mut given);
    for ms in [0, 100, 2000, 4000] {
        take(new.tick(t2 + Duration::from_millis(ms)), &mut given);
        assert!(given.values().sum::<u64>() <= 1000, "{given:?}");
    }
}
