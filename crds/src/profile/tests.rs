//! Tests of load profiles: stages and their next change, arrival schedules (constant and
//! ramped rates), lanes split among agents, id blocks, and checks naming the field.

use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn spec(yaml: &str) -> LoadTestSpec {
    let base = "scenario: {custom: {name: x}}\n";
    serde_saphyr::from_str(&format!("{base}{yaml}")).unwrap()
}

#[test]
fn stages_move_linearly_from_the_count_before_each_stage() {
    let p = StageProfile {
        from: 0,
        stages: vec![
            Stage {
                duration: secs(10.0),
                users: 100,
            },
            Stage {
                duration: secs(10.0),
                users: 100,
            },
            Stage {
                duration: secs(5.0),
                users: 0,
            },
        ],
    };
    assert_eq!(p.at(secs(0.0)).users, 0);
    assert_eq!(p.at(secs(2.5)).users, 25);
    assert_eq!(p.at(secs(2.5)).stage, Some(0));
    assert_eq!(p.at(secs(15.0)).users, 100);
    assert_eq!(p.at(secs(15.0)).stage, Some(1));
    assert_eq!(p.at(secs(22.5)).users, 50);
    assert_eq!(p.at(secs(25.0)).users, 0);
    assert_eq!(p.at(secs(25.0)).stage, None);
    assert_eq!(p.total(), secs(25.0));
    // A stage of no time jumps.
    let jump = StageProfile {
        from: 5,
        stages: vec![
            Stage {
                duration: Duration::ZERO,
                users: 50,
            },
            Stage {
                duration: secs(1.0),
                users: 50,
            },
        ],
    };
    assert_eq!(jump.at(Duration::ZERO).users, 50);
    assert_eq!(jump.at(Duration::ZERO).stage, Some(1));
}

#[test]
fn the_next_change_is_when_the_line_crosses_half_a_user() {
    let p = StageProfile {
        from: 0,
        stages: vec![Stage {
            duration: secs(10.0),
            users: 10,
        }],
    };
    // 1 user per second: 0 until 0.5 s, then 1 until 1.5 s...
    let next = p.next_change(secs(0.0)).unwrap();
    assert!((next.as_secs_f64() - 0.5).abs() < 1e-6, "{next:?}");
    let next = p.next_change(secs(0.6)).unwrap();
    assert!((next.as_secs_f64() - 1.5).abs() < 1e-6, "{next:?}");
    assert_eq!(p.at(secs(1.49)).users, 1);
    assert_eq!(p.at(secs(1.51)).users, 2);
    assert_eq!(p.next_change(secs(10.0)), None);
    // A flat stage wakes once, at its end; a steep one not more than every MIN_STEP.
    let flat = StageProfile {
        from: 7,
        stages: vec![Stage {
            duration: secs(3.0),
            users: 7,
        }],
    };
    assert_eq!(flat.next_change(secs(1.0)), Some(secs(3.0)));
    let steep = StageProfile {
        from: 0,
        stages: vec![Stage {
            duration: secs(1.0),
            users: 1_000_000,
        }],
    };
    assert_eq!(steep.next_change(secs(0.1)), Some(secs(0.1) + MIN_STEP));
}

#[test]
fn a_constant_rate_puts_exactly_rate_arrivals_in_every_second() {
    let s = ArrivalSchedule::new(200.0, &[], 10);
    assert_eq!(s.time_of(0), Some(secs(0.0025)));
    for second in 0..10u64 {
        let a = s.due_before(secs(second as f64));
        let b = s.due_before(secs(second as f64 + 1.0));
        assert_eq!(b - a, 200, "second {second}");
    }
    assert_eq!(s.end(), None);
    let t = s.time_of(199).unwrap().as_secs_f64();
    assert!((t - 0.9975).abs() < 1e-9, "{t}");
    // Nothing is due at a rate of zero.
    let zero = ArrivalSchedule::new(0.0, &[(secs(5.0), 0.0)], 10);
    assert_eq!(zero.time_of(0), None);
    assert_eq!(zero.due_before(secs(5.0)), 0);
}

#[test]
fn a_ramp_of_rates_is_integrated_and_inverted() {
    // 0 → 100/s over 10 s, then 100/s for 10 s: 500 + 1000 arrivals, then none.
    let s = ArrivalSchedule::new(0.0, &[(secs(10.0), 100.0), (secs(10.0), 100.0)], 10);
    assert_eq!(s.due_before(secs(10.0)), 500);
    assert_eq!(s.due_before(secs(20.0)), 1500);
    assert_eq!(s.due_before(secs(30.0)), 1500);
    assert!((s.rate_at(secs(5.0)) - 50.0).abs() < 1e-9);
    assert_eq!(s.rate_at(secs(25.0)), 0.0);
    // Intended times grow and agree with the count.
    let mut last = Duration::ZERO;
    for k in 0..1500u64 {
        let t = s.time_of(k).unwrap_or_else(|| panic!("arrival {k}"));
        assert!(t >= last, "arrival {k} at {t:?} before {last:?}");
        assert!(
            s.due_before(t + secs(1e-6)) > k,
            "arrival {k} at {t:?} is not counted"
        );
        last = t;
    }
    assert_eq!(s.time_of(1500), None);
    // A falling ramp: 100/s → 0 over 10 s is 500 arrivals.
    let down = ArrivalSchedule::new(100.0, &[(secs(10.0), 0.0)], 10);
    assert_eq!(down.due_before(secs(11.0)), 500);
    assert!(down.time_of(499).is_some());
    assert_eq!(down.time_of(500), None);
}

