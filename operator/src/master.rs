//! The operator's client of a masters' HTTP API (types in `murmuration_crds::api`): one
//! pool of keep-alive connections ([`MasterPool`]) shared by every test, so that the
//! 250 ms follow-up polls of a starting test do not open a connection each.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use murmuration_crds::api::{self, MasterStatus};

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unused connection to a master is kept.
const IDLE: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// Not reachable (yet).
    #[error("cannot reach the master at {0}: {1}")]
    Unreachable(String, String),
    /// It answered with an error.
    #[error("the master answered {status} to {what}: {body}")]
    Refused {
        /// The call.
        what: String,
        /// The HTTP status.
        status: StatusCode,
        /// Its explanation.
        body: String,
    },
    /// Its answer does not parse.
    #[error("the master's answer to {0} does not parse: {1}")]
    Garbled(String, #[source] serde_json::Error),
}

/// The connections to every master (HTTP/1.1 keep-alive), shared by all tests; cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct MasterPool {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for MasterPool {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        connector.set_nodelay(true);
        MasterPool {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE)
                .pool_max_idle_per_host(2)
                .build(connector),
        }
    }
}

impl MasterPool {
    /// A client of the master at `host:port`, with the test's token.
    pub fn master(&self, authority: impl Into<String>, token: impl Into<String>) -> MasterClient {
        MasterClient {
            pool: self.clone(),
            authority: authority.into(),
            token: token.into(),
        }
    }
}

/// A master, by address and token, reached through a [`MasterPool`].
#[derive(Debug, Clone)]
pub struct MasterClient {
    pool: MasterPool,
    authority: String,
    token: String,
}

impl MasterClient {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, MasterError> {
        let what = format!("{method} {path}");
        let unreachable = |e: String| MasterError::Unreachable(self.authority.clone(), e);
        let exchange = async {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.authority))
                .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| unreachable(e.to_string()))?;
            let resp = self
                .pool
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(MasterError::Refused {
                    what: what.clone(),
                    status,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
            Ok(bytes)
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT:?}")))?
    }

    async fn json<T: serde::Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &T,
    ) -> Result<MasterStatus, MasterError> {
        let bytes = self
            .call(
                method.clone(),
                path,
                Some(serde_json::to_vec(body).unwrap_or_default()),
            )
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| MasterError::Garbled(format!("{method} {path}"), e))
    }

    /// The test's status.
    pub async fn status(&self) -> Result<MasterStatus, MasterError> {
        let bytes = self.call(Method::GET, api::STATUS, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| MasterError::Garbled(api::STATUS.into(), e))
    }

    /// Sets the desired users.
    pub async fn set_users(&self, users: u64) -> Result<MasterStatus, MasterError> {
        self.json(Method::PUT, api::USERS, &api::SetUsers { users })
            .await
    }

    /// Sets the agents expected.
    pub async fn set_agents(&self, agents: u64) -> Result<MasterStatus, MasterError> {
        self.json(Method::PUT, api::AGENTS, &api::SetAgents { agents })
            .await
    }

    /// Replaces the scenario variables.
    pub async fn set_vars(
        &self,
        vars: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<MasterStatus, MasterError> {
        self.json(Method::PUT, api::VARS, &api::SetVars { vars: vars.clone() })
            .await
    }

    /// Creates or updates a throttle.
    pub async fn put_throttle(
        &self,
        name: &str,
        spec: &murmuration_crds::ThrottleSpec,
    ) -> Result<MasterStatus, MasterError> {
        self.json(Method::PUT, &format!("{}/{name}", api::THROTTLES), spec)
            .await
    }

    /// Deletes a throttle.
    pub async fn delete_throttle(&self, name: &str) -> Result<(), MasterError> {
        self.call(Method::DELETE, &format!("{}/{name}", api::THROTTLES), None)
            .await
            .map(|_| ())
    }

    /// Creates or updates a coordinator.
    pub async fn put_coordinator(
        &self,
        name: &str,
        spec: &murmuration_crds::CoordinatorSpec,
    ) -> Result<MasterStatus, MasterError> {
        self.json(Method::PUT, &format!("{}/{name}", api::COORDINATORS), spec)
            .await
    }

    /// Deletes a coordinator.
    pub async fn delete_coordinator(&self, name: &str) -> Result<(), MasterError> {
        self.call(
            Method::DELETE,
            &format!("{}/{name}", api::COORDINATORS),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Stops the test: users finish their iteration, or are aborted when `forced`.
    pub async fn stop(&self, forced: bool) -> Result<MasterStatus, MasterError> {
        self.json(Method::POST, api::STOP, &api::Stop { forced })
            .await
    }

    /// The report (JSON), its series downsampled to at most `max_points`.
    pub async fn report(&self, max_points: usize) -> Result<Bytes, MasterError> {
        self.call(
            Method::GET,
            &format!("{}?maxPoints={max_points}", api::REPORT),
            None,
        )
        .await
    }
}

/// An error with its causes ("client error (Connect): tcp connect error: Connection
/// refused"): the pooled client's own message says little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pool, many calls: the master sees one connection, not one per call.
    #[tokio::test]
    async fn calls_share_a_kept_alive_connection() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let master = MasterPool::default().master(addr.to_string(), "token");
        for _ in 0..5 {
            let body = master.call(Method::GET, api::STATUS, None).await.unwrap();
            assert_eq!(&body[..], b"{}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
