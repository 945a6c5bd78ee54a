//! Coordinators: users that reach a `coordinate` step wait until their group forms
//! (amoc's coordinator).
//!
//! A plan is a list of items `{users, action}`; each item counts arriving users on its own
//! and fires on every N-th arrival with those N users (a range draws a new N for each
//! group). After `timeout` without a new arrival, every item fires with the users it holds
//! (event type `timeout`), then the `all` items fire with everyone who arrived since the
//! last reset, and the coordinator starts afresh. A user goes on once every numbered item
//! has placed it in a group (or, with only `all` items, at the timeout); it learns the
//! members of its first group and, under a `pairs` item, the peers it is paired with.
//!
//! The core is a synchronous state machine ([`Machine`]) so that the distributed master
//! can host it and deliver releases over the network; [`Coordinator`] adds the waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use murmuration_crds::coordinator::{CoordinationAction, GroupSize, PlanItem};
use murmuration_crds::CoordinatorSpec;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;
use tokio::time::Instant;

use murmuration_model::UserId;

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// No such coordinator.
    #[error("no coordinator named {0:?}")]
    Unknown(String),
}

/// A member of a group: its user id and the data it joined with.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Its user id.
    pub user: UserId,
    /// The data it registered.
    pub data: serde_json::Value,
}

/// What a user learns when it is released.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Coordination {
    /// The members of this user's first group (itself included).
    pub members: Vec<Member>,
    /// The users it is paired with under `pairs` items (none for a lone user).
    pub peers: Vec<Member>,
    /// Released by the timeout rather than by a full group.
    pub timed_out: bool,
}

/// The figures of a coordinator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Users waiting now.
    pub waiting: u64,
    /// Groups formed (by all items, timeouts included).
    pub groups: u64,
    /// Timeouts that released someone.
    pub timeouts: u64,
}

/// A group an item formed: the event the amoc docs describe.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Index of the plan item.
    pub item: usize,
    /// What the item does.
    pub action: CoordinationAction,
    /// Its members, in arrival order.
    pub members: Vec<Member>,
    /// Formed by the timeout (partial or `all`).
    pub timed_out: bool,
}

/// Distinct pairs of a batch, as amoc defines them: `[a]` → `[(a, none)]`, `[a, b]` →
/// `[(a, b)]`, `[a, b, c]` → `[(a, b), (a, c), (b, c)]`.
pub fn distinct_pairs<T: Clone>(batch: &[T]) -> Vec<(T, Option<T>)> {
    if batch.len() == 1 {
        return vec![(batch[0].clone(), None)];
    }
    let mut v = Vec::new();
    for i in 0..batch.len() {
        for j in i + 1..batch.len() {
            v.push((batch[i].clone(), Some(batch[j].clone())));
        }
    }
    v
}

struct Item {
    plan: PlanItem,
    batch: Vec<Member>,
    /// The size of the group being filled (drawn per group for a range).
    size: usize,
}

/// The coordinator's state machine, without any waiting: feed it arrivals and timeouts,
/// and it says which groups formed and which users are released.
pub struct Machine {
    items: Vec<Item>,
    /// Everyone who arrived since the last reset (for `all` items).
    arrived: Vec<Member>,
    /// Users not released yet: how many numbered items still hold them, and what they
    /// learned so far.
    pending: HashMap<UserId, (usize, Coordination)>,
    numbered: usize,
    rng: SmallRng,
}

impl Machine {
    /// A machine for `plan`.
    pub fn new(plan: &[PlanItem]) -> Machine {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let items: Vec<Item> = plan
            .iter()
            .map(|p| Item {
                plan: p.clone(),
                batch: Vec::new(),
                size: draw(p.users, &mut rng),
            })
            .collect();
        let numbered = items
            .iter()
            .filter(|i| i.plan.users != GroupSize::All)
            .count();
        Machine {
            items,
            arrived: Vec::new(),
            pending: HashMap::new(),
            numbered,
            rng,
        }
    }

