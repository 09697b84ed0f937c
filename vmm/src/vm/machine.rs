//! A running VM as one shareable object: what the owner thread, the API requests and a
//! migration worker all act on.

use std::sync::{Arc, Mutex};

use devices::legacy::Serial;
use devices::virtio::mmio::MmioTransport;
use kvm_ioctls::{Kvm, VmFd};

use crate::config::VmConfig;
use crate::vm::memory::GuestMemoryMmap;
use crate::vm::vcpu::VcpuSet;

pub(crate) struct Machine {
    pub(crate) config: VmConfig,
    pub(crate) kvm: Kvm,
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) vcpus: VcpuSet,
    /// What the guest's vCPUs see (and what a migration sends): see `crate::vm::cpu`.
    pub(crate) cpuids: Vec<kvm_bindings::CpuId>,
    pub(crate) tsc_khz: Option<u32>,
    pub(crate) msr_list: Vec<u32>,
}

impl Machine {
    /// The guest's RAM as the migration protocol sees it: each region's start and page count.
    pub(crate) fn ram_regions(&self) -> Vec<migration::vm::RamRegion> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.memory
            .iter()
            .map(|r| migration::vm::RamRegion {
                gpa: r.start_addr().0,
                pages: (r.len() / 4096) as usize,
            })
            .collect()
    }

    /// Puts a built VM and its started vCPUs together.
    pub(crate) fn new(
        config: VmConfig,
        built: crate::vm::assembly::BuiltParts,
        vcpus: VcpuSet,
    ) -> Self {
        Machine {
            config,
            kvm: built.kvm,
            vm_fd: built.vm_fd,
            memory: built.memory,
            serial: built.serial,
            transports: built.transports,
            vcpus,
            cpuids: built.cpuids,
            tsc_khz: built.tsc_khz,
            msr_list: built.msr_list,
        }
    }

    /// Runs `f` on every virtio transport under its lock.
    pub(crate) fn each_transport(&self, mut f: impl FnMut(&mut MmioTransport)) {
        for t in &self.transports {
            f(&mut t.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Stops the vCPUs, then the devices (docs/design.md section 4).
    pub(crate) fn pause_all(&self) -> Result<(), crate::vm::vcpu::VcpuError> {
        self.vcpus.pause()?;
        self.each_transport(|t| t.freeze());
        Ok(())
    }

    /// Takes the devices' host resources (disk locks) over, in device order; stops at the first
    /// that another process holds and returns its error (those already taken stay taken).
    pub(crate) fn acquire_backends(&self) -> Result<(), devices::virtio::BackendError> {
        for t in &self.transports {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .device_mut()
                .acquire_backend()?;
        }
        Ok(())
    }

    /// Lets go of the devices' host resources (disk locks), for another VMM to take over.
    pub(crate) fn release_backends(&self) {
        self.each_transport(|t| t.device_mut().release_backend());
    }

    /// Lets the devices run again (their queues re-run), vCPUs left as they are.
    pub(crate) fn thaw_devices(&self) {
        self.each_transport(|t| t.thaw());
    }

    /// Resumes in reverse: devices first (queues re-run), the guest told it was paused
    /// (KVMCLOCK_CTRL, so its watchdogs do not fire), then the vCPUs.
    pub(crate) fn resume_all(&self) {
        self.thaw_devices();
        // Fails with EINVAL when the guest has not enabled kvmclock: nothing to tell it then.
        let _ = self.vcpus.on_each(|_, fd| fd.kvmclock_ctrl());
        self.vcpus.resume();
    }
}
