//! Where a VM's control socket and lock live, and the lock that keeps two VMs of one name
//! in one runtime directory apart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot create the runtime directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("a VM named '{name}' is already running in {dir} (pid {pid}); choose another --name or stop it with `vmm stop {name}`")]
    NameTaken {
        name: String,
        dir: PathBuf,
        pid: String,
    },
}

/// `$VMM_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/vmm`, else `/run/vmm`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VMM_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("vmm");
    }
    PathBuf::from("/run/vmm")
}

pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

fn lock_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

/// Held for the life of a VM: an exclusive flock on `<dir>/<name>.lock` holding our pid.
pub struct NameLock {
    _file: File,
    path: PathBuf,
}

impl NameLock {
    pub fn acquire(dir: &Path, name: &str) -> Result<Self, PathsError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| PathsError::CreateDir(dir.to_path_buf(), e))?;
        let path = lock_path(dir, name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
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

/// Names of the VMs with a control socket in `dir`, sorted.
pub fn list_sockets(dir: &Path) -> Vec<String> {
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
}
