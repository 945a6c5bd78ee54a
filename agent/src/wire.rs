//! The agents' wire protocol: what a master and its agents say to each other.
//!
//! An agent opens an HTTP/1.1 connection to the master's API port and asks for
//! `Upgrade: murmuration-agent/1` at [`api::AGENT_CONNECT`] with the test's token; the
//! version is in the protocol name, so a master refuses an agent of another version before
//! a byte of the protocol flows. After the upgrade both sides exchange frames: a 4-byte
//! big-endian length, then that many bytes of JSON, at most [`MAX_FRAME`]. A frame that is
//! too large, does not parse, or does not arrive within [`FRAME_TIMEOUT`] once started ends
//! the connection with a logged reason.
//!
//! Metrics travel as exact HDR histograms (by step name), so that the master's
//! percentiles are merges, not averages of percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use murmuration_crds::api;
use murmuration_crds::{CoordinatorSpec, ThrottleSpec};

use crate::coordinator::Member;
use crate::metrics::{
    decode_histogram, encode_histogram, IterationSample, IterationStats, Period, StepId, StepStats,
    UserEvents,
};
use crate::scenario::UserId;

/// Largest frame either side accepts (a `hello` with a long series is the largest).
pub const MAX_FRAME: usize = 32 << 20;

/// How long the rest of a frame may take once its first byte arrived: a peer that stalls
/// mid-frame is dropped.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// The frame is not a message of this protocol.
    #[error("malformed message: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The peer stopped in the middle of a frame.
    #[error("peer stalled in the middle of a frame")]
    Stalled,
}

/// Reads one message; `None` when the peer closed the connection between frames.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let body = async {
        r.read_exact(&mut len[1..]).await?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(WireError::TooLarge(n));
        }
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf).await?;
        Ok(buf)
    };
    let buf = tokio::time::timeout(FRAME_TIMEOUT, body)
        .await
        .map_err(|_| WireError::Stalled)??;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(WireError::Malformed)
}

/// Writes one message.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(msg).map_err(WireError::Malformed)?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// A set of user ids as sorted, inclusive ranges: 20,000 consecutive ids are one pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids(pub Vec<(UserId, UserId)>);

impl Ids {
    /// The ids of an iterator (any order, duplicates allowed).
    pub fn of(ids: impl IntoIterator<Item = UserId>) -> Ids {
        let mut v: Vec<UserId> = ids.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        let mut ranges: Vec<(UserId, UserId)> = Vec::new();
        for id in v {
            match ranges.last_mut() {
                Some((_, hi)) if *hi + 1 == id => *hi = id,
                _ => ranges.push((id, id)),
            }
        }
        Ids(ranges)
    }

    /// Every id, ascending. Ranges from a peer are trusted only as far as they are sane.
    pub fn iter(&self) -> impl Iterator<Item = UserId> + '_ {
        self.0
            .iter()
            .filter(|(lo, hi)| lo <= hi)
            .flat_map(|&(lo, hi)| lo..=hi)
    }

    /// How many ids.
    pub fn len(&self) -> u64 {
        self.0
            .iter()
            .filter(|(lo, hi)| lo <= hi)
            .map(|(lo, hi)| hi - lo + 1)
            .sum()
    }

    /// No ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One step's figures on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireStep {
    /// The step's name.
    pub name: String,
    /// Completed actions.
    pub requests: u64,
    /// Failures by kind.
    pub errors: [u64; crate::metrics::ErrorKind::COUNT],
    /// Latency histogram ([`encode_histogram`]).
    pub latency: String,
    /// Corrected latency histogram, empty when not paced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub corrected: String,
}

/// A period's figures on the wire, steps by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WirePeriod {
    /// Steps with something recorded.
    pub steps: Vec<WireStep>,
    /// User lifecycle counters.
    pub users: UserEvents,
    /// Iteration durations, when an iteration ended in the period (absent from agents
    /// older than the iteration histogram).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<WireIterations>,
}

