//! The control socket server: a tokio runtime on its own thread accepts connections (from this
//! user or root only: the peer's credentials are checked on each), parses
//! requests and hands them to the VM's owner thread, which answers through a oneshot channel.
//! The same runtime turns SIGINT/SIGTERM/SIGHUP into events, so the owner stops the VM cleanly.

use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::protocol::{Request, Response};
use crate::events::VmEvent;

/// Longest request line accepted; anything longer is a client error.
const MAX_REQUEST_LEN: usize = 64 * 1024;
/// How long a stopping server waits for answers still being written.
const RESPONSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct ControlServer {
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    pub fn start(listener: StdUnixListener, events: Sender<VmEvent>) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match UnixListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            log::error!("control socket: {e}");
                            return;
                        }
                    };
                    let pending = Arc::new(AtomicUsize::new(0));
                    tokio::select! {
                        _ = accept_loop(listener, events.clone(), pending.clone()) => {}
                        _ = forward_signals(events) => {}
                        _ = wait_shutdown(shutdown_rx) => {}
                    }
                    // Let answers already decided (a "stop" among them) reach their clients.
                    let deadline = tokio::time::Instant::now() + RESPONSE_GRACE;
                    while pending.load(Ordering::SeqCst) > 0
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                });
            })?;
        Ok(ControlServer {
            shutdown,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
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

async fn forward_signals(events: Sender<VmEvent>) {
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
        if events.send(VmEvent::Signal(name)).is_err() {
            return;
        }
    }
}

async fn accept_loop(listener: UnixListener, events: Sender<VmEvent>, pending: Arc<AtomicUsize>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, events.clone(), pending.clone()));
            }
            Err(e) => {
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, events: Sender<VmEvent>, pending: Arc<AtomicUsize>) {
    if let Err(e) = crate::unix_socket::check_peer(&stream) {
        log::warn!("control socket: connection refused: {e}");
        // Take the request line (bounded in size and time) before answering, so the client
        // reads the refusal rather than a reset.
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            BufReader::new(reader)
                .take(MAX_REQUEST_LEN as u64)
                .read_line(&mut line),
        )
        .await;
        let mut out = serde_json::to_vec(&Response::error(format!("permission denied: {e}")))
            .expect("responses serialise");
        out.push(b'\n');
        let _ = writer.write_all(&out).await;
        return;
    }
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_REQUEST_LEN as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        pending.fetch_add(1, Ordering::SeqCst);
        let mut answers = if line.len() > MAX_REQUEST_LEN {
            single(Response::error("request too long"))
        } else {
            match serde_json::from_str::<Request>(line.trim()) {
                Ok(request) => dispatch(request, &events),
                Err(e) => single(Response::error(format!("bad request: {e}"))),
            }
        };
        let mut written = true;
        loop {
            let response = answers
                .recv()
                .await
                .unwrap_or_else(|| Response::error("the VM is shutting down"));
            let mut out = serde_json::to_vec(&response).expect("responses serialise");
            out.push(b'\n');
            // A client that went away does not stop the request (a migration runs on).
            if written {
                written = writer.write_all(&out).await.is_ok();
            }
            if response.is_final() {
                break;
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
        if !written || line.len() > MAX_REQUEST_LEN {
            return;
        }
    }
}

fn dispatch(request: Request, events: &Sender<VmEvent>) -> mpsc::UnboundedReceiver<Response> {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Err(std::sync::mpsc::SendError(VmEvent::Control(_, tx))) =
        events.send(VmEvent::Control(request, tx))
    {
        let _ = tx.send(Response::error("the VM is shutting down"));
    }
    rx
}

fn single(r: Response) -> mpsc::UnboundedReceiver<Response> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(r);
    rx
}