    /// A user arrives; returns the groups that formed and the users released.
    pub fn join(&mut self, member: Member) -> (Vec<Group>, Vec<(UserId, Coordination)>) {
        self.arrived.push(member.clone());
        self.pending
            .insert(member.user, (self.numbered, Coordination::default()));
        let mut groups = Vec::new();
        for i in 0..self.items.len() {
            let item = &mut self.items[i];
            if item.plan.users == GroupSize::All {
                continue;
            }
            item.batch.push(member.clone());
            if item.batch.len() >= item.size {
                let batch = std::mem::take(&mut item.batch);
                item.size = draw(item.plan.users, &mut self.rng);
                groups.push(Group {
                    item: i,
                    action: item.plan.action,
                    members: batch,
                    timed_out: false,
                });
            }
        }
        let released = self.apply(&groups);
        (groups, released)
    }

    /// The timeout: every numbered item fires with what it holds, then the `all` items
    /// with everyone who arrived; then the machine starts afresh.
    pub fn timeout(&mut self) -> (Vec<Group>, Vec<(UserId, Coordination)>) {
        let mut groups = Vec::new();
        for (i, item) in self.items.iter_mut().enumerate() {
            if item.plan.users != GroupSize::All && !item.batch.is_empty() {
                groups.push(Group {
                    item: i,
                    action: item.plan.action,
                    members: std::mem::take(&mut item.batch),
                    timed_out: true,
                });
            }
        }
        let all: Vec<Member> = std::mem::take(&mut self.arrived);
        if !all.is_empty() {
            for (i, item) in self.items.iter().enumerate() {
                if item.plan.users == GroupSize::All {
                    groups.push(Group {
                        item: i,
                        action: item.plan.action,
                        members: all.clone(),
                        timed_out: true,
                    });
                }
            }
        }
        let mut released = self.apply(&groups);
        // Whoever is still waiting (it should be nobody) goes now: a reset keeps no one.
        for (user, (_, mut c)) in self.pending.drain() {
            c.timed_out = true;
            released.push((user, c));
        }
        for item in &mut self.items {
            item.size = draw(item.plan.users, &mut self.rng);
        }
        (groups, released)
    }

    /// Users waiting now.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    fn apply(&mut self, groups: &[Group]) -> Vec<(UserId, Coordination)> {
        let mut released = Vec::new();
        for g in groups {
            let numbered = self.items[g.item].plan.users != GroupSize::All;
            for m in &g.members {
                let Some((left, c)) = self.pending.get_mut(&m.user) else {
                    continue;
                };
                if c.members.is_empty() {
                    c.members = g.members.clone();
                }
                c.timed_out |= g.timed_out;
                if g.action == CoordinationAction::Pairs {
                    c.peers
                        .extend(g.members.iter().filter(|o| o.user != m.user).cloned());
                }
                if numbered {
                    *left -= 1;
                }
                // Released when no numbered item holds it any more; with only `all`
                // items, by the `all` group itself.
                if *left == 0 {
                    let (_, c) = self.pending.remove(&m.user).expect("present");
                    released.push((m.user, c));
                }
            }
        }
        released
    }
}

fn draw(size: GroupSize, rng: &mut SmallRng) -> usize {
    match size {
        GroupSize::Exactly(n) => n as usize,
        GroupSize::Range { min, max } => rng.random_range(min..=max) as usize,
        GroupSize::All => usize::MAX,
    }
}

/// A named coordinator: the machine, its waiting users and its timeout.
pub struct Coordinator {
    name: String,
    timeout: Duration,
    inner: Mutex<Inner>,
    groups: AtomicU64,
    timeouts: AtomicU64,
}

struct Inner {
    machine: Machine,
    waiters: HashMap<UserId, oneshot::Sender<Coordination>>,
    /// When the timeout fires unless someone arrives first.
    deadline: Option<Instant>,
}

