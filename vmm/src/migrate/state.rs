//! What travels besides memory: the configuration (first, so the destination can refuse
//! early) and the state of the paused guest (last).

use devices::legacy::SerialSnapshot;
use devices::virtio::mmio::TransportSnapshot;
use kvm_bindings::kvm_cpuid_entry2;
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::vcpu_state::VcpuState;
use crate::vm_state::VmState;

#[derive(Serialize, Deserialize)]
pub struct MigrationConfig {
    pub vm: VmConfig,
    /// The CPUID the guest sees (vCPU 0), checked against what the destination supports.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Size of each disk in config order: shared storage must look the same on both hosts.
    pub disk_sizes: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
pub struct MigrationState {
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub transports: Vec<TransportSnapshot>,
}
