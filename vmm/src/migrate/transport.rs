//! Migration endpoints: `tcp:HOST:PORT` or `unix:PATH`, connected or listened on with tokio,
//! and secured with [`migration::channel`] before anything else crosses them.
//!
//! Concurrency: tokio, on the runtime of the migration that uses it (the multi-thread one of
//! `worker::migration_runtime`, at both ends). A destination keeps accepting
//! while handshakes run, each in its own task with a deadline, so an idle, garbled or
//! unauthenticated connection cannot keep the real source out.

use std::path::PathBuf;
use std::time::Duration;

use migration::channel::{self, Channel, DestinationSecurity, SourceSecurity, Transport};
use migration::deadline::Deadline;
use migration::protocol::{Acceptor, BoxFuture, Connector};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

/// Default for how long a read or write on a migration connection may make no progress.
pub(crate) const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an accepted connection has to complete its handshake and its first frame.
pub(crate) const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once (each a task and a socket: a few KiB). A connection beyond
/// them evicts the oldest one still unauthenticated, so idle connections kept open cannot keep
/// a real source out: the source's handshake takes milliseconds, a squatter's never ends.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 256;

/// A migration address that is not `tcp:HOST:PORT` or `unix:PATH`: the address and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("'{0}': {1}")]
pub(crate) struct EndpointError(String, &'static str);

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
}

impl Endpoint {
    pub(crate) fn parse(s: &str) -> Result<Self, EndpointError> {
        let bad = |why| EndpointError(s.to_string(), why);
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest.rsplit_once(':').ok_or(bad("expected tcp:HOST:PORT"))?;
            port.parse::<u16>().map_err(|_| bad("bad port"))?;
            if host.is_empty() {
                return Err(bad("missing host"));
            }
            Ok(Endpoint::Tcp(rest.to_string()))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("missing path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else {
            Err(bad("use tcp:HOST:PORT or unix:PATH"))
        }
    }

    /// The host part of a TCP endpoint (what a TLS certificate must name), without the
    /// brackets of an IPv6 address.
    pub(crate) fn host(&self) -> Option<&str> {
        match self {
            Endpoint::Tcp(addr) => addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')),
            Endpoint::Unix(_) => None,
        }
    }

    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, Endpoint::Tcp(_))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Sets a migration TCP socket up to notice a dead peer: no Nagle delay, keepalive probes
/// after 10 s of silence, and TCP_USER_TIMEOUT so data unacknowledged for `io_timeout` ends
/// the connection even while the kernel would still retransmit.
fn tune_tcp(s: &TcpStream, io_timeout: Duration) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let sock = socket2::SockRef::from(s);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(5))
            .with_retries(3),
    )?;
    // The kernel takes milliseconds in a c_int: clamp rather than wrap.
    sock.set_tcp_user_timeout(Some(io_timeout.min(Duration::from_millis(i32::MAX as u64))))
}

/// Connects to a destination, checking a Unix socket's owner (this user or root); every read
/// and write then has `io_timeout` to make progress.
pub(crate) async fn connect(
    ep: &Endpoint,
    io_timeout: Duration,
) -> std::io::Result<Box<dyn Transport>> {
    match ep {
        Endpoint::Tcp(addr) => {
            let s = tokio::time::timeout(io_timeout, TcpStream::connect(addr.as_str()))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the connection")
                })??;
            tune_tcp(&s, io_timeout)?;
            Ok(Box::new(Deadline::new(s, io_timeout)))
        }
        Endpoint::Unix(p) => {
            let s = UnixStream::connect(p).await?;
            crate::unix_socket::check_peer(&s)?;
            Ok(Box::new(Deadline::new(s, io_timeout)))
        }
    }
}

/// Connects and secures the connection as the source.
pub(crate) async fn connect_secured(
    ep: &Endpoint,
    security: &SourceSecurity,
    io_timeout: Duration,
) -> Result<Channel, migration::MigrationError> {
    let stream =
        connect(ep, io_timeout)
            .await
            .map_err(|source| migration::MigrationError::Connect {
                endpoint: ep.to_string(),
                source,
            })?;
    Ok(channel::secure_source(stream, security).await?)
}

/// Opens a migration's extra connections, secured like its first.
pub(crate) struct EndpointConnector {
    pub(crate) endpoint: Endpoint,
    pub(crate) security: SourceSecurity,
    pub(crate) io_timeout: Duration,
}

impl Connector for EndpointConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Channel, migration::MigrationError>> {
        Box::pin(connect_secured(
            &self.endpoint,
            &self.security,
            self.io_timeout,
        ))
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    async fn bind(ep: &Endpoint) -> std::io::Result<(Self, String)> {
        match ep {
            Endpoint::Tcp(addr) => {
                let l = TcpListener::bind(addr.as_str()).await?;
                let shown = l.local_addr()?.to_string();
                Ok((Listener::Tcp(l), shown))
            }
            Endpoint::Unix(p) => {
                let std_listener = crate::unix_socket::bind_private(p)?;
                std_listener.set_nonblocking(true)?;
                let l = UnixListener::from_std(std_listener)?;
                Ok((Listener::Unix(l, p.clone()), p.display().to_string()))
            }
        }
    }

