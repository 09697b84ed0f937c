//! Why a VM's configuration in a request (`vm.create`, `vm.add-net`, `vm.add-disk`, the grants
//! of `vm.receive-migration`) or on `vmm run --serial` was refused. Each names the field as the
//! request spells it; the API answers 400 with the chain as Cloud Hypervisor's error array.

use std::path::PathBuf;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigRequestError {
    #[error("{0}")]
    Invalid(&'static str, #[source] ConfigError),
    #[error("cpus.max_vcpus must equal cpus.boot_vcpus (no CPU hotplug)")]
    Hotplug,
    #[error("payload.kernel is required (firmware boot is not supported)")]
    NoKernel,
    #[error("--serial {0}: give tty, pty, socket=PATH, file=PATH or null")]
    SerialArg(String),
    #[error("console.mode {0}: this VMM has no virtio console; use serial (console.mode Off, or Pty for a PTY on the serial port)")]
    Console(String),
    #[error("cannot open a PTY for the console")]
    Pty(#[source] std::io::Error),
    #[error("console.mode Pty and a serial port that is not Off: this VMM has one console (the serial port); ask for one of them")]
    TwoConsoles,
    #[error("serial.file is required with mode File")]
    SerialFile,
    #[error("serial.socket is required with mode Socket")]
    SerialSocket,
    #[error("cannot serve the serial console on the socket {}", .0.display())]
    Socket(PathBuf, #[source] std::io::Error),
    #[error("disks[].serial is at most 20 ASCII characters")]
    DiskSerial,
    #[error("the VM has the disk {} already", .0.display())]
    DiskInUse(PathBuf),
    #[error("net[].tap is required (this VMM attaches NICs to tap devices: a name, or a descriptor in fds)")]
    NoTap,
    #[error("net[{index}].fds names {named} descriptor(s), but none came with the request (pass them with SCM_RIGHTS on the API socket)")]
    FdsMissing { index: usize, named: usize },
    #[error("net[{index}]: {count} tap descriptors passed; this VMM's NICs have one queue pair, so exactly one")]
    TooManyFds { index: usize, count: usize },
    #[error("net[{0}]")]
    PassedFd(usize, #[source] devices::virtio::net::TapError),
    #[error("net[{index}]: the descriptor passed is tap '{passed}', the request names '{asked}'")]
    FdNotThatTap {
        index: usize,
        passed: String,
        asked: String,
    },
    #[error("net[{0}]")]
    Net(usize, #[source] ConfigError),
    #[error("the VM has a NIC on tap '{0}' already")]
    TapInUse(String),
}
