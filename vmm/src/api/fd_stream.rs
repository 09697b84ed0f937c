//! The API connection's stream: a tokio Unix stream read with `recvmsg`, so that file
//! descriptors a client passes with its request (SCM_RIGHTS, as Cloud Hypervisor's clients
//! pass tap devices) are received with the bytes, instead of being discarded by a plain
//! `read`. They are kept, owned (close-on-exec), in a queue the connection's request handler
//! empties for each request; whatever no request takes is closed. At most [`MAX_HELD`] are
//! held per connection: more are closed at once, and the request that wanted them fails.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// Descriptors held for one connection at a time; also the most one message may carry.
pub(crate) const MAX_HELD: usize = 16;

/// What a connection received and no request has taken yet.
#[derive(Default)]
pub(crate) struct ReceivedFds {
    queue: VecDeque<OwnedFd>,
    /// Descriptors that arrived past the limit (closed): the next request is refused.
    overflowed: usize,
}

impl ReceivedFds {
    /// Everything received so far, and how many were closed for lack of room.
    pub(crate) fn take(&mut self) -> (Vec<OwnedFd>, usize) {
        (
            self.queue.drain(..).collect(),
            std::mem::take(&mut self.overflowed),
        )
    }
}

pub(crate) struct FdStream {
    inner: UnixStream,
    fds: Arc<Mutex<ReceivedFds>>,
}

impl FdStream {
    pub(crate) fn new(inner: UnixStream) -> (Self, Arc<Mutex<ReceivedFds>>) {
        let fds = Arc::new(Mutex::new(ReceivedFds::default()));
        (
            FdStream {
                inner,
                fds: fds.clone(),
            },
            fds,
        )
    }
}

/// One `recvmsg` into `buf`, keeping the descriptors that come with it.
fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &Mutex<ReceivedFds>) -> io::Result<usize> {
    // The control buffer, aligned for cmsghdr, with room for MAX_HELD descriptors.
    let mut control = [0u64; 16 + MAX_HELD / 2];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = (unsafe { libc::CMSG_SPACE((MAX_HELD * 4) as u32) } as usize)
        .min(std::mem::size_of_val(&control));
    // SAFETY: `msg` points at `iov` (our live buffer) and `control` (our live control
    // buffer), both valid for the lengths given, for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = Vec::new();
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer recvmsg filled, within the
    // msg_controllen it reported; each header is read only after the macros bound-check it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    // Each descriptor is new in this process and owned by nobody else.
                    received.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    if !received.is_empty() || truncated {
        let mut held = fds.lock().unwrap_or_else(|e| e.into_inner());
        if truncated {
            // The kernel closed what did not fit.
            held.overflowed += 1;
        }
        for fd in received {
            if held.queue.len() < MAX_HELD {
                held.queue.push_back(fd);
            } else {
                held.overflowed += 1;
            }
        }
    }
    Ok(n as usize)
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            match this.inner.try_io(Interest::READABLE, || {
                recv_with_fds(fd, unfilled, &this.fds)
            }) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was cleared by try_io: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn send_with_fds(sock: &std::os::unix::net::UnixStream, data: &[u8], fds: &[RawFd]) {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let mut control = [0u64; 64];
        // SAFETY: zeroed msghdr; pointers set below to live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: size computations and writes within `control`, which is large enough.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE((fds.len() * 4) as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
            assert!(libc::sendmsg(sock.as_raw_fd(), &msg, 0) >= 0);
        }
    }

    #[tokio::test]
    async fn descriptors_arrive_with_the_bytes_and_past_the_limit_are_closed() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let (mut stream, held) = FdStream::new(UnixStream::from_std(theirs).unwrap());
        let files: Vec<std::fs::File> = (0..MAX_HELD + 2)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send_with_fds(&ours, b"GET /", &raw[..2]);
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET /");
        let (fds, overflowed) = held.lock().unwrap().take();
        assert_eq!((fds.len(), overflowed), (2, 0));
        // More than the limit in one message: the control buffer truncates; none is leaked.
        send_with_fds(&ours, b"x", &raw);
        let mut one = [0u8; 1];
        stream.read_exact(&mut one).await.unwrap();
        let (fds, overflowed) = held.lock().unwrap().take();
        assert!(
            fds.len() <= MAX_HELD && overflowed > 0,
            "{} {overflowed}",
            fds.len()
        );
    }
}
