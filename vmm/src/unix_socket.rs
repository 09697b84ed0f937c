//! Unix sockets that only their owner can use (docs/design.md section 7): created mode
//! 0600 without a moment of wider access, and a peer check on every connection (SO_PEERCRED:
//! the same uid as this process, or root).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Whether whatever is at `path` may be replaced by a new socket: nothing, or a stale socket
/// of ours (a socket file owned by this user that nobody listens on). Anything else, a regular
/// file (a typo like `unix:/etc/hosts`), a directory, a symbolic link, another user's socket,
/// a socket something still answers on, is refused and left alone.
fn check_replaceable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and {why}; it is left alone", path.display()),
        ))
    };
    if !meta.file_type().is_socket() {
        return refuse("is not a socket");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if meta.uid() != unsafe { libc::geteuid() } {
        return refuse("is another user's socket");
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return refuse("is a socket in use (a process answers on it)");
    }
    Ok(())
}

/// Binds a listening socket at `path`, mode 0600. The socket is made in a fresh 0700
/// directory beside `path` and renamed into place, so no other user can reach it while its
/// mode is still the default; only a stale socket of ours at `path` is replaced (see
/// [`check_replaceable`]).
pub(crate) fn bind_private(path: &Path) -> io::Result<UnixListener> {
    check_replaceable(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a socket path needs a file name",
        )
    })?;
    let staging = parent.join(format!(
        ".{}.{}.bind",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover of a crashed process with our pid; remove_dir_all does not follow a symlink.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = (|| {
        let tmp = staging.join("s");
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Where a VMM serves its API, as Cloud Hypervisor's `--api-socket` spells it: `path=P` (or a
/// bare path) is a socket this process binds ([`bind_private`]) and removes on exit; `fd=N` is
/// a socket the caller created, bound and listens on (libvirt's ch driver starts the VMM so),
/// inherited as descriptor N and never unlinked by us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiSocketAddr {
    Path(std::path::PathBuf),
    Fd(std::os::fd::RawFd),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiSocketError {
    #[error("--api-socket takes path=PATH, fd=N or PATH, not '{0}'")]
    Syntax(String),
    #[error("--api-socket fd={0}: {1}")]
    BadFd(std::os::fd::RawFd, &'static str),
    #[error("--api-socket fd={0}")]
    Query(std::os::fd::RawFd, #[source] io::Error),
}

impl std::str::FromStr for ApiSocketAddr {
    type Err = ApiSocketError;

    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        let syntax = || ApiSocketError::Syntax(arg.to_string());
        if let Some(n) = arg.strip_prefix("fd=") {
            // 0, 1 and 2 are the console's; a descriptor number is never negative.
            let fd = n.parse().ok().filter(|fd| *fd > 2).ok_or_else(syntax)?;
            return Ok(ApiSocketAddr::Fd(fd));
        }
        let path = arg.strip_prefix("path=").unwrap_or(arg);
        if path.is_empty() || path.contains(',') {
            return Err(syntax());
        }
        Ok(ApiSocketAddr::Path(path.into()))
    }
}

impl std::fmt::Display for ApiSocketAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiSocketAddr::Path(p) => write!(f, "{}", p.display()),
            ApiSocketAddr::Fd(fd) => write!(f, "fd={fd}"),
        }
    }
}

/// Takes over the listening socket inherited as `fd`, after checking that it is one: an open
/// descriptor of a Unix stream socket in the listening state (anything else, a file, a
/// connected socket, a datagram socket, is refused and left open). It is made close-on-exec.
pub(crate) fn inherited_listener(fd: std::os::fd::RawFd) -> Result<UnixListener, ApiSocketError> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only reads the descriptor's flags; it tells whether `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ApiSocketError::BadFd(fd, "not an open file descriptor"));
    }
    let int_opt = |name: libc::c_int| -> Result<libc::c_int, ApiSocketError> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, a live c_int; on a
        // descriptor that is not a socket it fails with ENOTSOCK and writes nothing.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(value)
        } else {
            match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ENOTSOCK) => {
                    Err(ApiSocketError::BadFd(fd, "not a socket"))
                }
                e => Err(ApiSocketError::Query(fd, e)),
            }
        }
    };
    if int_opt(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(ApiSocketError::BadFd(fd, "not a Unix socket"));
    }
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(ApiSocketError::BadFd(fd, "not a stream socket"));
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(ApiSocketError::BadFd(
            fd,
            "not listening (bind and listen before starting the VMM)",
        ));
    }
    // SAFETY: F_SETFD on an open descriptor (checked above) sets only its close-on-exec flag.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: `fd` is an open, listening Unix stream socket (checked above) that was handed to
    // this process for its API: nothing else here uses or closes it, so the listener owns it.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

/// Whether a peer with `uid` may use our sockets: the same user, or root.
pub(crate) fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    uid == me || uid == 0
}

/// The uid of the process at the other end of a connected Unix socket (SO_PEERCRED).
pub(crate) fn peer_uid(stream: &impl std::os::fd::AsRawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, a ucred we own, for a
    // socket descriptor the caller keeps open across the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Checks the peer of a connected socket; the error says who it was.
pub(crate) fn check_peer(stream: &tokio::net::UnixStream) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    if peer_allowed(cred.uid()) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "the peer runs as uid {} (pid {}); only this user or root may use this socket",
            cred.uid(),
            cred.pid().map_or("?".into(), |p| p.to_string())
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn api_socket_addresses_parse_as_cloud_hypervisor_spells_them() {
        let p = |s: &str| s.parse::<ApiSocketAddr>();
        assert_eq!(p("fd=3").unwrap(), ApiSocketAddr::Fd(3));
        assert_eq!(
            p("path=/run/a.sock").unwrap(),
            ApiSocketAddr::Path("/run/a.sock".into())
        );
        assert_eq!(
            p("/run/a.sock").unwrap(),
            ApiSocketAddr::Path("/run/a.sock".into())
        );
        for bad in ["fd=", "fd=x", "fd=-1", "fd=2", "path=", "", "path=/a,fd=3"] {
            assert!(p(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_private_socket_is_0600_and_replaces_only_a_stale_socket_of_ours() {
        let dir = std::env::temp_dir().join(format!("vmm-sock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.sock");
        // A regular file (a typo like unix:/etc/hosts) is never clobbered.
        std::fs::write(&path, b"not a socket").unwrap();
        let err = bind_private(&path).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_file(&path).unwrap();
        // A socket something answers on is in use; once nobody listens it is stale.
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = bind_private(&path).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(live);
        let _l = bind_private(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no staging left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(peer_allowed(0));
    }
}
