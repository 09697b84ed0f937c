//! The destination side: checks the source's configuration (a claim, not an instruction)
//! against this host's limits and against what its operator granted, builds the empty VM with
//! paused vCPUs from the grants, and restores and resumes it on commit.
//!
//! No string from the peer is opened: the disks and taps come from `vmm run --incoming`'s own
//! `--disk` and `--net`; the source's config must match them (paths, sizes, flags, MACs).

use std::sync::mpsc::Sender;
use std::sync::Arc;

use migration::vm::{RamRegion, TargetBuilder, TargetVm, VmError, VmResult};
use vm_memory::{Bytes, GuestAddress};

use super::refusal::{Refusal, MAX_PEER_STRING};
use super::state::{MigrationConfig, MigrationState};
use crate::config::{self, DiskConfig, NetConfig, VmConfig};
use crate::events::VmEvent;
use crate::vm::event_loop::EventLoop;
use crate::vm::machine::Machine;
use crate::vm::vcpu::VcpuSet;

/// What a successful incoming migration leaves behind for `vmm run` to keep running.
pub(crate) struct Incoming {
    pub(crate) machine: Arc<Machine>,
    pub(crate) event_loop: EventLoop,
}

/// What this destination's operator lets an incoming VM have.
#[derive(Clone, Debug, Default)]
pub(crate) struct Grants {
    pub(crate) disks: Vec<DiskConfig>,
    pub(crate) nets: Vec<NetConfig>,
    /// The VM's memory size, when the operator gave it (`--memory`): the memory is then mapped
    /// and faulted in while the destination waits, and a VM of another size is refused.
    pub(crate) memory: Option<u64>,
    /// What the VM boots here when it reboots, when the operator granted it.
    pub(crate) payload: Option<Payload>,
}

/// A kernel, initrd and command line on this host, granted for a received VM's reboots.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    pub(crate) kernel: std::path::PathBuf,
    pub(crate) initrd: Option<std::path::PathBuf>,
    pub(crate) cmdline: String,
}

pub(crate) struct IncomingBuilder {
    /// The name this destination was started with (the source's must match); none for an
    /// empty VMM started with `--api-socket` alone, which takes the source's name.
    pub(crate) name: Option<String>,
    pub(crate) grants: Grants,
    /// Guest memory prepared before the source arrived (see [`Grants::memory`]).
    pub(crate) prepared: Option<crate::vm::memory::GuestMemoryMmap>,
    pub(crate) events: Sender<VmEvent>,
    pub(crate) result: Option<Incoming>,
}

fn check_peer_string(what: &'static str, s: &str) -> Result<(), Refusal> {
    if s.len() > MAX_PEER_STRING || s.chars().any(char::is_control) {
        return Err(Refusal::PeerString(what));
    }
    Ok(())
}

/// The checks that need nothing but the config: the limits `vmm run` applies.
fn check_limits(vm: &VmConfig, cfg: &MigrationConfig) -> Result<(), Refusal> {
    config::validate_name(&vm.name).map_err(Refusal::Invalid)?;
    config::validate_vcpus(u64::from(vm.vcpus)).map_err(Refusal::Invalid)?;
    config::validate_memory(vm.memory_bytes).map_err(Refusal::Invalid)?;
    let devices = vm.disks.len() + vm.nets.len();
    if devices > crate::vm::assembly::MAX_VIRTIO_DEVICES {
        return Err(Refusal::TooManyDevices(devices));
    }
    if cfg.disk_sizes.len() != vm.disks.len() {
        return Err(Refusal::DiskSizes);
    }
    if cfg.cpu.cpuids.len() != usize::from(vm.vcpus) {
        return Err(Refusal::CpuidTables {
            tables: cfg.cpu.cpuids.len(),
            vcpus: vm.vcpus,
        });
    }
    for table in &cfg.cpu.cpuids {
        if table.is_empty() || table.len() > kvm_bindings::KVM_MAX_CPUID_ENTRIES {
            return Err(Refusal::CpuidEntries(table.len()));
        }
    }
    check_peer_string("kernel path", &vm.kernel.to_string_lossy())?;
    if let Some(initrd) = &vm.initrd {
        check_peer_string("initrd path", &initrd.to_string_lossy())?;
    }
    check_peer_string("kernel command line", &vm.cmdline)?;
    for d in &vm.disks {
        check_peer_string("disk path", &d.path.to_string_lossy())?;
    }
    Ok(())
}

