//! Tests of throttles: never more than `rate` grants in any window, spread evenly, idle
//! capacity not banked, parallel limits, rate changes and ramps, waiters that give up,
//! waiters on two runtimes, and specs checked by the model's rules.

use super::*;

/// Largest number of grant times in any window of length `w` (sliding).
fn busiest(times: &[Instant], w: Duration) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while times[i].duration_since(times[j]) >= w {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

async fn saturate(t: &Arc<Throttle>, users: usize, for_: Duration) -> Vec<Instant> {
    let times = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + for_;
    let mut tasks = Vec::new();
    for _ in 0..users {
        let t = t.clone();
        let times = times.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let p = t.acquire().await;
                let granted = Instant::from_std(p.granted);
                if granted < end {
                    times.lock().push(granted);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut v = times.lock().clone();
    v.sort();
    v
}

/// A share of the possible grants that even a starved debug build on a loaded machine
/// makes: it proves that the throttle grants at all. How close to its rate it gets is
/// a benchmark figure (`bench/run.py --only throttle`).
const GRANTS_AT_ALL: f64 = 0.05;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_the_rate_in_any_window() {
    let t = Throttle::new(
        "t",
        Limit {
            rate: 2000,
            interval: Duration::from_millis(100),
        },
    );
    let times = saturate(&t, 200, Duration::from_millis(1500)).await;
    let b = busiest(&times, Duration::from_millis(100));
    assert!(b <= 2000, "{b} grants in one 100 ms window");
    // 20,000/s for 1.5 s: 30,000 at most.
    let n = t.stats().executed as f64;
    assert!(n >= GRANTS_AT_ALL * 30_000.0, "only {n} granted of 30000");
    assert_eq!(t.stats().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn permits_are_spread_evenly_not_in_a_burst() {
    let t = Throttle::new_here(
        "t",
        Limit {
            rate: 10,
            interval: Duration::from_secs(1),
        },
    );
    let start = Instant::now();
    let times = saturate(&t, 5, Duration::from_millis(1950)).await;
    // One every 100 ms from the start.
    for (i, at) in times.iter().take(19).enumerate() {
        let expected = Duration::from_millis(100 * i as u64);
        let got = at.duration_since(start);
        assert!(
            got + Duration::from_millis(5) >= expected
                && got <= expected + Duration::from_millis(5),
            "grant {i} at {got:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn idle_capacity_is_not_banked() {
    let t = Throttle::new_here(
        "t",
        Limit {
            rate: 10,
            interval: Duration::from_secs(1),
        },
    );
    t.acquire().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = Instant::now();
    let times = saturate(&t, 3, Duration::from_millis(450)).await;
    assert!(
        times.len() <= 5,
        "{} grants in 450 ms after an idle spell",
        times.len()
    );
    assert!(times[1].duration_since(start) >= Duration::from_millis(95));
}

#[tokio::test(start_paused = true)]
async fn a_lowered_parallel_limit_holds_once_the_slots_in_use_are_released() {
    let t = Throttle::new_here(
        "p",
        Limit {
            rate: 3,
            interval: Duration::ZERO,
        },
    );
    let a = t.acquire().await;
    let b = t.acquire().await;
    let c = t.acquire().await;
    t.set_limit(Limit {
        rate: 1,
        interval: Duration::ZERO,
    });
    let t2 = t.clone();
    let next = tokio::spawn(async move { t2.acquire().await });
    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !next.is_finished(),
        "two slots were released, yet one is still in use of a limit of 1"
    );
    drop(c);
    let d = tokio::time::timeout(Duration::from_secs(1), next)
        .await
        .expect("the slot comes free once all are released")
        .unwrap();
    let t3 = t.clone();
    let more = tokio::spawn(async move { t3.acquire().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!more.is_finished(), "a second slot under a limit of 1");
    drop(d);
    more.await.unwrap();
}

#[tokio::test]
async fn a_parallel_limit_holds_slots_until_dropped() {
    let t = Throttle::new_here(
        "p",
        Limit {
            rate: 3,
            interval: Duration::ZERO,
        },
    );
    let a = t.acquire().await;
    let _b = t.acquire().await;
    let _c = t.acquire().await;
    let t2 = t.clone();
    let fourth = tokio::spawn(async move { t2.acquire().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!fourth.is_finished(), "a fourth execution ran in parallel");
    assert_eq!(t.stats().waiting, 1);
    drop(a);
    fourth.await.unwrap();
    assert_eq!(t.stats().executed, 4);
    t.set_limit(Limit {
        rate: 5,
        interval: Duration::ZERO,
    });
    let _d = t.acquire().await;
    let _e = t.acquire().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_rate_applies_at_once() {
    let t = Throttle::new_here(
        "t",
        Limit {
            rate: 100,
            interval: Duration::from_secs(1),
        },
    );
    let t2 = t.clone();
    let changer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        t2.set_limit(Limit {
            rate: 10,
            interval: Duration::from_secs(1),
        });
    });
    let times = saturate(&t, 20, Duration::from_secs(3)).await;
    changer.await.unwrap();
    let start = times[0];
    let after: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|x| x.duration_since(start) >= Duration::from_millis(1000))
        .collect();
    // The old rate's grants of the last second count against the new limit: nothing
    // for a while, then 10/s.
    assert!(
        busiest(&after, Duration::from_secs(1)) <= 10,
        "{}",
        busiest(&after, Duration::from_secs(1))
    );
    assert!(
        after.len() >= 9 && after.len() <= 21,
        "{} grants after the change",
        after.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_ramp_steps_the_rate() {
    let t = Throttle::new_here(
        "t",
        Limit {
            rate: 10,
            interval: Duration::from_secs(1),
        },
    );
    t.ramp(40, 10, Duration::from_secs(1));
    assert_eq!(t.stats().rate, 10);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(t.stats().rate, 20);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(t.stats().rate, 40, "stops at `to`");
    t.ramp(5, 20, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(t.stats().rate, 20);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(t.stats().rate, 5, "down, and not below `to`");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_gives_up_leaks_nothing() {
    let t = Throttle::new_here(
        "t",
        Limit {
            rate: 1,
            interval: Duration::from_secs(10),
        },
    );
    t.acquire().await;
    let t2 = t.clone();
    let gone = tokio::spawn(async move { t2.acquire().await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(t.stats().waiting, 1);
    gone.abort();
    let _ = gone.await;
    assert_eq!(t.stats().waiting, 0);
    // The slot it would have had goes to the next one.
    let start = Instant::now();
    t.acquire().await;
    assert!(start.elapsed() <= Duration::from_secs(10));
    assert_eq!(t.stats().executed, 2);
    assert_eq!(t.stats().requested, 3);
}

#[test]
fn waiters_on_two_runtimes_share_one_throttle() {
    let t = Throttle::new(
        "t",
        Limit {
            rate: 200,
            interval: Duration::from_millis(100),
        },
    );
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move { saturate(&t, 20, Duration::from_millis(500)).await })
            })
        })
        .collect();
    let per_runtime: Vec<Vec<Instant>> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        per_runtime.iter().all(|g| !g.is_empty()),
        "a runtime got no permit"
    );
    let mut all: Vec<Instant> = per_runtime.into_iter().flatten().collect();
    all.sort();
    assert!(busiest(&all, Duration::from_millis(100)) <= 200);
    assert!(
        all.len() as f64 >= GRANTS_AT_ALL * 1000.0,
        "{} grants in 500 ms at 2000/s",
        all.len()
    );
}

#[test]
fn specs_are_checked_by_the_model_rules() {
    let spec = |rate: i64, interval: Option<&str>| ThrottleSpec {
        load_test: None,
        rate,
        interval: interval.map(Into::into),
        ramp: None,
    };
    assert_eq!(
        plan_of("a", &spec(5, None)).unwrap().limit,
        Limit {
            rate: 5,
            interval: Duration::from_secs(60)
        }
    );
    assert!(plan_of("a", &spec(-1, None))
        .unwrap_err()
        .contains("spec.rate"));
    assert!(plan_of("a", &spec(5, Some("fast")))
        .unwrap_err()
        .contains("Throttle a: spec.interval"));
}