/// A period's iterations on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireIterations {
    /// Their durations ([`encode_histogram`]).
    pub durations: String,
    /// A few of them, with their start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<IterationSample>,
}

impl WirePeriod {
    /// Encodes a period whose steps are named by `names` (index = [`StepId`]).
    pub fn encode(period: &Period, names: &[String]) -> WirePeriod {
        WirePeriod {
            steps: period
                .steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.requests > 0)
                .map(|(i, s)| WireStep {
                    name: names.get(i).cloned().unwrap_or_else(|| format!("step{i}")),
                    requests: s.requests,
                    errors: s.errors,
                    latency: encode_histogram(&s.latency),
                    corrected: if s.corrected.is_empty() {
                        String::new()
                    } else {
                        encode_histogram(&s.corrected)
                    },
                })
                .collect(),
            users: period.users,
            iterations: (!period.iterations.durations.is_empty()).then(|| WireIterations {
                durations: encode_histogram(&period.iterations.durations),
                samples: period.iterations.samples.clone(),
            }),
        }
    }

    /// Decodes into a period indexed by `names` (new names are appended).
    pub fn decode(&self, names: &mut Vec<String>) -> Result<Period, String> {
        let mut period = Period {
            steps: Vec::new(),
            users: self.users,
            iterations: IterationStats::default(),
        };
        if let Some(it) = &self.iterations {
            let durations = decode_histogram(&it.durations)?;
            period
                .iterations
                .durations
                .add(&durations)
                .map_err(|e| format!("iteration histogram: {e:?}"))?;
            period.iterations.samples = it
                .samples
                .iter()
                .take(crate::metrics::ITERATION_SAMPLES_PER_PERIOD)
                .copied()
                .collect();
        }
        for s in &self.steps {
            let i = match names.iter().position(|n| *n == s.name) {
                Some(i) => i,
                None => {
                    if names.len() >= 10_000 {
                        return Err("more than 10000 step names".into());
                    }
                    names.push(s.name.clone());
                    names.len() - 1
                }
            };
            let mut stats = StepStats {
                requests: s.requests,
                errors: s.errors,
                ..StepStats::default()
            };
            let latency = decode_histogram(&s.latency)?;
            stats
                .latency
                .add(&latency)
                .map_err(|e| format!("step {}: latency histogram: {e:?}", s.name))?;
            if !s.corrected.is_empty() {
                let c = decode_histogram(&s.corrected)?;
                stats
                    .corrected
                    .add(&c)
                    .map_err(|e| format!("step {}: corrected histogram: {e:?}", s.name))?;
            }
            period.step_mut(StepId(i as u32)).merge(&stats);
        }
        Ok(period)
    }
}

/// One second of one agent, kept by the agent so that a restarted master can rebuild the
/// series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPoint {
    /// When the period ended (ms since the Unix epoch).
    pub at_ms: u64,
    /// Users running on the agent then.
    pub users: u64,
    /// What it measured.
    pub period: WirePeriod,
}

/// A throttle's figures on one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleDemand {
    /// Permits asked for since the agent started.
    pub requested: u64,
    /// Permits granted since the agent started.
    pub executed: u64,
    /// Users waiting now.
    pub waiting: u64,
}

/// What the master last told every agent about the test: enough for a restarted master to
/// carry on where the old one stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memo {
    /// Grows with every change; the newest memo among the agents wins.
    pub version: u64,
    /// When users started (ms since the Unix epoch); 0 before.
    pub started_at_ms: u64,
    /// Users wanted.
    pub desired: u64,
    /// Ids 1..=launched have been started (or are being).
    pub launched: u64,
    /// Agents expected.
    pub agents: u64,
    /// Scenario variables.
    pub vars: Option<crate::scenario::Vars>,
    /// Throttles as created or updated through the API.
    pub throttles: BTreeMap<String, ThrottleSpec>,
    /// Coordinators as created or updated through the API.
    pub coordinators: BTreeMap<String, CoordinatorSpec>,
    /// The test was stopped (or its duration reached).
    pub stopping: bool,
    /// A person set the users during a stage profile: the profile stopped there.
    #[serde(default)]
    pub overridden: bool,
    /// How the agents split an open model's arrivals now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<ArrivalSplit>,
    /// The first arrival id not handed out yet (a restarted master goes on from there).
    #[serde(default)]
    pub next_arrival_id: u64,
}

