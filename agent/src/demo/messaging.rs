//! `murmur demo-server messaging`: the JSON-over-TCP messaging server of amoc's Livebook
//! demo, ported faithfully.
//!
//! A client first sends `{"connect": ID}`: the server answers `{"connected": ID}`, or
//! `{"rejected": "duplicate"}` and closes when another connection has that ID. Then any
//! JSON object with `from` equal to the connection's ID and a `to` is routed, whole, to the
//! connection registered as `to` (if any); anything else is dropped silently, so that a
//! sender learns nothing about the recipient (nor about a forged `from`). Payloads are
//! JSON values one after another on the stream (the server writes one per line); bad JSON
//! closes the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::json_stream::decode_all;

/// Connected users: id (its JSON text) → the channel of its connection.
type Sessions = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>>;

/// A running messaging server, stopped when dropped.
pub struct MessagingDemo {
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MessagingDemo {
    /// Binds `addr` and serves on a thread of its own.
    pub fn start(addr: SocketAddr) -> std::io::Result<MessagingDemo> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("demo-messaging".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime builds");
                rt.block_on(async move {
                    let listener =
                        TcpListener::from_std(std_listener).expect("a std listener converts");
                    let sessions: Sessions = Arc::default();
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    let _ = stream.set_nodelay(true);
                                    tokio::spawn(session(stream, sessions.clone()));
                                }
                            }
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                    }
                });
            })?;
        Ok(MessagingDemo {
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

impl Drop for MessagingDemo {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }
}

async fn write(stream: &mut tokio::net::tcp::OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(v).expect("a JSON value serialises");
    bytes.push(b'\n');
    stream.write_all(&bytes).await
}

async fn session(stream: TcpStream, sessions: Sessions) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let mut me: Option<String> = None;
    let mut me_id = Value::Null;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    'session: loop {
        tokio::select! {
            n = rd.read(&mut chunk) => {
                let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                buf.extend_from_slice(&chunk[..n]);
                let Ok(events) = decode_all(&mut buf) else { break };
                for event in events {
                    match &me {
                        None => {
                            // Connecting: only {"connect": ID} means anything.
                            let Some(id) = event.get("connect") else { continue };
                            let key = id.to_string();
                            let fresh = {
                                let mut s = sessions.lock();
                                if s.contains_key(&key) { false } else { s.insert(key.clone(), tx.clone()); true }
                            };
                            if fresh {
                                if write(&mut wr, &serde_json::json!({"connected": id})).await.is_err() {
                                    me = Some(key);
                                    break 'session;
                                }
                                me = Some(key);
                                me_id = id.clone();
                            } else {
                                let _ = write(&mut wr, &serde_json::json!({"rejected": "duplicate"})).await;
                                break 'session;
                            }
                        }
                        Some(_) => {
                            // Routed only when `from` is this connection's id.
                            let (Some(from), Some(to)) = (event.get("from"), event.get("to")) else { continue };
                            if *from != me_id {
                                continue;
                            }
                            let peer = sessions.lock().get(&to.to_string()).cloned();
                            if let Some(peer) = peer {
                                let _ = peer.send(event);
                            }
                        }
                    }
                }
            }
            Some(payload) = rx.recv() => {
                // Delivered only to the connection it is addressed to.
                if payload.get("to").map(|t| t.to_string()) == me && write(&mut wr, &payload).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(key) = me {
        let mut s = sessions.lock();
        // Only its own entry (a rejected duplicate never had one).
        if s.get(&key).is_some_and(|t| t.same_channel(&tx)) {
            s.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_split_off_a_stream() {
        let mut buf = b"{\"a\":1}{\"b\":2}\n{\"c\":".to_vec();
        let v = decode_all(&mut buf).unwrap();
        assert_eq!(
            v,
            [serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]
        );
        assert_eq!(buf, b"\n{\"c\":");
        buf.extend_from_slice(b"3}");
        assert_eq!(decode_all(&mut buf).unwrap(), [serde_json::json!({"c": 3})]);
        assert!(buf.is_empty());
        let mut bad = b"{\"a\" 1}".to_vec();
        assert!(decode_all(&mut bad).is_err());
    }
}
