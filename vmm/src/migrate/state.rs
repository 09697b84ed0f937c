//! What travels besides memory: the configuration (first, so the destination can refuse
//! early) and the state of the paused guest (last).

use devices::legacy::SerialSnapshot;
use devices::virtio::mmio::TransportSnapshot;
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::vm::cpu::GuestCpu;
use crate::vm::vcpu_state::VcpuState;
use crate::vm::vm_state::VmState;

#[derive(Serialize, Deserialize)]
pub struct MigrationConfig {
    pub vm: VmConfig,
    /// The CPU the guest sees (every vCPU's CPUID, its TSC rate): the destination checks it
    /// against what it supports, then gives the vCPUs exactly that.
    pub cpu: GuestCpu,
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
