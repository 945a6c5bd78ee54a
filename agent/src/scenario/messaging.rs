//! The `messaging` scenario: the users of amoc's Livebook demo, against
//! `murmur demo-server messaging`.
//!
//! A user connects with `{"connect": "ID"}`, then about once an `interval` sends one of its
//! pending messages (16-24 random characters) to a neighbour (ids ID-k..ID+k), answers every
//! message it receives (`resp_to` the message's `msg_id`), sends 20-30 messages in all, and
//! leaves after `silence` without news once it has nothing left to say. Measured steps:
//! `connect` (connection and acknowledgement), `send` (writing a message) and `reply` (from
//! sending a message to receiving the answer to it: two hops through the server and the
//! peer's reaction).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::json_stream::decode_all;
use crate::metrics::{ErrorKind, StepId};
use crate::scenario::{InitContext, Scenario, ScenarioError, User};

/// How long a user waits for the server to acknowledge its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The messaging users: their settings as the model checked them.
pub use murmuration_model::messaging::MessagingPlan as MessagingUsers;

/// Step ids of the scenario.
pub struct MessagingState {
    connect: StepId,
    send: StepId,
    reply: StepId,
}

fn random_text(user: &mut User) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789+/";
    let rng = user.rng();
    let n = rng.random_range(16..=24);
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// ±10% around `d`, as the demo's timers.
fn jitter(user: &mut User, d: Duration) -> Duration {
    d.mul_f64(user.rng().random_range(0.9..=1.1))
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> ScenarioError {
    ScenarioError::User {
        kind,
        message: message.into(),
    }
}

impl Scenario for MessagingUsers {
    type State = MessagingState;

    async fn init(&self, ctx: &InitContext) -> Result<MessagingState, ScenarioError> {
        for v in self.server.vars() {
            if ctx.var(v).is_none() {
                return Err(ScenarioError::Config(format!(
                    "spec.scenario.messaging.server uses {{{{vars.{v}}}}}, which is not set"
                )));
            }
        }
        Ok(MessagingState {
            connect: ctx.step("connect"),
            send: ctx.step("send"),
            reply: ctx.step("reply"),
        })
    }

    async fn start(&self, user: &mut User, st: &MessagingState) -> Result<(), ScenarioError> {
        let me = user.id().to_string();
        let started = user.now();
        let address = self.server.render(user);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if crate::limits::is_out_of_files(&e) {
                    crate::limits::tell_out_of_files(&e);
                }
                user.record(st.connect, started, Some(ErrorKind::Connect));
                return Err(fail(ErrorKind::Connect, format!("{address}: {e}")));
            }
            Err(_) => {
                user.record(st.connect, started, Some(ErrorKind::Timeout));
                return Err(fail(
                    ErrorKind::Timeout,
                    format!("{address}: no connection"),
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = Vec::with_capacity(512);
        let mut chunk = vec![0u8; 2048];
        let send = |v: Value| {
            let mut b = serde_json::to_vec(&v).expect("JSON serialises");
            b.push(b'\n');
            b
        };
        if wr.write_all(&send(json!({"connect": me}))).await.is_err() {
            user.record(st.connect, started, Some(ErrorKind::Protocol));
            return Err(fail(ErrorKind::Protocol, "connection closed"));
        }
        // Wait for the acknowledgement; anything else first is a protocol error.
        let ack = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                let n = rd.read(&mut chunk).await.map_err(|_| ErrorKind::Protocol)?;
                if n == 0 {
                    return Err(ErrorKind::Protocol);
                }
                buf.extend_from_slice(&chunk[..n]);
                let events = decode_all(&mut buf).map_err(|_| ErrorKind::Protocol)?;
                if let Some(e) = events.first() {
                    return if e.get("connected").and_then(Value::as_str) == Some(me.as_str()) {
                        Ok(events[1..].to_vec())
                    } else {
                        Err(ErrorKind::Check)
                    };
                }
            }
        })
        .await;
        let mut early = match ack {
            Ok(Ok(rest)) => {
                user.record(st.connect, started, None);
                rest
            }
            Ok(Err(kind)) => {
                user.record(st.connect, started, Some(kind));
                return Err(fail(kind, "the server did not accept the connection"));
            }
            Err(_) => {
                user.record(st.connect, started, Some(ErrorKind::Timeout));
                return Err(fail(ErrorKind::Timeout, "no acknowledgement"));
            }
        };
        let id = user.id();
        let mut left = user
            .rng()
            .random_range(self.min_messages..=self.max_messages);
        let k = self.neighbours;
        let mut pending: VecDeque<Value> = (id.saturating_sub(k)..=id + k)
            .filter(|n| *n != id)
            .map(|n| json!({"from": me, "to": n.to_string()}))
            .collect();
        for m in pending.iter_mut() {
            m["msg"] = random_text(user).into();
        }
        let mut msg_seq = 0u64;
        let mut sent_at: HashMap<String, Instant> = HashMap::new();
        let mut next_send =
            (left > 0 && !pending.is_empty()).then(|| Instant::now() + jitter(user, self.interval));
        let mut inactive_at = if next_send.is_none() {
            Some(Instant::now() + jitter(user, self.silence))
        } else {
            None
        };
        loop {
            for event in std::mem::take(&mut early) {
                if event.get("to").and_then(Value::as_str) != Some(me.as_str()) {
                    continue;
                }
                if let Some(t) = event
                    .get("resp_to")
                    .and_then(Value::as_str)
                    .and_then(|r| sent_at.remove(r))
                {
                    user.record(st.reply, t.into_std(), None);
                }
                if left == 0 {
                    // Still hearing from others: stay a little longer, then go.
                    inactive_at = Some(Instant::now() + jitter(user, self.silence));
                    continue;
                }
                let from = event.get("from").cloned().unwrap_or(Value::Null);
                let msg_id = event.get("msg_id").cloned().unwrap_or(Value::Null);
                pending.push_back(
                    json!({"from": me, "to": from, "msg": random_text(user), "resp_to": msg_id}),
                );
                if next_send.is_none() {
                    next_send = Some(Instant::now() + jitter(user, self.interval));
                    inactive_at = None;
                }
            }
            let wake = match (next_send, inactive_at) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => Instant::now() + self.silence,
            };
            tokio::select! {
                n = rd.read(&mut chunk) => {
                    let n = match n {
                        Ok(0) | Err(_) => {
                            let t = user.now();
                            user.record(st.send, t, Some(ErrorKind::Protocol));
                            return Err(fail(ErrorKind::Protocol, "the server closed the connection"));
                        }
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    match decode_all(&mut buf) {
                        Ok(events) => early = events,
                        Err(_) => {
                            let t = user.now();
                            user.record(st.send, t, Some(ErrorKind::Protocol));
                            return Err(fail(ErrorKind::Protocol, "the server sent bad JSON"));
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if inactive_at.is_some_and(|t| t <= now) {
                        return Ok(()); // long enough without news: leave
                    }
                    if next_send.is_some_and(|t| t <= now) {
                        let i = user.rng().random_range(0..pending.len());
                        let mut m = pending.remove(i).expect("in range");
                        msg_seq += 1;
                        let msg_id = format!("{id}-{msg_seq}");
                        m["msg_id"] = msg_id.clone().into();
                        let t = user.now();
                        if wr.write_all(&send(m)).await.is_err() {
                            user.record(st.send, t, Some(ErrorKind::Protocol));
                            return Err(fail(ErrorKind::Protocol, "the server closed the connection"));
                        }
                        user.record(st.send, t, None);
                        sent_at.insert(msg_id, Instant::from_std(t));
                        left -= 1;
                        if left == 0 || pending.is_empty() {
                            if left == 0 {
                                pending.clear();
                            }
                            next_send = None;
                            inactive_at = Some(now + jitter(user, self.silence));
                        } else {
                            next_send = Some(now + jitter(user, self.interval));
                        }
                    }
                }
            }
        }
    }
}
