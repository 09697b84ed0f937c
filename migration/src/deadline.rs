//! A stream whose every read and write must make progress within a deadline (docs/design.md
//! section 7): a peer that stops reading, stops sending, or vanishes without a reset
//! turns into an error after `idle`, instead of a migration that waits forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What a stalled operation fails with, inside an `io::Error` of kind `TimedOut`.
#[derive(Debug, thiserror::Error)]
#[error("the peer made no progress for {0} s ({1})")]
pub(crate) struct Stalled(pub u64, pub &'static str);

pub struct Deadline<S> {
    inner: S,
    idle: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadline<S> {
    pub fn new(inner: S, idle: Duration) -> Self {
        Deadline {
            inner,
            idle,
            read_timer: None,
            write_timer: None,
        }
    }
}

/// Turns a pending operation into a timeout once its timer has run out; progress clears it.
fn check<T>(
    polled: Poll<io::Result<T>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    idle: Duration,
    what: &'static str,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    match polled {
        Poll::Ready(r) => {
            *timer = None;
            Poll::Ready(r)
        }
        Poll::Pending => {
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            match t.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *timer = None;
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        Stalled(idle.as_secs(), what),
                    )))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

use std::future::Future;

impl<S: AsyncRead + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        check(
            polled,
            &mut this.read_timer,
            this.idle,
            "nothing received",
            cx,
        )
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        check(
            polled,
            &mut this.write_timer,
            this.idle,
            "it does not take what is sent",
            cx,
        )
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        check(
            polled,
            &mut this.write_timer,
            this.idle,
            "it does not take what is sent",
            cx,
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        check(
            polled,
            &mut this.write_timer,
            this.idle,
            "it does not take what is sent",
            cx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_stuck_peer_times_out_and_progress_does_not() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut a = Deadline::new(a, Duration::from_secs(5));
        b.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        a.read_exact(&mut buf).await.unwrap();
        let e = a.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("no progress for 5 s"), "{e}");
        // Writes into a pipe nobody drains: 16 bytes fit, then the deadline.
        let e = a.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
