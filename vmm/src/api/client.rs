//! A blocking client of a VM's API socket (hyper on a current-thread runtime), used by the CLI
//! subcommands: one request per connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::request::{Method, API_PREFIX};
use super::types::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("no VM named '{name}' is running (no API socket at {path})")]
    NotRunning { name: String, path: PathBuf },
    #[error("cannot talk to the VM at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM at {path} did not answer within {seconds} s")]
    TimedOut { path: PathBuf, seconds: u64 },
    #[error("the VM at {path} answered something unreadable: {detail}")]
    BadResponse { path: PathBuf, detail: String },
    /// The VMM answered with an error status; the message is its own.
    #[error("{message}")]
    Refused { status: u16, message: String },
}

/// One API socket and the name of its VM (for messages).
pub(crate) struct ApiClient {
    pub(crate) socket: PathBuf,
    pub(crate) name: String,
}

impl ApiClient {
    pub(crate) fn new(socket: &Path, name: &str) -> Self {
        ApiClient {
            socket: socket.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// Sends `PUT endpoint` with an optional JSON body; a 2xx answer's body (if any) is returned.
    pub(crate) fn put(
        &self,
        endpoint: &str,
        body: Option<&impl serde::Serialize>,
        timeout: Duration,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| self.bad(e.to_string()))?;
        self.call(Method::Put, endpoint, body, timeout)
    }

    /// Sends `GET endpoint` and decodes the JSON answer.
    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let value = self
            .call(Method::Get, endpoint, None, timeout)?
            .ok_or_else(|| self.bad("an empty answer".into()))?;
        serde_json::from_value(value).map_err(|e| self.bad(e.to_string()))
    }

    fn bad(&self, detail: String) -> ClientError {
        ClientError::BadResponse {
            path: self.socket.clone(),
            detail,
        }
    }

    /// Sends any request; a 2xx answer's body (if any) is returned.
    pub(crate) fn call(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        let io = |source| ClientError::Io {
            path: self.socket.clone(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io)?;
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning {
                            name: self.name.clone(),
                            path: self.socket.clone(),
                        }
                    }
                    _ => io(e),
                })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.bad(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut request = hyper::Request::builder()
                .method(match method {
                    Method::Get => hyper::Method::GET,
                    Method::Put => hyper::Method::PUT,
                })
                .uri(format!("http://localhost{API_PREFIX}{endpoint}"))
                .header("Host", "localhost");
            if body.is_some() {
                request = request.header("Content-Type", "application/json");
            }
            let request = request
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| self.bad(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.bad(e.to_string()))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.bad(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = runtime
            .block_on(async { tokio::time::timeout(timeout, exchange).await })
            .map_err(|_| ClientError::TimedOut {
                path: self.socket.clone(),
                seconds: timeout.as_secs(),
            })??;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.message())
                .unwrap_or_else(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)));
            return Err(ClientError::Refused { status, message });
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.bad(e.to_string()))
    }
}