    /// The next connection and who it is from; a Unix peer of another user is refused here.
    async fn accept(&self, io_timeout: Duration) -> std::io::Result<(Box<dyn Transport>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                tune_tcp(&s, io_timeout)?;
                Ok((Box::new(Deadline::new(s, io_timeout)), peer.to_string()))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                let who = format!("a local process on {}", path.display());
                if let Err(e) = crate::unix_socket::check_peer(&s) {
                    return Err(std::io::Error::new(e.kind(), format!("{who}: {e}")));
                }
                Ok((Box::new(Deadline::new(s, io_timeout)), who))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A finished handshake: who from, and its outcome (or its deadline passing).
type Handshake = (
    String,
    Result<Result<Channel, channel::ChannelError>, tokio::time::error::Elapsed>,
);

/// A destination's listener: every connection gets [`PRE_AUTH_TIMEOUT`] to complete the
/// handshake of `security`, at most [`MAX_PENDING_HANDSHAKES`] at once; connections that fail
/// (wrong key or certificate, another mode, garbage, silence) are logged and closed, and the
/// listener goes on. It stays open for a migration's extra connections.
pub(crate) struct MigrationListener {
    listener: Listener,
    security: DestinationSecurity,
    io_timeout: Duration,
    handshakes: JoinSet<Handshake>,
    /// The pending handshakes, oldest first, to evict from.
    pending: std::collections::VecDeque<tokio::task::AbortHandle>,
}

impl MigrationListener {
    /// Binds `ep`; `listening` is told the address.
    pub(crate) async fn bind(
        ep: &Endpoint,
        security: DestinationSecurity,
        io_timeout: Duration,
        listening: impl FnOnce(&str),
    ) -> std::io::Result<Self> {
        let (listener, shown) = Listener::bind(ep).await?;
        listening(&shown);
        Ok(MigrationListener {
            listener,
            security,
            io_timeout,
            handshakes: JoinSet::new(),
            pending: std::collections::VecDeque::new(),
        })
    }

    /// The next connection that completes the handshake, and who it is from.
    pub(crate) async fn next(&mut self) -> std::io::Result<(Channel, String)> {
        loop {
            tokio::select! {
                accepted = self.listener.accept(self.io_timeout) => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                            log::warn!("migration connection refused: {e}");
                            continue;
                        }
                        Err(e) => {
                            log::warn!("accepting a migration connection failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    self.pending.retain(|h| !h.is_finished());
                    if self.pending.len() >= MAX_PENDING_HANDSHAKES {
                        if let Some(oldest) = self.pending.pop_front() {
                            log::warn!("{MAX_PENDING_HANDSHAKES} migration handshakes pending: the oldest is closed for the connection from {peer}");
                            oldest.abort();
                        }
                    }
                    let security = self.security.clone();
                    let handle = self.handshakes.spawn(async move {
                        let r = tokio::time::timeout(PRE_AUTH_TIMEOUT, authenticate(stream, &security)).await;
                        (peer, r)
                    });
                    self.pending.push_back(handle);
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok((peer, Ok(Ok(ch)))) => {
                            log::info!("migration source {peer} authenticated");
                            return Ok((ch, peer));
                        }
                        Ok((peer, Ok(Err(e)))) => {
                            log::warn!("migration connection from {peer} refused: {}", crate::error_chain(&e));
                        }
                        Ok((peer, Err(_))) => {
                            log::warn!("migration connection from {peer} closed: no handshake within {} s", PRE_AUTH_TIMEOUT.as_secs());
                        }
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => log::warn!("a migration handshake task failed: {e}"),
                    }
                }
            }
        }
    }
}

/// Secures an accepted connection and reads its first frame: only a frame that decrypts with
/// this session's keys proves the peer holds the key now. (With a pre-shared key the
/// handshake's first message can be replayed from a recording, and the handshake then
/// "completes" here; the replayed records after it do not decrypt, so such a connection is
/// refused here, on its own, and the listener keeps waiting.) The frame is put back for
/// the receiver.
async fn authenticate(
    stream: Box<dyn Transport>,
    security: &DestinationSecurity,
) -> Result<Channel, channel::ChannelError> {
    let mut ch = channel::secure_destination(stream, security).await?;
    let (kind, payload) = match ch.reader.recv().await {
        Ok(f) => (f.kind, f.payload.to_vec()),
        Err(e) => {
            return Err(channel::ChannelError::Handshake(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "its first frame did not decrypt with this session's keys ({}): a replayed recording or a wrong key",
                    migration::error_chain(&e)
                ),
            )))
        }
    };
    ch.reader.push_back(kind, payload);
    Ok(ch)
}

impl Acceptor for MigrationListener {
    fn accept(&mut self) -> BoxFuture<'_, Result<Channel, migration::MigrationError>> {
        Box::pin(async move {
            let (ch, peer) =
                self.next()
                    .await
                    .map_err(|source| migration::MigrationError::Connect {
                        endpoint: "the migration listener".into(),
                        source,
                    })?;
            log::info!("extra migration connection from {peer}");
            Ok(ch)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("tcp:host2:4444").unwrap(),
            Endpoint::Tcp("host2:4444".into())
        );
        assert_eq!(
            Endpoint::parse("unix:/run/m.sock").unwrap(),
            Endpoint::Unix("/run/m.sock".into())
        );
        for bad in [
            "host:1",
            "tcp:host",
            "tcp::1",
            "tcp:h:99999",
            "unix:",
            "udp:x:1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Endpoint::parse("tcp:host2:4444").unwrap().host(),
            Some("host2")
        );
        assert_eq!(
            Endpoint::parse("tcp:[::1]:4444").unwrap().host(),
            Some("::1")
        );
    }
}
