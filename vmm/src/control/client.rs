//! A blocking client of a VM's control socket, used by the CLI subcommands.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no VM named '{name}' is running (no control socket at {path})")]
    NotRunning { name: String, path: PathBuf },
    #[error("cannot talk to the VM at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM at {path} answered something unreadable: {detail}")]
    BadResponse { path: PathBuf, detail: String },
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the response; a response with ok=false becomes `Refused`.
pub fn request(
    socket: &Path,
    name: &str,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    request_streaming(socket, name, req, timeout, |_| {})
}

/// Like [`request`], passing intermediate lines (progress) to `on_progress`; `timeout` bounds
/// the wait for each line.
pub fn request_streaming(
    socket: &Path,
    name: &str,
    req: &Request,
    timeout: Duration,
    mut on_progress: impl FnMut(&Response),
) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning {
                name: name.to_string(),
                path: socket.to_path_buf(),
            }
        }
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(&stream);
    let response = loop {
        let mut answer = String::new();
        reader.read_line(&mut answer).map_err(io)?;
        let response: Response =
            serde_json::from_str(answer.trim()).map_err(|e| ClientError::BadResponse {
                path: socket.to_path_buf(),
                detail: if answer.is_empty() {
                    "connection closed".into()
                } else {
                    e.to_string()
                },
            })?;
        if response.is_final() {
            break response;
        }
        on_progress(&response);
    };
    if !response.ok {
        return Err(ClientError::Refused(
            response.error.unwrap_or_else(|| "request refused".into()),
        ));
    }
    Ok(response)
}
