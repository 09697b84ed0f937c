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
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
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

/// Whether a peer with `uid` may use our sockets: the same user, or root.
pub fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    uid == me || uid == 0
}

/// Checks the peer of a connected socket; the error says who it was.
pub fn check_peer(stream: &tokio::net::UnixStream) -> io::Result<()> {
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