#[test]
fn lanes_split_the_schedule_exactly_whatever_the_number_of_agents() {
    for agents in 1..=7u64 {
        let mut seen = vec![0u32; 1000];
        for position in 0..agents {
            let lane = Lane {
                from: 3,
                position,
                agents,
            };
            let mut k = lane.first_at_or_after(3);
            while k < 1000 {
                seen[k as usize] += 1;
                k = lane.after(k);
            }
        }
        assert!(seen[3..].iter().all(|n| *n == 1), "{agents} agents");
        let shares: u64 = (0..agents)
            .map(|position| {
                Lane {
                    from: 0,
                    position,
                    agents,
                }
                .share_of(1001)
            })
            .sum();
        assert_eq!(shares, 1001);
    }
    let lane = Lane {
        from: 10,
        position: 1,
        agents: 3,
    };
    assert_eq!(lane.first_at_or_after(0), 11);
    assert_eq!(lane.first_at_or_after(12), 14);
    assert_eq!(lane.first_at_or_after(14), 14);
}

#[test]
fn id_blocks_never_overlap_and_pools_use_them_in_order() {
    let mut blocks = IdBlocks::default();
    let a = blocks.grant(3);
    let b = blocks.grant(2);
    assert_eq!(a, (1, 3));
    assert_eq!(b, (4, 5));
    let mut pool = IdPool::default();
    pool.add(b);
    pool.add(a);
    assert_eq!(pool.left(), 5);
    let ids: Vec<u64> = std::iter::from_fn(|| pool.take()).collect();
    assert_eq!(ids, [4, 5, 1, 2, 3]);
    assert_eq!(pool.take(), None);
}

#[test]
fn profiles_are_checked_with_the_field_named() {
    let err = |yaml: &str| compile_profile(&spec(yaml)).unwrap_err().field;
    assert_eq!(err(""), "spec.users");
    assert_eq!(err("stages: [{duration: 0s, users: 5}]"), "spec.stages");
    assert_eq!(
        err("stages: [{duration: 1m, users: 5}, {duration: 1m, users: -1}]"),
        "spec.stages[1].users"
    );
    assert_eq!(
        err("stages: [{duration: soon, users: 5}]"),
        "spec.stages[0].duration"
    );
    assert_eq!(err("users: -3"), "spec.users");
    assert_eq!(err("arrivals: {rate: 0/s}"), "spec.arrivals.rate");
    assert_eq!(
        err("arrivals: {rate: 0/s, stages: [{duration: 1m, rate: 0/s}]}"),
        "spec.arrivals.stages"
    );
    assert_eq!(
        err("arrivals: {rate: 5/s, stages: [{duration: 0s, rate: 9/s}]}"),
        "spec.arrivals.stages"
    );
    assert_eq!(err("users: 5\narrivals: {rate: 5/s}"), "spec.users");
    assert_eq!(
        err("arrivals: {rate: 5/s}\nrepeat: {times: 2}"),
        "spec.repeat"
    );
    assert_eq!(
        err("arrivals: {rate: 5/s, maxConcurrent: 0}"),
        "spec.arrivals.maxConcurrent"
    );
    assert_eq!(
        err("arrivals: {rate: 5/s, stages: [{duration: 1m, rate: fast}]}"),
        "spec.arrivals.stages[0].rate"
    );
    // And what is fine.
    assert_eq!(
        compile_profile(&spec("users: 4")).unwrap(),
        LoadProfile::Users(4)
    );
    let p = compile_profile(&spec("users: 2\nstages: [{duration: 1m, users: 5}]")).unwrap();
    assert_eq!(p.initial_users(), 2);
    assert_eq!(p.end(), Some(secs(60.0)));
    let a = compile_profile(&spec(
        "arrivals: {rate: 0/s, stages: [{duration: 1m, rate: 100/s}]}",
    ))
    .unwrap();
    assert_eq!(a.end(), Some(secs(60.0)));
    assert!(
        matches!(a, LoadProfile::Arrivals(ref s) if s.max_concurrent == DEFAULT_MAX_CONCURRENT)
    );
}
