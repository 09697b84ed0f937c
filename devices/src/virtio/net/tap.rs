//! A Linux tap interface opened through /dev/net/tun with a virtio-net header on every frame,
//! so frames pass between the guest and the tap without translation.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap name '{0}': 1 to 15 characters")]
    BadName(String),
    #[error("cannot open /dev/net/tun (is the tun module loaded?)")]
    OpenTun(#[source] std::io::Error),
    #[error(
        "cannot attach to tap '{0}' (TUNSETIFF; needs CAP_NET_ADMIN, or a tap owned by this user)"
    )]
    Attach(String, #[source] std::io::Error),
    #[error("cannot configure tap '{0}' ({1})")]
    Configure(String, &'static str, #[source] std::io::Error),
    #[error("the descriptor passed for a NIC is not an attached tap (TUNGETIFF)")]
    NotATap(#[source] std::io::Error),
    #[error(
        "the tap '{0}' passed by descriptor was opened without {1}: open it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"
    )]
    WrongFlags(String, &'static str),
}

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the tap `name`, creating it if it does not exist (it then lives as long as we do).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        // SAFETY: ifreq is plain data (a name and a union of integers and addresses), for
        // which all-zero bytes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes an ifreq; `req` is a live ifreq whose name is
        // NUL-terminated (the name is shorter than IFNAMSIZ, checked above).
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::Attach(
                name.to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        configure(&file, name)?;
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// Takes a tap that the caller opened and attached (passed over the API socket, so the VMM
    /// needs no privilege to create taps). Refused unless it is a tap attached with
    /// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR; it is made non-blocking and configured as
    /// [`Tap::open`] does.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Result<Self, TapError> {
        let name = tap_name(&fd)?;
        let file = File::from(fd);
        // SAFETY: F_GETFL on a descriptor we own.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let set = if flags < 0 {
            flags
        } else {
            // SAFETY: F_SETFL on a descriptor we own, with its own flags plus O_NONBLOCK.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }
        };
        if set < 0 {
            return Err(TapError::Configure(
                name,
                "O_NONBLOCK",
                std::io::Error::last_os_error(),
            ));
        }
        configure(&file, &name)?;
        Ok(Tap { file, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The name of the tap a descriptor is attached to, if it is one with the flags this device
/// needs (IFF_TAP, IFF_NO_PI, IFF_VNET_HDR).
pub fn tap_name(fd: &impl AsRawFd) -> Result<String, TapError> {
    // SAFETY: ifreq is plain data for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes an ifreq into `req`; on a descriptor that is not a tun/tap
    // it fails (EBADFD, ENOTTY, EINVAL) and writes nothing.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
        return Err(TapError::NotATap(std::io::Error::last_os_error()));
    }
    let name: String = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    // SAFETY: TUNGETIFF filled the flags member of the union.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    for (flag, what) in [
        (libc::IFF_TAP, "IFF_TAP (it is a tun)"),
        (libc::IFF_NO_PI, "IFF_NO_PI"),
        (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
    ] {
        if flags & flag == 0 {
            return Err(TapError::WrongFlags(name, what));
        }
    }
    Ok(name)
}

/// The virtio-net header length and the (absent) offloads, on an attached tap.
fn configure(file: &File, name: &str) -> Result<(), TapError> {
    let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(TapError::Configure(
            name.to_string(),
            "TUNSETVNETHDRSZ",
            std::io::Error::last_os_error(),
        ));
    }
    // No checksum or segmentation offloads: the guest is offered none either.
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        return Err(TapError::Configure(
            name.to_string(),
            "TUNSETOFFLOAD",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl super::NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
