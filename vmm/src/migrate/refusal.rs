//! Why a destination turns a source's VM down. The text goes back to the source (it ends that
//! migration there with this reason), so each says what differs and what the operator of
//! this destination would pass to accept it.

use std::path::PathBuf;

use devices::virtio::net::format_mac;

use crate::config::ConfigError;

/// Longest path or command-line string taken from a peer (shown by `vmm info`, never opened).
pub(crate) const MAX_PEER_STRING: usize = 4096;

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("malformed config")]
    Invalid(#[source] ConfigError),
    #[error("malformed config: {0} devices (at most {max})", max = crate::vm::assembly::MAX_VIRTIO_DEVICES)]
    TooManyDevices(usize),
    #[error("malformed config: disk sizes do not match the disks")]
    DiskSizes,
    #[error("malformed config: CPUID tables for {tables} vCPUs, the VM has {vcpus}")]
    CpuidTables { tables: usize, vcpus: u8 },
    #[error("malformed config: {0} CPUID entries (1 to {max})", max = kvm_bindings::KVM_MAX_CPUID_ENTRIES)]
    CpuidEntries(usize),
    #[error("malformed config: the {0} is longer than {MAX_PEER_STRING} bytes or holds control characters")]
    PeerString(&'static str),
    #[error("the VM is named '{theirs}' but this destination waits for '{ours}'")]
    Name { theirs: String, ours: String },
    #[error("the VM has {} MiB of memory, this destination prepared {} MiB (--memory)", .theirs >> 20, .ours >> 20)]
    MemorySize { theirs: u64, ours: u64 },
    #[error("the VM has {theirs} disk(s), this destination grants {ours} (give each with --disk PATH on `vmm run --incoming`)")]
    DiskCount { theirs: usize, ours: usize },
    #[error("disk {index}: the VM's disk is {}, this destination grants {}; shared storage must be at the same path on both hosts", .theirs.display(), .ours.display())]
    DiskPath {
        index: usize,
        theirs: PathBuf,
        ours: PathBuf,
    },
    #[error("disk {index} ({}): readonly={} on the source, readonly={} granted here", .path.display(), on_off(*.theirs), on_off(*.ours))]
    DiskReadonly {
        index: usize,
        path: PathBuf,
        theirs: bool,
        ours: bool,
    },
    #[error("disk {index} ({}): the guest sees serial {:?}, this destination grants {:?}", .path.display(), .theirs.as_deref().unwrap_or("(default)"), .ours.as_deref().unwrap_or("(default)"))]
    DiskSerial {
        index: usize,
        path: PathBuf,
        theirs: Option<String>,
        ours: Option<String>,
    },
    #[error("disk {} is not usable here; the disk must be on shared storage at the same path", .0.display())]
    DiskUnusable(PathBuf, #[source] devices::virtio::block::DiskError),
    #[error("disk {} is {here} bytes here but {theirs} bytes on the source: not the same shared disk", .path.display())]
    DiskSize {
        path: PathBuf,
        here: u64,
        theirs: u64,
    },
    #[error("the VM has {theirs} NIC(s), this destination grants {ours} (give each with --net tap=NAME on `vmm run --incoming`)")]
    NicCount { theirs: usize, ours: usize },
    #[error("NIC {index}: the guest's MAC is {}, this destination grants {} (pass --net tap={tap},mac={})", format_mac(.theirs), format_mac(.ours), format_mac(.theirs))]
    NicMac {
        index: usize,
        theirs: [u8; 6],
        ours: [u8; 6],
        tap: String,
    },
    #[error("the VM shows hardware virtualization to its guest; it cannot migrate")]
    Nested,
    #[error("cannot read this host's CPUID")]
    HostCpuid(#[source] crate::vm::cpu::CpuError),
    #[error("this host's CPU lacks features the guest ({model} CPU model) may use: {}", .missing.join(", "))]
    CpuFeatures { model: String, missing: Vec<String> },
    #[error("the VM needs {} MiB of memory, this host has {} MiB available", .needed >> 20, .available >> 20)]
    HostMemory { needed: u64, available: u64 },
}

impl From<Refusal> for migration::vm::VmError {
    /// The whole chain, as one line for the source.
    fn from(r: Refusal) -> Self {
        migration::vm::VmError::Refused(crate::error_chain(&r))
    }
}
