//! Unix sockets that only their owner can use (DESIGN.md section 7, point 2): created mode
//! 0600 without a moment of wider access, and a peer check on every connection (SO_PEERCRED:
//! the same uid as this process, or root).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds a listening socket at `path`, mode 0600. The socket is made in a fresh 0700
/// directory beside `path` and renamed into place, so no other user can reach it while its
/// mode is still the default; a file already at `path` (a stale socket) is replaced.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
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
    fn a_private_socket_is_0600_and_replaces_a_stale_one() {
        let dir = std::env::temp_dir().join(format!("vmm-sock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.sock");
        std::fs::write(&path, b"stale").unwrap();
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
