//! `murmur demo-server websocket`: a WebSocket echo server with rooms, for the `websocket`
//! scenario's demos and tests. Any path is accepted. Messages are text (or binary):
//!
//! - `{"join": ROOM}`: the connection joins ROOM, and every member (the joiner too) gets
//!   `{"joined": ROOM, "members": N}`.
//! - `{"leave": ROOM}`: it leaves; the others get `{"left": ROOM, "members": N}`, and so
//!   does the leaver.
//! - `{"room": ROOM, ...}`: the whole message goes to every other member of ROOM (a
//!   connection that is not a member gets `{"error": "not in ROOM"}`).
//! - Anything else (other JSON, text that is not JSON, binary) is echoed back as it came.
//!
//! A closed connection leaves its rooms. Pings are answered by the library. The first
//! subprotocol a client offers is accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// Members of each room: connection number → its outgoing queue.
type Rooms = Arc<Mutex<HashMap<String, HashMap<u64, mpsc::UnboundedSender<Message>>>>>;

/// A running WebSocket demo server, stopped when dropped.
pub struct WebSocketDemo {
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebSocketDemo {
    /// Binds `addr` and serves with `threads` threads, on threads of its own.
    pub fn start(addr: SocketAddr, threads: usize) -> std::io::Result<WebSocketDemo> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("demo-websocket")
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("demo-websocket".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener =
                        TcpListener::from_std(std_listener).expect("a std listener converts");
                    let rooms: Rooms = Arc::default();
                    let next = AtomicU64::new(0);
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => {
                                    let _ = stream.set_nodelay(true);
                                    let id = next.fetch_add(1, Ordering::Relaxed);
                                    tokio::spawn(session(stream, id, rooms.clone()));
                                }
                                // Out of descriptors: say so once, and let connections close.
                                Err(e) => {
                                    if crate::limits::is_out_of_files(&e) {
                                        crate::limits::tell_out_of_files(&e);
                                    }
                                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                }
                            },
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                    }
                });
            })?;
        Ok(WebSocketDemo {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks while it serves (for the CLI).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WebSocketDemo {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        // Dropping the runtime with the thread closes every connection.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn text(v: Value) -> Message {
    Message::text(v.to_string())
}

/// Sends `m` to every member of `room` but `except`; returns how many members it has.
fn broadcast(rooms: &Rooms, room: &str, except: Option<u64>, m: &Message) -> usize {
    let rooms = rooms.lock();
    let Some(members) = rooms.get(room) else {
        return 0;
    };
    for (id, tx) in members {
        if Some(*id) != except {
            let _ = tx.send(m.clone());
        }
    }
    members.len()
}

/// What a message asks of the server; `Some` answer goes back to the sender. `joined`
/// keeps the rooms it joined, to leave them when it goes.
fn handle(
    rooms: &Rooms,
    me: u64,
    tx: &mpsc::UnboundedSender<Message>,
    joined: &mut Vec<String>,
    m: Message,
) -> Option<Message> {
    let parsed = match &m {
        Message::Text(t) => serde_json::from_str::<Value>(t.as_str()).ok(),
        _ => None,
    };
    let Some(Value::Object(o)) = parsed else {
        return Some(m); // echo
    };
    if let Some(room) = o.get("join").and_then(Value::as_str) {
        let n = {
            let mut r = rooms.lock();
            let members = r.entry(room.to_owned()).or_default();
            members.insert(me, tx.clone());
            members.len()
        };
        joined.push(room.to_owned());
        broadcast(
            rooms,
            room,
            None,
            &text(json!({"joined": room, "members": n})),
        );
        return None;
    }
    if let Some(room) = o.get("leave").and_then(Value::as_str) {
        let n = leave(rooms, room, me);
        joined.retain(|r| r != room);
        let left = text(json!({"left": room, "members": n}));
        broadcast(rooms, room, None, &left);
        return Some(left);
    }
    if let Some(room) = o.get("room").and_then(Value::as_str) {
        let member = rooms.lock().get(room).is_some_and(|m| m.contains_key(&me));
        if !member {
            return Some(text(json!({"error": format!("not in {room}")})));
        }
        broadcast(rooms, room, Some(me), &m);
        return None;
    }
    Some(m)
}

/// Takes `me` out of `room`; returns how many members are left.
fn leave(rooms: &Rooms, room: &str, me: u64) -> usize {
    let mut r = rooms.lock();
    let Some(members) = r.get_mut(room) else {
        return 0;
    };
    members.remove(&me);
    let n = members.len();
    if n == 0 {
        r.remove(room);
    }
    n
}

/// Takes the first subprotocol a client offers, whatever it is (the signature, with its
/// large error type, is tungstenite's handshake callback).
#[allow(clippy::result_large_err)]
fn pick_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let first = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|p| http::HeaderValue::from_str(p.trim()).ok());
    if let Some(p) = first {
        resp.headers_mut().insert("sec-websocket-protocol", p);
    }
    Ok(resp)
}

async fn session(stream: TcpStream, me: u64, rooms: Rooms) {
    let config = crate::scenario::websocket::ws_config();
    let accepted =
        tokio_tungstenite::accept_hdr_async_with_config(stream, pick_subprotocol, Some(config));
    let Ok(mut ws) = accepted.await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let mut joined: Vec<String> = Vec::new();
    loop {
        let out = tokio::select! {
            m = ws.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    handle(&rooms, me, &tx, &mut joined, m)
                }
                Some(Ok(_)) => None, // pings are answered by the library
                _ => break,
            },
            Some(m) = rx.recv() => Some(m),
        };
        if let Some(out) = out {
            // A send refused because the client is closing is no reason to leave: the read
            // above ends once the close handshake is done (or the connection is gone).
            let _ = ws.send(out).await;
        }
    }
    joined.sort();
    joined.dedup();
    for room in joined {
        let n = leave(&rooms, &room, me);
        if n > 0 {
            broadcast(
                &rooms,
                &room,
                None,
                &text(json!({"left": room, "members": n})),
            );
        }
    }
}