/// Decodes a source's config and applies every check that needs nothing but the config.
pub fn decode_config(bytes: &[u8]) -> VmResult<MigrationConfig> {
    let cfg: MigrationConfig = migration::envelope::open(bytes)
        .map_err(|e| VmError::Refused(format!("malformed config: {e}")))?;
    check_limits(&cfg.vm, &cfg)?;
    Ok(cfg)
}

/// A state the source sent that no VM could take; checked before anything is restored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MalformedState {
    #[error("malformed state")]
    Envelope(#[source] migration::envelope::EnvelopeError),
    #[error("malformed state: {0} vCPUs")]
    VcpuCount(usize),
    #[error("malformed state: {0} devices")]
    DeviceCount(usize),
    #[error("malformed state: the serial port")]
    Serial(#[source] devices::legacy::SerialRestoreError),
    #[error("malformed state: device {device} queue {queue}")]
    Queue {
        device: usize,
        queue: usize,
        #[source]
        source: devices::virtio::QueueError,
    },
}

/// Restoring checked state into this VM failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    #[error("the state has {vcpus} vCPUs and {devices} devices, the VM here {here_vcpus} and {here_devices}")]
    Shape {
        vcpus: usize,
        devices: usize,
        here_vcpus: usize,
        here_devices: usize,
    },
    #[error("cannot restore the VM-wide state")]
    Vm(#[source] crate::vm::state_error::KvmStateError),
    #[error("cannot reach the vCPU threads")]
    Vcpus(#[source] crate::vm::vcpu::VcpuError),
    #[error("cannot restore vCPU {0}")]
    Vcpu(usize, #[source] crate::vm::state_error::KvmStateError),
    #[error("cannot restore the serial port")]
    Serial(#[source] devices::legacy::SerialRestoreError),
    #[error("cannot restore virtio device {0}")]
    Device(usize, #[source] devices::virtio::mmio::RestoreError),
}

/// Decodes the paused guest's state and applies every check that needs neither KVM nor a
/// device: counts, the UART's FIFO, each queue's size and ring alignment.
pub fn decode_state(bytes: &[u8]) -> VmResult<MigrationState> {
    check_state(bytes).map_err(|e| VmError::Restore(e.into()))
}

fn check_state(bytes: &[u8]) -> Result<MigrationState, MalformedState> {
    let s: MigrationState = migration::envelope::open(bytes).map_err(MalformedState::Envelope)?;
    if s.vcpus.is_empty() || s.vcpus.len() > usize::from(arch::mptable::MAX_VCPUS) {
        return Err(MalformedState::VcpuCount(s.vcpus.len()));
    }
    if s.transports.len() > crate::vm::assembly::MAX_VIRTIO_DEVICES {
        return Err(MalformedState::DeviceCount(s.transports.len()));
    }
    s.serial.validate().map_err(MalformedState::Serial)?;
    for (device, t) in s.transports.iter().enumerate() {
        for (queue, q) in t.queues.iter().enumerate() {
            q.validate().map_err(|source| MalformedState::Queue {
                device,
                queue,
                source,
            })?;
        }
    }
    Ok(s)
}

impl Grants {
    /// Matches the source's devices with these grants; the error names the first difference.
    fn check(&self, vm: &VmConfig, disk_sizes: &[u64]) -> Result<(), Refusal> {
        if let Some(mem) = self.memory {
            if mem != vm.memory_bytes {
                return Err(Refusal::MemorySize {
                    theirs: vm.memory_bytes,
                    ours: mem,
                });
            }
        }
        if vm.disks.len() != self.disks.len() {
            return Err(Refusal::DiskCount {
                theirs: vm.disks.len(),
                ours: self.disks.len(),
            });
        }
        for (index, ((theirs, grant), &size)) in
            vm.disks.iter().zip(&self.disks).zip(disk_sizes).enumerate()
        {
            if theirs.path != grant.path {
                return Err(Refusal::DiskPath {
                    index,
                    theirs: theirs.path.clone(),
                    ours: grant.path.clone(),
                });
            }
            if theirs.readonly != grant.readonly {
                return Err(Refusal::DiskReadonly {
                    index,
                    path: grant.path.clone(),
                    theirs: theirs.readonly,
                    ours: grant.readonly,
                });
            }
            if theirs.serial != grant.serial {
                return Err(Refusal::DiskSerial {
                    index,
                    path: grant.path.clone(),
                    theirs: theirs.serial.clone(),
                    ours: grant.serial.clone(),
                });
            }
            let here = devices::virtio::block::disk_size(&grant.path)
                .map_err(|e| Refusal::DiskUnusable(grant.path.clone(), e))?;
            if here != size {
                return Err(Refusal::DiskSize {
                    path: grant.path.clone(),
                    here,
                    theirs: size,
                });
            }
        }
        if vm.nets.len() != self.nets.len() {
            return Err(Refusal::NicCount {
                theirs: vm.nets.len(),
                ours: self.nets.len(),
            });
        }
        for (index, (theirs, grant)) in vm.nets.iter().zip(&self.nets).enumerate() {
            if theirs.mac != grant.mac {
                return Err(Refusal::NicMac {
                    index,
                    theirs: theirs.mac,
                    ours: grant.mac,
                    tap: grant.tap.clone(),
                });
            }
        }
        Ok(())
    }
}

impl IncomingBuilder {
    /// Every check before anything is allocated or opened (beyond stat-ing the granted disks).
    fn check(&self, cfg: &MigrationConfig, kvm: &kvm_ioctls::Kvm) -> Result<(), Refusal> {
        if let Some(name) = self.name.as_ref().filter(|n| **n != cfg.vm.name) {
            return Err(Refusal::Name {
                theirs: cfg.vm.name.clone(),
                ours: name.clone(),
            });
        }
        self.grants.check(&cfg.vm, &cfg.disk_sizes)?;
        if cfg.vm.nested {
            return Err(Refusal::Nested);
        }
        let supported = crate::vm::cpu::supported_cpuid(kvm).map_err(Refusal::HostCpuid)?;
        let mut missing: Vec<String> = Vec::new();
        for table in &cfg.cpu.cpuids {
            for m in arch::cpuid::missing_features(table, supported.as_slice()) {
                if !missing.contains(&m) {
                    missing.push(m);
                }
            }
        }
        if !missing.is_empty() {
            return Err(Refusal::CpuFeatures {
                model: cfg.vm.cpu_model.clone(),
                missing,
            });
        }
        if let Some(available) = mem_available() {
            if cfg.vm.memory_bytes > available {
                return Err(Refusal::HostMemory {
                    needed: cfg.vm.memory_bytes,
                    available,
                });
            }
        }
        Ok(())
    }

    /// The VM as it will run here: the source's shape, this operator's devices and payload
    /// (the source's kernel, initrd and command line are never used: a reboot boots what
    /// this host granted, or nothing).
    fn local_config(&self, theirs: &VmConfig) -> VmConfig {
        let payload = self.grants.payload.clone();
        VmConfig {
            name: theirs.name.clone(),
            kernel: payload
                .as_ref()
                .map(|p| p.kernel.clone())
                .unwrap_or_default(),
            initrd: payload.as_ref().and_then(|p| p.initrd.clone()),
            cmdline: payload.map(|p| p.cmdline).unwrap_or_default(),
            memory_bytes: theirs.memory_bytes,
            vcpus: theirs.vcpus,
            disks: self.grants.disks.clone(),
            nets: self.grants.nets.clone(),
            cpu_model: theirs.cpu_model.clone(),
            nested: false,
        }
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
        let cfg = decode_config(config)?;
        let kvm = crate::privileges::open_kvm().map_err(|e| VmError::Build(e.into()))?;
        self.check(&cfg, &kvm)?;
        let local = self.local_config(&cfg.vm);
        let prepared = self.prepared.take();
        let was_prepared = prepared.is_some();
        let built = crate::vm::assembly::build(
            &local,
            crate::vm::assembly::BuildMode::Incoming,
            Some(&cfg.cpu),
            prepared,
            Box::new(std::io::stdout()),
            self.events.clone(),
        )
        .map_err(|e| VmError::Build(e.into()))?;
        let memory = built.memory.clone();
        let (parts, vcpu_contexts, subscribers) = built.split();
        let event_loop = EventLoop::start(subscribers).map_err(|e| VmError::Build(e.into()))?;
        let vcpus = VcpuSet::start(vcpu_contexts, true).map_err(|e| VmError::Build(e.into()))?;
        let machine = Arc::new(Machine::new(local, parts, vcpus));
        // Fault the memory in beside the receive path (a prepared one already is), once the
        // threads that map their stacks have started.
        if !was_prepared {
            crate::vm::memory::prefault_in_background(&memory, || {});
        }
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
        self.machine.ram_regions()
    }

    fn write_memory(&self, gpa: u64, data: &[u8]) -> VmResult<()> {
        self.machine
            .memory
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| VmError::Memory(e.into()))
    }

    fn zero_memory(&self, gpa: u64, len: usize) -> VmResult<()> {
        static ZERO: [u8; 4096] = [0; 4096];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(ZERO.len());
            self.write_memory(gpa + at as u64, &ZERO[..n])?;
            at += n;
        }
        Ok(())
    }

    fn restore_state(&self, state: &[u8]) -> VmResult<()> {
        let s = decode_state(state)?;
        self.restore(s).map_err(|e| VmError::Restore(e.into()))
    }

    fn acquire(&self) -> VmResult<()> {
        // One attempt per disk (the source releases its locks as it sends commit); the
        // receiver retries for as long as another process holds one.
        self.machine
            .acquire_backends()
            .map_err(|e| VmError::Acquire(e.into()))
    }

    fn resume(&self) -> VmResult<()> {
        self.machine.resume_all();
        self.machine.each_transport(|t| t.device_mut().announce());
        Ok(())
    }
}

impl MachineTarget {
    /// Restores checked state in the order KVM needs (docs/design.md section 5).
    fn restore(&self, s: MigrationState) -> Result<(), RestoreError> {
        let m = &self.machine;
        if s.vcpus.len() != m.vcpus.count() || s.transports.len() != m.transports.len() {
            return Err(RestoreError::Shape {
                vcpus: s.vcpus.len(),
                devices: s.transports.len(),
                here_vcpus: m.vcpus.count(),
                here_devices: m.transports.len(),
            });
        }
        // VM-wide state (clock, irqchip, PIT) before any vCPU.
        crate::vm::vm_state::restore(&m.vm_fd, &s.vm).map_err(RestoreError::Vm)?;
        let vcpus = Arc::new(s.vcpus);
        for (i, r) in m
            .vcpus
            .on_each({
                let vcpus = vcpus.clone();
                move |i, fd| crate::vm::vcpu_state::restore(fd, &vcpus[i as usize])
            })
            .map_err(RestoreError::Vcpus)?
            .into_iter()
            .enumerate()
        {
            r.map_err(|e| RestoreError::Vcpu(i, e))?;
        }
        m.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&s.serial)
            .map_err(RestoreError::Serial)?;
        for (i, (t, snap)) in m.transports.iter().zip(&s.transports).enumerate() {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore(snap)
                .map_err(|e| RestoreError::Device(i, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vm: VmConfig) -> MigrationConfig {
        MigrationConfig {
            disk_sizes: vec![1 << 20; vm.disks.len()],
            cpu: crate::vm::cpu::GuestCpu {
                cpuids: vec![vec![kvm_bindings::kvm_cpuid_entry2::default(); 4]; vm.vcpus.into()],
                tsc_khz: None,
            },
            vm,
        }
    }

    fn vm() -> VmConfig {
        VmConfig {
            name: "web".into(),
            kernel: "/k".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            memory_bytes: 256 << 20,
            vcpus: 2,
            disks: vec![],
            nets: vec![],
            cpu_model: "host".into(),
            nested: false,
        }
    }

    fn disk(path: &str) -> DiskConfig {
        DiskConfig {
            path: path.into(),
            readonly: false,
            direct: false,
            serial: None,
        }
    }

    #[test]
    fn hostile_configs_are_refused_before_anything_is_allocated() {
        let ok = config(vm());
        check_limits(&ok.vm, &ok).unwrap();
        decode_config(&migration::envelope::seal(&ok).unwrap()).unwrap();
        let cases: Vec<(&str, MigrationConfig)> = vec![
            ("vCPUs", config(VmConfig { vcpus: 0, ..vm() })),
            ("vCPUs", config(VmConfig { vcpus: 200, ..vm() })),
            (
                "memory",
                config(VmConfig {
                    memory_bytes: 0,
                    ..vm()
                }),
            ),
            (
                "memory",
                config(VmConfig {
                    memory_bytes: !4095,
                    ..vm()
                }),
            ),
            (
                "memory",
                config(VmConfig {
                    memory_bytes: (256 << 20) + 1,
                    ..vm()
                }),
            ),
            (
                "name",
                config(VmConfig {
                    name: "../etc".into(),
                    ..vm()
                }),
            ),
            (
                "devices",
                config(VmConfig {
                    disks: vec![disk("/d"); 40],
                    ..vm()
                }),
            ),
            (
                "command line",
                config(VmConfig {
                    cmdline: "x".repeat(5000),
                    ..vm()
                }),
            ),
            (
                "kernel path",
                config(VmConfig {
                    kernel: "/k\x1b[2J".into(),
                    ..vm()
                }),
            ),
            (
                "disk sizes",
                MigrationConfig {
                    disk_sizes: vec![],
                    ..config(VmConfig {
                        disks: vec![disk("/d")],
                        ..vm()
                    })
                },
            ),
            (
                "CPUID",
                MigrationConfig {
                    cpu: crate::vm::cpu::GuestCpu {
                        cpuids: vec![vec![], vec![]],
                        tsc_khz: None,
                    },
                    ..config(vm())
                },
            ),
            (
                "CPUID",
                MigrationConfig {
                    cpu: crate::vm::cpu::GuestCpu {
                        cpuids: vec![vec![Default::default(); 4]],
                        tsc_khz: None,
                    },
                    ..config(vm())
                },
            ),
            (
                "CPUID",
                MigrationConfig {
                    cpu: crate::vm::cpu::GuestCpu {
                        cpuids: vec![
                            vec![
                                Default::default();
                                kvm_bindings::KVM_MAX_CPUID_ENTRIES + 1
                            ];
                            2
                        ],
                        tsc_khz: None,
                    },
                    ..config(vm())
                },
            ),
        ];
        for (what, cfg) in cases {
            let err = check_limits(&cfg.vm, &cfg).unwrap_err();
            assert!(
                err.to_string().contains("malformed config"),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn grants_must_match_the_source_devices() {
        let dir = std::env::temp_dir().join(format!("vmm-grants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("d.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let path = img.to_str().unwrap();
        let source = VmConfig {
            disks: vec![disk(path)],
            ..vm()
        };
        let granted = |d: DiskConfig| Grants {
            disks: vec![d],
            ..Default::default()
        };
        granted(disk(path)).check(&source, &[1 << 20]).unwrap();
        let err = Grants::default().check(&source, &[1 << 20]).unwrap_err();
        assert!(err.to_string().contains("grants 0"), "{err}");
        let err = granted(disk("/elsewhere.img"))
            .check(&source, &[1 << 20])
            .unwrap_err();
        assert!(err.to_string().contains("same path"), "{err}");
        let ro = DiskConfig {
            readonly: true,
            ..disk(path)
        };
        assert!(granted(ro)
            .check(&source, &[1 << 20])
            .unwrap_err()
            .to_string()
            .contains("readonly"));
        let err = granted(disk(path)).check(&source, &[2 << 20]).unwrap_err();
        assert!(
            err.to_string().contains("not the same shared disk"),
            "{err}"
        );
        let fifo = DiskConfig {
            path: "/dev/null".into(),
            ..disk(path)
        };
        let source_null = VmConfig {
            disks: vec![disk("/dev/null")],
            ..vm()
        };
        let err = granted(fifo).check(&source_null, &[0]).unwrap_err();
        assert!(
            crate::error_chain(&err).contains("neither a regular file nor a block device"),
            "{err}"
        );
        let nic = |mac| NetConfig {
            tap: "tap0".into(),
            mac,
            tap_fd: None,
        };
        let with_nic = VmConfig {
            nets: vec![nic([2, 0, 0, 0, 0, 1])],
            ..vm()
        };
        let err = Grants {
            nets: vec![nic([2, 0, 0, 0, 0, 2])],
            ..Default::default()
        }
        .check(&with_nic, &[])
        .unwrap_err();
        assert!(err.to_string().contains("02:00:00:00:00:01"), "{err}");
        let err = Grants {
            memory: Some(512 << 20),
            ..Default::default()
        }
        .check(&vm(), &[])
        .unwrap_err();
        assert!(err.to_string().contains("prepared 512 MiB"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
