//! `--user USER[:GROUP]`: a VMM started as root becomes that user before it opens anything of the
//! VM's. It keeps one thing opened as root, `/dev/kvm` (every VM it builds, at boot, on reboot
//! or when one is received, is created from that descriptor); the disks, taps, sockets and
//! the runtime directory are then opened as the user, so the VMM can reach only what that user
//! may. Supplementary groups are cleared, the real, effective and saved IDs all set, and since
//! no ID stays 0 the kernel clears every capability; that root cannot be regained is checked.
//! Without `--user`, `/dev/kvm` is opened per VM as before (an unprivileged user who may open
//! it needs nothing else).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// `--user USER[:GROUP]`: names or numeric IDs; the group defaults to the user's own (its
/// primary group when named, the same number when numeric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("--user {0}: give USER or USER:GROUP (names or numbers)")]
    Parse(String),
    #[error("--user: no {1} named {0} on this host")]
    Unknown(String, &'static str),
    #[error("--user {0}: root (uid 0) is what --user leaves; give another user")]
    Root(String),
    #[error(
        "--user: only a VMM started as root can become another user (this one runs as uid {0})"
    )]
    NotRoot(libc::uid_t),
    #[error("--user: cannot open /dev/kvm before leaving root")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("--user: {0} failed")]
    Call(&'static str, #[source] std::io::Error),
    #[error("--user: root could be regained after the switch; refusing to run")]
    StillRoot,
}

/// The uid and primary gid of the user named `name` (getpwnam_r).
fn lookup_user(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; zeroed is a valid value for getpwnam_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r fills `pwd` with pointers into `buf` (both outlive the call and the
    // reads of plain fields below) and sets `found` to `&pwd` or null.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// The gid of the group named `name` (getgrnam_r).
fn lookup_group(name: &str) -> Option<libc::gid_t> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: group is plain data; zeroed is a valid value for getgrnam_r to fill.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in lookup_user, for struct group.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(grp.gr_gid)
}

impl std::str::FromStr for User {
    type Err = PrivilegeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(PrivilegeError::Parse(s.into()));
        }
        let (uid, primary) = match user.parse::<u32>() {
            Ok(n) => (n, n),
            Err(_) => {
                lookup_user(user).ok_or_else(|| PrivilegeError::Unknown(user.into(), "user"))?
            }
        };
        let gid = match group {
            None => primary,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    lookup_group(g).ok_or_else(|| PrivilegeError::Unknown(g.into(), "group"))?
                }
            },
        };
        if uid == 0 || gid == 0 {
            return Err(PrivilegeError::Root(s.into()));
        }
        Ok(User { uid, gid })
    }
}

/// /dev/kvm, opened as root before the switch.
static KVM: OnceLock<OwnedFd> = OnceLock::new();

fn check(rc: libc::c_int, what: &'static str) -> Result<(), PrivilegeError> {
    if rc != 0 {
        return Err(PrivilegeError::Call(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens /dev/kvm and becomes `user` (see the module doc). Call it before any other thread
/// starts: the IDs are changed for this thread, which glibc then carries to the others, but
/// only those that exist then.
pub(crate) fn become_user(user: User) -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(PrivilegeError::NotRoot(euid));
    }
    let fd = kvm_ioctls::Kvm::open_with_cloexec(true).map_err(PrivilegeError::OpenKvm)?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let _ = KVM.set(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: setgroups with an empty list reads no memory; setresgid/setresuid take values.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(user.gid, user.gid, user.gid), "setresgid")?;
        check(libc::setresuid(user.uid, user.uid, user.uid), "setresuid")?;
    }
    // SAFETY: setuid(0) only tries to change this process's IDs; it must fail now.
    if unsafe { libc::setuid(0) } == 0 || unsafe { libc::geteuid() } == 0 {
        return Err(PrivilegeError::StillRoot);
    }
    Ok(())
}

/// A handle on KVM for a new VM: the descriptor kept from before `--user`'s switch, or
/// /dev/kvm opened now.
pub(crate) fn open_kvm() -> Result<kvm_ioctls::Kvm, kvm_ioctls::Error> {
    match KVM.get() {
        Some(kept) => {
            // SAFETY: dup of a descriptor this process owns for its whole life.
            let fd = unsafe { libc::fcntl(kept.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                return Err(kvm_ioctls::Error::last());
            }
            // SAFETY: `fd` is a fresh duplicate of /dev/kvm that nothing else owns.
            Ok(unsafe { kvm_ioctls::Kvm::from_raw_fd(fd) })
        }
        None => kvm_ioctls::Kvm::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_and_root_is_refused() {
        assert_eq!(
            "1000".parse::<User>().unwrap(),
            User {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            "65534:65533".parse::<User>().unwrap(),
            User {
                uid: 65534,
                gid: 65533
            }
        );
        assert!(matches!("0".parse::<User>(), Err(PrivilegeError::Root(_))));
        assert!(matches!(
            "5:0".parse::<User>(),
            Err(PrivilegeError::Root(_))
        ));
        assert!(matches!(
            "root".parse::<User>(),
            Err(PrivilegeError::Root(_))
        ));
        assert!(matches!(
            ":5".parse::<User>(),
            Err(PrivilegeError::Parse(_))
        ));
        assert!(matches!(
            "no-such-user-here".parse::<User>(),
            Err(PrivilegeError::Unknown(_, "user"))
        ));
        // Names as the host's passwd database has them (nobody is in every one).
        let (uid, gid) = lookup_user("nobody").unwrap();
        assert_eq!("nobody".parse::<User>().unwrap(), User { uid, gid });
    }
}