/// How the agents share an open model's arrivals: from global arrival `from` on, round
/// robin over `agents` (so that their arrivals together are exactly the schedule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrivalSplit {
    /// The first global arrival index of this split.
    pub from: u64,
    /// The agents, in lane order.
    pub agents: Vec<String>,
}

impl ArrivalSplit {
    /// The lane of one agent (none when it is not part of the split).
    pub fn lane_of(&self, agent: &str) -> Option<murmuration_crds::profile::Lane> {
        let position = self.agents.iter().position(|a| a == agent)?;
        Some(murmuration_crds::profile::Lane {
            from: self.from,
            position: position as u64,
            agents: self.agents.len() as u64,
        })
    }
}

/// What an agent says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FromAgent {
    /// First message: who it is and what it has.
    Hello {
        /// Its stable name (the pod name).
        name: String,
        /// Users it runs now.
        running: Ids,
        /// Users that ended by themselves on it.
        ended: Ids,
        /// The last memo it got, if any.
        memo: Option<Memo>,
        /// Its points so far (all of them: a restarted master rebuilds the series).
        points: Vec<AgentPoint>,
        /// Its throttles' counters.
        throttles: BTreeMap<String, ThrottleDemand>,
        /// Its throttle shares now (kept while the master was away).
        shares: BTreeMap<String, u64>,
        /// Arrival ids it holds and has not used.
        #[serde(default)]
        ids_left: u64,
    },
    /// Every second: what happened since the last report.
    Report {
        /// The period that just ended.
        point: AgentPoint,
        /// Users that ended by themselves in it.
        ended: Ids,
        /// Users running now.
        running: u64,
        /// Its throttles' counters.
        throttles: BTreeMap<String, ThrottleDemand>,
        /// Arrival ids it holds and has not used.
        #[serde(default)]
        ids_left: u64,
    },
    /// A user reached a `coordinate` step.
    Join {
        /// The coordinator.
        coordinator: String,
        /// The user.
        user: UserId,
        /// The data it registers.
        data: serde_json::Value,
    },
    /// Its engine has ended after [`ToAgent::Finish`]: the last figures.
    Finished {
        /// The last period.
        point: AgentPoint,
        /// Users that ended by themselves in it.
        ended: Ids,
    },
}

/// What the master says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ToAgent {
    /// Answer to `hello`: the test to run (the manifests' text) and the memo.
    Welcome {
        /// The test's manifests (YAML), as `murmur run` reads them.
        manifests: String,
        /// The current memo.
        memo: Memo,
    },
    /// Start these users.
    Start {
        /// Their ids.
        ids: Ids,
    },
    /// Stop these users.
    Stop {
        /// Their ids.
        ids: Ids,
        /// At once instead of after their iteration.
        forced: bool,
    },
    /// The memo changed (vars, desired users, throttles...).
    Memo {
        /// The new memo.
        memo: Memo,
    },
    /// Arrival ids for this agent alone: the inclusive range `first..=last`.
    Ids {
        /// The first.
        first: UserId,
        /// The last.
        last: UserId,
    },
    /// New shares of throttles (permits per the throttle's interval).
    Shares {
        /// Share by throttle name.
        shares: BTreeMap<String, u64>,
    },
    /// A user's group formed.
    Release {
        /// The coordinator.
        coordinator: String,
        /// The user released.
        user: UserId,
        /// Members of its group.
        members: Vec<Member>,
        /// Its peers under `pairs`.
        peers: Vec<Member>,
        /// Released by the timeout.
        timed_out: bool,
    },
    /// The test is over: stop every user (gracefully within `grace_ms`, or at once).
    Finish {
        /// Abort at once.
        forced: bool,
        /// Time users get to finish their iteration.
        grace_ms: u64,
    },
}