impl Coordinator {
    /// A coordinator with `plan`, releasing partial groups after `timeout` of silence.
    pub fn new(name: impl Into<String>, plan: &[PlanItem], timeout: Duration) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            name: name.into(),
            timeout,
            inner: Mutex::new(Inner {
                machine: Machine::new(plan),
                waiters: HashMap::new(),
                deadline: None,
            }),
            groups: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its figures now.
    pub fn stats(&self) -> CoordinatorStats {
        CoordinatorStats {
            waiting: self.inner.lock().machine.waiting() as u64,
            groups: self.groups.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }

    fn deliver(&self, inner: &mut Inner, groups: &[Group], released: Vec<(UserId, Coordination)>) {
        self.groups
            .fetch_add(groups.len() as u64, Ordering::Relaxed);
        for g in groups {
            tracing::debug!(coordinator = %self.name, item = g.item, size = g.members.len(), timeout = g.timed_out, "coordinate");
        }
        for (user, c) in released {
            if let Some(tx) = inner.waiters.remove(&user) {
                // A user removed meanwhile is simply not there to hear it.
                let _ = tx.send(c);
            }
        }
    }

    /// Releases everyone waiting, as a timeout would (the coordinator is being replaced or
    /// deleted).
    pub fn release_all(&self) {
        let mut inner = self.inner.lock();
        inner.deadline = None;
        let (groups, released) = inner.machine.timeout();
        self.deliver(&mut inner, &groups, released);
        for (_, tx) in inner.waiters.drain() {
            let _ = tx.send(Coordination {
                timed_out: true,
                ..Coordination::default()
            });
        }
    }

    /// Joins with `data` and waits until this user's group forms (or the timeout). A user
    /// whose wait is dropped (removed from the test) still counts in the group it was in.
    pub async fn join(&self, user: UserId, data: serde_json::Value) -> Coordination {
        let rx = {
            let mut inner = self.inner.lock();
            let (tx, rx) = oneshot::channel();
            inner.waiters.insert(user, tx);
            let (groups, released) = inner.machine.join(Member { user, data });
            inner.deadline = Some(Instant::now() + self.timeout);
            self.deliver(&mut inner, &groups, released);
            rx
        };
        tokio::pin!(rx);
        loop {
            let deadline = self.inner.lock().deadline;
            let Some(deadline) = deadline else {
                // Released already by a reset that ran meanwhile.
                return rx.await.unwrap_or_default();
            };
            tokio::select! {
                r = &mut rx => return r.unwrap_or_default(),
                _ = tokio::time::sleep_until(deadline) => {
                    // Any waiter may fire the timeout; the first one to see it due does.
                    let mut inner = self.inner.lock();
                    if inner.deadline.is_some_and(|d| d <= Instant::now()) {
                        inner.deadline = None;
                        let (groups, released) = inner.machine.timeout();
                        if !released.is_empty() || !groups.is_empty() {
                            self.timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(coordinator = %self.name, released = released.len(), "timeout");
                        self.deliver(&mut inner, &groups, released);
                    }
                }
            }
        }
    }
}

/// The coordinators of a test, by name: here in the process, or at the master (an agent's
/// users join the master's coordinators, so that groups form across agents).
#[derive(Default)]
pub struct Coordinators {
    map: arc_swap::ArcSwap<HashMap<String, Arc<Coordinator>>>,
    remote: Option<Remote>,
}

/// Checks a coordinator's spec (the model's rules); returns its timeout. Errors name the
/// coordinator and the field (`Coordinator c: spec.timeout: ...`).
pub fn timeout_of(name: &str, spec: &CoordinatorSpec) -> Result<Duration, String> {
    murmuration_model::coordinator::compile(spec).map_err(|e| format!("Coordinator {name}: {e}"))
}

impl Coordinators {
    /// Builds the coordinators of a test; errors name the coordinator and the field.
    pub fn from_specs<'a>(
        specs: impl Iterator<Item = (&'a str, &'a CoordinatorSpec)>,
    ) -> Result<Coordinators, String> {
        let c = Coordinators::default();
        for (name, spec) in specs {
            c.upsert(name, spec)?;
        }
        Ok(c)
    }

    /// Coordinators hosted elsewhere (by an agent's master): joins go out through
    /// `joins`, releases come back through [`Coordinators::release`].
    pub fn remote(joins: tokio::sync::mpsc::UnboundedSender<RemoteJoin>) -> Coordinators {
        Coordinators {
            map: Default::default(),
            remote: Some(Remote {
                joins,
                waiting: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Creates or replaces a coordinator (a replaced one starts afresh; its waiting users
    /// are released as by a timeout).
    pub fn upsert(&self, name: &str, spec: &CoordinatorSpec) -> Result<(), String> {
        let timeout = timeout_of(name, spec)?;
        let new = Coordinator::new(name, &spec.plan, timeout);
        let mut old = None;
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            old = m.insert(name.to_owned(), new.clone());
            m
        });
        if let Some(old) = old {
            old.release_all();
        }
        Ok(())
    }

    /// Deletes a coordinator; its waiting users are released as by a timeout.
    pub fn remove(&self, name: &str) {
        let mut old = None;
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            old = m.remove(name);
            m
        });
        if let Some(old) = old {
            old.release_all();
        }
    }

    /// The coordinator of that name (here).
    pub fn get(&self, name: &str) -> Option<Arc<Coordinator>> {
        self.map.load().get(name).cloned()
    }

    /// Joins the named coordinator and waits for this user's group.
    pub async fn join(
        &self,
        name: &str,
        user: UserId,
        data: serde_json::Value,
    ) -> Result<Coordination, CoordinatorError> {
        if let Some(remote) = &self.remote {
            return Ok(remote.join(name, user, data).await);
        }
        let c = self
            .get(name)
            .ok_or_else(|| CoordinatorError::Unknown(name.to_owned()))?;
        Ok(c.join(user, data).await)
    }

    /// Hands a release from the master to the user waiting for it.
    pub fn release(&self, coordinator: &str, user: UserId, c: Coordination) {
        if let Some(remote) = &self.remote {
            if let Some(w) = remote
                .waiting
                .lock()
                .remove(&(coordinator.to_owned(), user))
            {
                let _ = w.tx.send(c);
            }
        }
    }

    /// Joins still waiting for the master (sent again to a new master).
    pub fn pending_joins(&self) -> Vec<RemoteJoin> {
        let Some(remote) = &self.remote else {
            return Vec::new();
        };
        remote
            .waiting
            .lock()
            .iter()
            .map(|((c, u), w)| RemoteJoin {
                coordinator: c.clone(),
                user: *u,
                data: w.data.clone(),
            })
            .collect()
    }

    /// All of them (here), by name.
    pub fn all(&self) -> Vec<Arc<Coordinator>> {
        let mut v: Vec<Arc<Coordinator>> = self.map.load().values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }
}

/// A user's join, on its way to the master.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteJoin {
    /// The coordinator.
    pub coordinator: String,
    /// The user.
    pub user: UserId,
    /// What it registers.
    pub data: serde_json::Value,
}

struct RemoteWaiter {
    data: serde_json::Value,
    tx: oneshot::Sender<Coordination>,
}

struct Remote {
    joins: tokio::sync::mpsc::UnboundedSender<RemoteJoin>,
    waiting: Mutex<HashMap<(String, UserId), RemoteWaiter>>,
}

impl Remote {
    async fn join(&self, name: &str, user: UserId, data: serde_json::Value) -> Coordination {
        let (tx, rx) = oneshot::channel();
        let key = (name.to_owned(), user);
        self.waiting.lock().insert(
            key.clone(),
            RemoteWaiter {
                data: data.clone(),
                tx,
            },
        );
        // Removes the entry if the user goes away (removed from the test) while waiting.
        struct Forget<'a>(&'a Remote, (String, UserId), bool);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    self.0.waiting.lock().remove(&self.1);
                }
            }
        }
        let mut forget = Forget(self, key, false);
        let _ = self.joins.send(RemoteJoin {
            coordinator: name.to_owned(),
            user,
            data,
        });
        let c = rx.await.unwrap_or_default();
        forget.2 = true;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(users: GroupSize, action: CoordinationAction) -> PlanItem {
        PlanItem { users, action }
    }

    fn m(user: UserId) -> Member {
        Member {
            user,
            data: serde_json::Value::Null,
        }
    }

    fn ids(ms: &[Member]) -> Vec<UserId> {
        ms.iter().map(|m| m.user).collect()
    }

    #[test]
    fn distinct_pairs_as_amoc_defines_them() {
        assert_eq!(distinct_pairs(&['a']), [('a', None)]);
        assert_eq!(distinct_pairs(&['a', 'b']), [('a', Some('b'))]);
        assert_eq!(
            distinct_pairs(&['a', 'b', 'c']),
            [('a', Some('b')), ('a', Some('c')), ('b', Some('c'))]
        );
    }

    /// The worked example of the amoc docs: plan [{2, ...} x3, {3, ...}, {all, ...}] and 5
    /// users.
    #[test]
    fn the_amoc_example_with_five_users() {
        use CoordinationAction::*;
        let plan = [
            item(GroupSize::Exactly(2), Release),
            item(GroupSize::Exactly(2), Group),
            item(GroupSize::Exactly(2), Pairs),
            item(GroupSize::Exactly(3), Release),
            item(GroupSize::All, Release),
        ];
        let mut machine = Machine::new(&plan);
        let (g, r) = machine.join(m(1));
        assert!(g.is_empty() && r.is_empty());
        // User 2: all {2, _} items fire with users 1 and 2.
        let (g, _) = machine.join(m(2));
        assert_eq!(g.iter().map(|g| g.item).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(g.iter().all(|g| ids(&g.members) == [1, 2] && !g.timed_out));
        // User 3: the {3, _} item fires with 1, 2, 3; users 1 and 2 are now in a group of
        // every numbered item, so they go.
        let (g, r) = machine.join(m(3));
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].item, ids(&g[0].members)), (3, vec![1, 2, 3]));
        let mut released: Vec<UserId> = r.iter().map(|(u, _)| *u).collect();
        released.sort();
        assert_eq!(released, [1, 2]);
        let one = &r.iter().find(|(u, _)| *u == 1).unwrap().1;
        assert_eq!(ids(&one.members), [1, 2], "its first group");
        assert_eq!(ids(&one.peers), [2], "paired with 2");
        // User 4: the {2, _} items fire with 3 and 4; 3 was in the {3} group already.
        let (g, r) = machine.join(m(4));
        assert!(g.iter().all(|g| ids(&g.members) == [3, 4]));
        assert_eq!(r.iter().map(|(u, _)| *u).collect::<Vec<_>>(), [3]);
        let (_, r) = machine.join(m(5));
        assert!(
            r.is_empty(),
            "5 waits: no pair yet, and the {{3}} item holds 4 and 5"
        );
        // Timeout: partial groups ({2, _}: [5]; {3}: [4, 5]), then `all` with 1..5.
        let (g, r) = machine.timeout();
        let partial: Vec<(usize, Vec<UserId>)> =
            g.iter().map(|g| (g.item, ids(&g.members))).collect();
        assert_eq!(
            partial,
            [
                (0, vec![5]),
                (1, vec![5]),
                (2, vec![5]),
                (3, vec![4, 5]),
                (4, vec![1, 2, 3, 4, 5])
            ]
        );
        assert!(g.iter().all(|g| g.timed_out));
        let mut released: Vec<UserId> = r.iter().map(|(u, _)| *u).collect();
        released.sort();
        assert_eq!(released, [4, 5]);
        let five = &r.iter().find(|(u, _)| *u == 5).unwrap().1;
        assert!(five.timed_out);
        assert!(five.peers.is_empty(), "a lone user has no peer");
        assert_eq!(machine.waiting(), 0);
    }

    #[test]
    fn ranges_draw_sizes_within_bounds() {
        let plan = [item(
            GroupSize::Range { min: 3, max: 5 },
            CoordinationAction::Group,
        )];
        let mut machine = Machine::new(&plan);
        let mut sizes = Vec::new();
        for u in 1..=400 {
            let (g, _) = machine.join(m(u));
            sizes.extend(g.iter().map(|g| g.members.len()));
        }
        assert!(sizes.iter().all(|s| (3..=5).contains(s)), "{sizes:?}");
        for s in 3..=5 {
            assert!(sizes.contains(&s), "size {s} never drawn: {sizes:?}");
        }
    }

    #[test]
    fn only_all_items_release_at_the_timeout() {
        let plan = [item(GroupSize::All, CoordinationAction::Group)];
        let mut machine = Machine::new(&plan);
        for u in 1..=3 {
            assert!(machine.join(m(u)).1.is_empty());
        }
        let (g, r) = machine.timeout();
        assert_eq!(g.len(), 1);
        assert_eq!(r.len(), 3);
        assert!(r
            .iter()
            .all(|(_, c)| ids(&c.members) == [1, 2, 3] && c.timed_out));
    }

    #[tokio::test(start_paused = true)]
    async fn users_wait_for_their_pair_and_a_lone_one_for_the_timeout() {
        let plan = [item(GroupSize::Exactly(2), CoordinationAction::Pairs)];
        let c = Coordinator::new("pairs", &plan, Duration::from_secs(2));
        let mut tasks = Vec::new();
        for u in 1..=5u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let r = c.join(u, serde_json::json!({"id": u})).await;
                (u, r, start.elapsed())
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            let (u, r, waited) = t.await.unwrap();
            if u == 5 {
                assert!(r.timed_out && r.peers.is_empty(), "{r:?}");
                assert!(waited >= Duration::from_secs(2), "{waited:?}");
            } else {
                let peer = if u % 2 == 1 { u + 1 } else { u - 1 };
                assert_eq!(ids(&r.peers), [peer], "user {u}");
                assert_eq!(r.members[0].data["id"], r.members[0].user);
                assert!(!r.timed_out);
            }
        }
        let s = c.stats();
        assert_eq!((s.groups, s.timeouts, s.waiting), (3, 1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_users_at_once_form_exact_groups() {
        let plan = [item(GroupSize::Exactly(4), CoordinationAction::Group)];
        let c = Coordinator::new("g", &plan, Duration::from_secs(30));
        let tasks: Vec<_> = (1..=1000u64)
            .map(|u| {
                let c = c.clone();
                tokio::spawn(async move { c.join(u, serde_json::Value::Null).await })
            })
            .collect();
        let mut seen = std::collections::BTreeMap::new();
        for t in tasks {
            let r = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.members.len(), 4);
            *seen.entry(ids(&r.members)).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 250, "250 distinct groups");
        assert!(
            seen.values().all(|n| *n == 4),
            "each group seen by its 4 members"
        );
        assert_eq!(c.stats().groups, 250);
    }

    #[test]
    fn specs_are_checked() {
        let spec: CoordinatorSpec =
            serde_saphyr::from_str("timeout: soon\nplan: [{users: 2, action: pairs}]").unwrap();
        let e = Coordinators::from_specs([("c", &spec)].into_iter())
            .err()
            .unwrap();
        assert!(e.contains("Coordinator c: spec.timeout"), "{e}");
    }
}
