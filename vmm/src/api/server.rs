//! The API server: HTTP/1.1 (hyper) over the VM's Unix socket, on a current-thread tokio
//! runtime of its own thread. Each connection's peer is checked (SO_PEERCRED: this user or
//! root; anyone else gets 403). `vmm.ping` and `vm.migration-progress` are answered here from
//! shared state; every other request goes to the [`RequestSink`] the server was started with
//! (the thread that owns the VM), which answers through a oneshot channel. The same runtime
//! hands SIGINT/SIGTERM/SIGHUP to the sink, so the owner stops the VM cleanly.

use std::convert::Infallible;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use super::fd_stream::{FdStream, ReceivedFds};
use super::request::{self, ApiRequest, ApiResponse, Method, Responder, MAX_BODY};
use super::types::VmmPing;
use crate::api::migration_status::MigrationStatus;

/// How long a client may take to send its request headers, and then its body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping server lets answers already decided reach their clients.
const RESPONSE_GRACE: Duration = Duration::from_secs(2);

/// What the features list of `vmm.ping` names.
pub(crate) const FEATURES: &[&str] = &[
    "kvm",
    "virtio-mmio",
    "virtio-blk",
    "virtio-net",
    "live-migration",
    "migration-tls",
    "migration-psk",
    "migration-connections",
    "migration-zstd",
    "migration-progress",
    "migration-cancel",
    "event-monitor",
    "fd-passing",
];

/// Who takes the requests the server does not answer itself, and the process's signals.
pub(crate) trait RequestSink: Send + Sync + 'static {
    /// An API request and where its answer goes; false once nobody takes requests.
    fn request(&self, request: ApiRequest, reply: Responder) -> bool;
    /// SIGINT, SIGTERM or SIGHUP reached the process; false once nobody listens.
    fn signal(&self, name: &'static str) -> bool;
}

struct Shared {
    sink: Arc<dyn RequestSink>,
    status: Arc<MigrationStatus>,
}

pub(crate) struct ApiServer {
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    pub(crate) fn start(
        listener: StdUnixListener,
        sink: impl RequestSink,
        status: Arc<MigrationStatus>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .on_thread_start(|| crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Api))
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Api);
                runtime.block_on(async move {
                    let listener = match UnixListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            log::error!("API socket: {e}");
                            return;
                        }
                    };
                    let sink: Arc<dyn RequestSink> = Arc::new(sink);
                    let shared = Arc::new(Shared {
                        sink: sink.clone(),
                        status,
                    });
                    let open = Arc::new(AtomicUsize::new(0));
                    tokio::select! {
                        _ = accept_loop(listener, shared, open.clone(), shutdown_rx.clone()) => {}
                        _ = forward_signals(sink) => {}
                        _ = wait_shutdown(shutdown_rx) => {}
                    }
                    // Connections finish the request they are answering, then close.
                    let deadline = tokio::time::Instant::now() + RESPONSE_GRACE;
                    while open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
            })?;
        Ok(ApiServer {
            shutdown,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn forward_signals(sink: Arc<dyn RequestSink>) {
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        log::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    loop {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        };
        if !sink.signal(name) {
            return;
        }
    }
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    open: Arc<AtomicUsize>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                open.fetch_add(1, Ordering::SeqCst);
                let (shared, open, shutdown) = (shared.clone(), open.clone(), shutdown.clone());
                tokio::spawn(async move {
                    serve_connection(stream, shared, shutdown).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) => {
                log::warn!("API socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A peer that is neither this user nor root gets 403 to every request.
    let refused = crate::unix_socket::check_peer(&stream).err().map(|e| {
        log::warn!("API socket: connection refused: {e}");
        format!("permission denied: {e}")
    });
    // Descriptors passed with a request (SCM_RIGHTS) are received with its bytes.
    let (stream, passed) = FdStream::new(stream);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let refused = refused.clone();
        let passed = passed.clone();
        async move {
            let what = format!("{} {}", req.method(), req.uri().path());
            let answer = match refused {
                Some(why) => {
                    // Whatever such a peer passed is closed.
                    drop(passed.lock().unwrap_or_else(|e| e.into_inner()).take());
                    ApiResponse::error(403, why)
                }
                None => answer(req, &shared, &passed).await,
            };
            log::debug!("API: {what} -> {}", answer.status);
            Ok::<_, Infallible>(to_http(answer))
        }
    });
    // Written as Cloud Hypervisor's server writes them, for the clients built for it (its
    // api_client crate: ch-remote, orchestrators): header names in title case (it looks for
    // "Content-Length: " exactly), and no reason phrase (see `to_http`).
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                log::debug!("API connection: {e}");
            }
            return;
        }
        _ = wait_shutdown(shutdown.clone()) => {}
    }
    // The VMM is stopping: finish the request in progress, if any, then close.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
    let _ = shutdown.changed().await;
}

async fn answer(
    req: hyper::Request<Incoming>,
    shared: &Shared,
    passed: &Mutex<ReceivedFds>,
) -> ApiResponse {
    let method = match *req.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::PUT => Method::Put,
        ref other => return ApiResponse::error(405, format!("method {other} is not used here")),
    };
    let path = req.uri().path().to_string();
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(REQUEST_TIMEOUT, body).await {
        Err(_) => return ApiResponse::error(408, "the request body did not arrive in time"),
        Ok(Err(e)) => return ApiResponse::error(413, format!("cannot read the request body: {e}")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // The body is in, so every descriptor sent with the request has arrived; a request that
    // fails from here on closes them.
    let (fds, overflowed) = passed.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut request = match request::parse(method, &path, &body) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    if let Err(answer) = request::give_fds(&mut request, fds, overflowed) {
        return answer;
    }
    match request {
        ApiRequest::VmmPing => ApiResponse::json(&VmmPing {
            build_version: format!("vmm {}", env!("CARGO_PKG_VERSION")),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
        }),
        ApiRequest::MigrationProgress => ApiResponse::json(&shared.status.snapshot()),
        other => {
            let (tx, rx) = oneshot::channel();
            if !shared.sink.request(other, tx) {
                return ApiResponse::error(503, "the VMM is shutting down");
            }
            rx.await
                .unwrap_or_else(|_| ApiResponse::error(503, "the VMM is shutting down"))
        }
    }
}

fn to_http(answer: ApiResponse) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder().status(answer.status);
    let body = match answer.body {
        Some(v) => {
            builder = builder.header("Content-Type", "application/json");
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        None => Bytes::new(),
    };
    // "HTTP/1.1 200 \r\n": Cloud Hypervisor's client takes everything up to the CR as the
    // status code, so a reason phrase ("200 OK") breaks it; RFC 9112 allows an empty one.
    builder = builder.extension(hyper::ext::ReasonPhrase::from_static(b""));
    builder.body(Full::new(body)).unwrap_or_else(|_| {
        let mut r = hyper::Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}