/// The `Upgrade` protocol an agent asks for.
pub const PROTOCOL: &str = api::AGENT_PROTOCOL;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compress_to_ranges_and_back() {
        let ids = Ids::of([5, 1, 2, 3, 9, 10, 3]);
        assert_eq!(ids.0, vec![(1, 3), (5, 5), (9, 10)]);
        assert_eq!(ids.len(), 6);
        assert_eq!(ids.iter().collect::<Vec<_>>(), [1, 2, 3, 5, 9, 10]);
        // A peer's inverted range counts for nothing rather than panicking.
        assert_eq!(Ids(vec![(4, 2)]).len(), 0);
    }

    #[test]
    fn periods_cross_the_wire_exactly_by_step_name() {
        let mut p = Period::default();
        for i in 1..=1000u64 {
            p.step_mut(StepId(1))
                .record(Duration::from_micros(i * 7), None, None);
        }
        let wire = WirePeriod::encode(&p, &["home".into(), "buy".into()]);
        assert_eq!(wire.steps.len(), 1, "steps without figures are left out");
        let json = serde_json::to_string(&wire).unwrap();
        let back: WirePeriod = serde_json::from_str(&json).unwrap();
        // The master knows other names already: "buy" lands on its own index.
        let mut names = vec!["checkout".to_string(), "buy".to_string()];
        let q = back.decode(&mut names).unwrap();
        assert_eq!(q.steps[1].requests, 1000);
        assert_eq!(q.steps[1].latency.max(), p.steps[1].latency.max());
        assert_eq!(
            q.steps[1].latency.value_at_quantile(0.99),
            p.steps[1].latency.value_at_quantile(0.99)
        );
        assert!(q.iterations.durations.is_empty() && wire.iterations.is_none());
    }

    #[test]
    fn iterations_cross_the_wire_with_their_samples() {
        let mut p = Period::default();
        for _ in 0..40 {
            p.users.iterations += 1;
            p.iterations.record_took(Duration::from_millis(30));
        }
        let json = serde_json::to_string(&WirePeriod::encode(&p, &[])).unwrap();
        let back: WirePeriod = serde_json::from_str(&json).unwrap();
        let q = back.decode(&mut Vec::new()).unwrap();
        assert_eq!(q.iterations.durations.len(), 40);
        assert_eq!(q.users.iterations, 40);
        assert_eq!(
            q.iterations.samples.len(),
            crate::metrics::ITERATION_SAMPLES_PER_PERIOD
        );
        assert!(q.iterations.samples.iter().all(|s| s.us >= 30_000));
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let msg = ToAgent::Start {
            ids: Ids::of(1..=10),
        };
        write_frame(&mut a, &msg).await.unwrap();
        let got: Option<ToAgent> = read_frame(&mut b).await.unwrap();
        assert_eq!(got, Some(msg));
        // Too large.
        a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_frame::<_, ToAgent>(&mut b).await.unwrap_err();
        assert!(matches!(err, WireError::TooLarge(_)), "{err}");
        // Not a message.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"hello").await.unwrap();
        let err = read_frame::<_, ToAgent>(&mut b).await.unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{err}");
        // Closed between frames.
        drop(a);
        assert!(read_frame::<_, ToAgent>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stalls_mid_frame_is_dropped() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&[0, 0]).await.unwrap();
        let err = read_frame::<_, ToAgent>(&mut b).await.unwrap_err();
        assert!(matches!(err, WireError::Stalled), "{err}");
    }
}
