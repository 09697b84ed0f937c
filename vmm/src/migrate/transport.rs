//! Migration endpoints: `tcp:HOST:PORT` or `unix:PATH`, connected or listened on with tokio.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("'{s}': expected tcp:HOST:PORT"))?;
            port.parse::<u16>()
                .map_err(|_| format!("'{s}': bad port '{port}'"))?;
            if host.is_empty() {
                return Err(format!("'{s}': missing host"));
            }
            Ok(Endpoint::Tcp(rest.to_string()))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("'{s}': missing path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else {
            Err(format!("'{s}': use tcp:HOST:PORT or unix:PATH"))
        }
    }

    /// Whether only this machine can reach a listener here.
    pub fn is_local_only(&self) -> bool {
        match self {
            Endpoint::Unix(_) => true,
            Endpoint::Tcp(addr) => addr
                .to_socket_addrs()
                .map(|mut it| it.all(|a: SocketAddr| is_loopback(a.ip())))
                .unwrap_or(false),
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected migration stream of either kind.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub async fn connect(ep: &Endpoint) -> std::io::Result<Stream> {
    match ep {
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(addr.as_str()).await?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        Endpoint::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p).await?)),
    }
}

/// Listens and accepts exactly one connection.
pub async fn accept_one(ep: &Endpoint, listening: impl FnOnce(&str)) -> std::io::Result<Stream> {
    match ep {
        Endpoint::Tcp(addr) => {
            let l = TcpListener::bind(addr.as_str()).await?;
            listening(&l.local_addr()?.to_string());
            let (s, peer) = l.accept().await?;
            log::info!("migration connection from {peer}");
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        Endpoint::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p)?;
            listening(&p.display().to_string());
            let (s, _) = l.accept().await?;
            let _ = std::fs::remove_file(p);
            Ok(Stream::Unix(s))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
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
        assert!(Endpoint::parse("tcp:127.0.0.1:4444")
            .unwrap()
            .is_local_only());
        assert!(!Endpoint::parse("tcp:0.0.0.0:4444").unwrap().is_local_only());
        assert!(Endpoint::parse("unix:/x").unwrap().is_local_only());
    }
}
