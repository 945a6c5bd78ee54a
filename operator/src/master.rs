//! The operator's client of a master's HTTP API (types in `murmuration_crds::api`).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use murmuration_crds::api::{self, MasterStatus};

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A master, by address and token.
#[derive(Debug, Clone)]
pub struct MasterClient {
    authority: String,
    token: String,
}

impl MasterClient {
    /// A client of the master at `host:port`.
    pub fn new(authority: impl Into<String>, token: impl Into<String>) -> MasterClient {
        MasterClient {
            authority: authority.into(),
            token: token.into(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, MasterError> {
        let what = format!("{method} {path}");
        let unreachable = |e: String| MasterError::Unreachable(self.authority.clone(), e);
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.authority)
                .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .expect("valid request parts");
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
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
