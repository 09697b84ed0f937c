//! Where a VM's API socket and lock live, and the lock that keeps two VMs of one name
//! in one runtime directory apart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum PathsError {
    #[error("cannot create the runtime directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("the runtime directory {dir} {why}: refusing to put API sockets and locks there (use --runtime-dir DIR, or fix its owner and mode)")]
    UnsafeDir { dir: PathBuf, why: String },
    #[error("a VM named '{name}' is already running in {dir} (pid {pid}); choose another --name or stop it with `vmm stop {name}`")]
    NameTaken {
        name: String,
        dir: PathBuf,
        pid: String,
    },
}

/// `$VMM_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/vmm`, else `/run/vmm`.
pub(crate) fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VMM_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("vmm");
    }
    PathBuf::from("/run/vmm")
}

pub(crate) fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

fn lock_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

/// Held for the life of a VM: an exclusive flock on `<dir>/<name>.lock` holding our pid.
pub(crate) struct NameLock {
    _file: File,
    path: PathBuf,
}

/// Creates the runtime directory (mode 0700) if needed, and refuses one that another user could
/// tamper with: not a directory, owned by another user (root excepted), or writable by others.
pub(crate) fn ensure_runtime_dir(dir: &Path) -> Result<(), PathsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PathsError::CreateDir(dir.to_path_buf(), e))?;
    let unsafe_dir = |why: String| PathsError::UnsafeDir {
        dir: dir.to_path_buf(),
        why,
    };
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| PathsError::CreateDir(dir.to_path_buf(), e))?;
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory (a symbolic link?)".into()));
    }
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir(format!("belongs to uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by other users (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

impl NameLock {
    pub(crate) fn acquire(dir: &Path, name: &str) -> Result<Self, PathsError> {
        ensure_runtime_dir(dir)?;
        let path = lock_path(dir, name);
        // O_NOFOLLOW: a symbolic link planted at the lock's name is refused, not written through.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| PathsError::Open(path.clone(), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim().to_string();
            return Err(PathsError::NameTaken {
                name: name.to_string(),
                dir: dir.to_path_buf(),
                pid,
            });
        }
        file.set_len(0)
            .map_err(|e| PathsError::Open(path.clone(), e))?;
        write!(file, "{}", std::process::id()).map_err(|e| PathsError::Open(path.clone(), e))?;
        Ok(NameLock { _file: file, path })
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Names of the VMs with a API socket in `dir`, sorted.
pub(crate) fn list_sockets(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".sock")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_a_name_is_refused_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("vmm-paths-test-{}", std::process::id()));
        let first = NameLock::acquire(&dir, "web1").unwrap();
        match NameLock::acquire(&dir, "web1") {
            Err(PathsError::NameTaken { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected NameTaken, got {:?}", other.err()),
        }
        NameLock::acquire(&dir, "web2").unwrap();
        drop(first);
        let _again = NameLock::acquire(&dir, "web1").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unsafe_runtime_dir_or_a_planted_link_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vmm-paths-unsafe-{}", std::process::id()));
        ensure_runtime_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            NameLock::acquire(&dir, "x"),
            Err(PathsError::UnsafeDir { .. })
        ));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, lock_path(&dir, "y")).unwrap();
        assert!(matches!(
            NameLock::acquire(&dir, "y"),
            Err(PathsError::Open(..))
        ));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let link = dir.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            ensure_runtime_dir(&link),
            Err(PathsError::UnsafeDir { .. })
        ));
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
