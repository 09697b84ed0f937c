//! The destination side: checks the source's configuration against this host (CPUID, disks,
//! memory), builds the empty VM with paused vCPUs, and restores and resumes it on commit.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use migration::vm::{RamRegion, TargetBuilder, TargetVm, VmResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::state::{MigrationConfig, MigrationState};
use crate::event_loop::EventLoop;
use crate::events::VmEvent;
use crate::machine::Machine;
use crate::vcpu::VcpuSet;

/// What a successful incoming migration leaves behind for `vmm run` to keep running.
pub struct Incoming {
    pub machine: Arc<Machine>,
    pub event_loop: EventLoop,
}

pub struct IncomingBuilder {
    /// The name this destination was started with (the source's must match).
    pub name: String,
    pub events: Sender<VmEvent>,
    pub result: Option<Incoming>,
}

impl IncomingBuilder {
    fn check(&self, cfg: &MigrationConfig, kvm: &kvm_ioctls::Kvm) -> VmResult<()> {
        if cfg.vm.name != self.name {
            return Err(format!(
                "the VM is named '{}' but this destination waits for '{}'",
                cfg.vm.name, self.name
            ));
        }
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        let missing = arch::cpuid::missing_features(&cfg.cpuid, supported.as_slice());
        if !missing.is_empty() {
            return Err(format!(
                "this host's CPU lacks features the guest may use: {}",
                missing.join(", ")
            ));
        }
        if cfg.disk_sizes.len() != cfg.vm.disks.len() {
            return Err("malformed config: disk sizes do not match the disks".into());
        }
        for (d, &size) in cfg.vm.disks.iter().zip(&cfg.disk_sizes) {
            let here = devices::virtio::block::disk_size(&d.path)
                .map_err(|e| format!("disk {} is not reachable here ({e}); the disk must be on shared storage at the same path", d.path.display()))?;
            if here != size {
                return Err(format!("disk {} is {here} bytes here but {size} bytes on the source: not the same shared disk", d.path.display()));
            }
        }
        if let Some(avail) = mem_available() {
            if cfg.vm.memory_bytes > avail {
                return Err(format!(
                    "the VM needs {} MiB of memory, this host has {} MiB available",
                    cfg.vm.memory_bytes >> 20,
                    avail >> 20
                ));
            }
        }
        Ok(())
    }
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

impl TargetBuilder for IncomingBuilder {
    fn build(&mut self, config: &[u8]) -> VmResult<Box<dyn TargetVm>> {
        let cfg: MigrationConfig = migration::envelope::open(config).map_err(|e| e.to_string())?;
        let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
        self.check(&cfg, &kvm)?;
        let built = crate::vm::build(
            &cfg.vm,
            crate::vm::BuildMode::Incoming,
            Box::new(std::io::stdout()),
            self.events.clone(),
        )
        .map_err(|e| format!("cannot build the VM here: {}", crate::error_chain(&e)))?;
        let (parts, vcpu_contexts, subscribers) = built.split();
        let event_loop = EventLoop::start(subscribers)
            .map_err(|e| format!("cannot start the device event loop: {e}"))?;
        let vcpus = VcpuSet::start(vcpu_contexts, true).map_err(|e| e.to_string())?;
        let machine = Arc::new(Machine::new(cfg.vm, parts, vcpus));
        self.result = Some(Incoming {
            machine: machine.clone(),
            event_loop,
        });
        Ok(Box::new(MachineTarget { machine }))
    }
}

struct MachineTarget {
    machine: Arc<Machine>,
}

impl TargetVm for MachineTarget {
    fn regions(&self) -> Vec<RamRegion> {
        self.machine
            .memory
            .iter()
            .map(|r| RamRegion {
                gpa: r.start_addr().0,
                pages: (r.len() / 4096) as usize,
            })
            .collect()
    }

    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> VmResult<()> {
        self.machine
            .memory
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| format!("write of guest memory at {gpa:#x}: {e}"))
    }

    fn restore_state(&mut self, state: &[u8]) -> VmResult<()> {
        let m = &self.machine;
        let s: MigrationState = migration::envelope::open(state).map_err(|e| e.to_string())?;
        if s.vcpus.len() != m.vcpus.count() || s.transports.len() != m.transports.len() {
            return Err(format!(
                "state has {} vCPUs and {} devices, the VM here {} and {}",
                s.vcpus.len(),
                s.transports.len(),
                m.vcpus.count(),
                m.transports.len()
            ));
        }
        // VM-wide state (clock, irqchip, PIT) before any vCPU.
        crate::vm_state::restore(&m.vm_fd, &s.vm)?;
        let vcpus = Arc::new(s.vcpus);
        m.vcpus
            .on_each({
                let vcpus = vcpus.clone();
                move |i, fd| crate::vcpu_state::restore(fd, &vcpus[i as usize])
            })
            .map_err(|e| e.to_string())?
            .into_iter()
            .enumerate()
            .try_for_each(|(i, r)| r.map_err(|e| format!("vCPU {i}: {e}")))?;
        m.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&s.serial);
        for (t, snap) in m.transports.iter().zip(&s.transports) {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore(snap)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn acquire(&mut self) -> VmResult<()> {
        // The source releases its disk locks right after sending commit: wait for that.
        let deadline = Instant::now() + Duration::from_secs(15);
        for t in &self.machine.transports {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match t.device_mut().acquire_backend() {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("cannot take the disk over: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    }

    fn resume(&mut self) -> VmResult<()> {
        self.machine.resume_all()?;
        self.machine.each_transport(|t| t.device_mut().announce());
        Ok(())
    }
}
