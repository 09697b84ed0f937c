//! Building a VM: the KVM VM with its in-kernel irqchip and PIT, guest memory, the kernel and
//! its boot structures, the legacy devices on the buses, and the vCPUs with their boot state.

use std::fs::File;
use std::io::Write;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use arch::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, FIRST_DEVICE_IRQ, KVM_TSS_ADDRESS, VIRTIO_MMIO_SIZE,
    VIRTIO_MMIO_START,
};
use arch::MemoryLayout;
use devices::legacy::{Serial, COM1_BASE, COM1_IRQ, I8042, SERIAL_PORT_SIZE};
use devices::virtio::block::{Block, Disk, DiskOptions};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{Net, Tap};
use devices::virtio::{VirtioDevice, VirtioInterrupt};
use devices::Bus;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::events::{EventLine, VmEvent};
use crate::vm::event_loop::VirtioSubscriber;
use crate::vm::memory::{self, GuestMemoryMmap};
use crate::vm::vcpu::VcpuContext;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("this KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    #[error("{what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error("cannot open {what} {path}")]
    OpenFile {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Loader(#[from] arch::loader::LoaderError),
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error(transparent)]
    BootParams(#[from] arch::bootparams::BootParamsError),
    #[error(transparent)]
    MpTable(#[from] arch::mptable::MpTableError),
    #[error("cannot set up vCPU {index}")]
    VcpuRegs {
        index: u8,
        #[source]
        source: arch::regs::RegsError,
    },
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot start the console's output thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Cpu(#[from] crate::vm::cpu::CpuError),
    #[error("cannot place a device on the bus")]
    Bus(#[from] devices::BusError),
    #[error(transparent)]
    Disk(#[from] devices::virtio::block::DiskError),
    #[error(transparent)]
    Tap(#[from] devices::virtio::net::TapError),
    #[error("cannot duplicate the tap descriptor passed for a NIC")]
    DupTap(#[source] std::io::Error),
    #[error("cannot list the vCPU's MSRs")]
    Msrs(#[source] crate::vm::state_error::KvmStateError),
    #[error("too many virtio devices: {0} (at most {max})", max = MAX_VIRTIO_DEVICES)]
    TooManyDevices(usize),
    #[error("the prepared guest memory does not have the layout of {0} MiB")]
    PreparedMemory(u64),
}

/// IOAPIC pins 5..23 are free for virtio devices.
pub(crate) const MAX_VIRTIO_DEVICES: usize =
    (arch::layout::IOAPIC_PINS - arch::layout::FIRST_DEVICE_IRQ) as usize;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

/// What stays with the VM once its vCPU contexts and device subscribers are handed to their threads.
pub(crate) struct BuiltParts {
    pub(crate) kvm: Kvm,
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) cpuids: Vec<kvm_bindings::CpuId>,
    pub(crate) tsc_khz: Option<u32>,
    pub(crate) msr_list: Vec<u32>,
}

impl BuiltVm {
    /// Splits off the vCPU contexts (for their threads) and the device subscribers (for the event loop).
    pub(crate) fn split(self) -> (BuiltParts, Vec<VcpuContext>, Vec<VirtioSubscriber>) {
        let parts = BuiltParts {
            kvm: self.kvm,
            vm_fd: self.vm_fd,
            memory: self.memory,
            serial: self.serial,
            transports: self.transports,
            cpuids: self.cpuids,
            tsc_khz: self.tsc_khz,
            msr_list: self.msr_list,
        };
        (parts, self.vcpus, self.virtio)
    }
}

/// How the VM's initial state comes about.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BuildMode {
    /// Load the kernel and boot it.
    Boot,
    /// Leave memory empty and the vCPUs unset: a migration fills them in. Disks are opened
    /// without their locks, which are taken at commit.
    Incoming,
}

/// A VM ready to run: everything but the vCPU threads.
pub(crate) struct BuiltVm {
    pub(crate) kvm: Kvm,
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) vcpus: Vec<VcpuContext>,
    /// Virtio devices with their queue eventfds, for the event loop.
    pub(crate) virtio: Vec<VirtioSubscriber>,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Each vCPU's CPUID table: what the guest sees, and what travels with it.
    pub(crate) cpuids: Vec<kvm_bindings::CpuId>,
    /// The guest's TSC frequency (where KVM reports it).
    pub(crate) tsc_khz: Option<u32>,
    /// MSRs that are saved and restored.
    pub(crate) msr_list: Vec<u32>,
}

const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Pit2,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Irqfd,
    Cap::ExtCpuid,
];

/// Builds the VM described by `config`, in `prepared` guest memory if given (a destination
/// that mapped and faulted it in while it waited; it must have the config's layout). Guest
/// console output goes to `console_out`. A received VM's vCPUs get `guest_cpu` (the
/// source's CPUID tables and TSC rate); a booted one this host's CPU under its CPU model.
pub(crate) fn build(
    config: &VmConfig,
    mode: BuildMode,
    guest_cpu: Option<&crate::vm::cpu::GuestCpu>,
    prepared: Option<GuestMemoryMmap>,
    console_out: Box<dyn Write + Send>,
    events: Sender<VmEvent>,
) -> Result<BuiltVm, BuildError> {
    let kvm = crate::privileges::open_kvm().map_err(BuildError::OpenKvm)?;
    for cap in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(BuildError::MissingCap(*cap));
        }
    }
    let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    // The irqchip must exist before the vCPUs so each gets an in-kernel local APIC.
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

    let layout = MemoryLayout::new(config.memory_bytes);
    let memory = match prepared {
        Some(m) if memory::matches(&m, &layout) => m,
        Some(_) => return Err(BuildError::PreparedMemory(config.memory_bytes >> 20)),
        None => memory::create(&layout)?,
    };
    memory::register(&vm_fd, &memory, 0)?;

    let mut mmio = Bus::new();
    let mut cmdline = config.cmdline.clone();
    let mut virtio_devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        let opts = DiskOptions {
            path: disk.path.clone(),
            readonly: disk.readonly,
            direct: disk.direct,
            serial: disk.serial.clone(),
        };
        let disk = match mode {
            BuildMode::Boot => Disk::open(&opts)?,
            BuildMode::Incoming => Disk::open_unlocked(&opts)?,
        };
        virtio_devices.push(Box::new(Block::new(disk)));
    }
    for net in &config.nets {
        let tap = match &net.tap_fd {
            // A descriptor the API's caller passed: a duplicate, so that a reboot here can
            // take it again.
            Some(fd) => Tap::from_fd(fd.0.try_clone().map_err(BuildError::DupTap)?)?,
            None => Tap::open(&net.tap)?,
        };
        virtio_devices.push(Box::new(Net::new(Box::new(tap), net.mac)));
    }
    if virtio_devices.len() > MAX_VIRTIO_DEVICES {
        return Err(BuildError::TooManyDevices(virtio_devices.len()));
    }
    let mut virtio = Vec::new();
    for (i, device) in virtio_devices.into_iter().enumerate() {
        let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
        let irq = FIRST_DEVICE_IRQ + i as u32;
        virtio.push(attach_virtio(
            &vm_fd, &memory, &mut mmio, device, base, irq,
        )?);
        cmdline.push(' ');
        cmdline.push_str(&devices::virtio::mmio::cmdline_entry(
            base,
            VIRTIO_MMIO_SIZE,
            irq,
        ));
    }
    let mmio = Arc::new(mmio);

    let entry = match mode {
        BuildMode::Boot => {
            let entry = load_guest_images(config, &cmdline, &layout, &memory)?;
            arch::mptable::write_mptable(&memory, config.vcpus)?;
            arch::regs::write_boot_tables(&memory)
                .map_err(|source| BuildError::VcpuRegs { index: 0, source })?;
            Some(entry)
        }
        BuildMode::Incoming => None,
    };

    // Legacy devices on the port bus.
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm_fd
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("KVM_IRQFD (COM1)"))?;
    // The vCPU never waits for the console's reader (see console::output).
    let console_out = crate::console::output::buffered(console_out).map_err(BuildError::Thread)?;
    let serial = Arc::new(Mutex::new(Serial::new(Arc::new(serial_irq), console_out)));
    let i8042 = Arc::new(Mutex::new(I8042::new(Arc::new(EventLine::new(
        events.clone(),
        || VmEvent::GuestReset,
    )))));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), COM1_BASE, SERIAL_PORT_SIZE)?;
    pio.insert(i8042, I8042::BASE, I8042::SIZE)?;
    let pio = Arc::new(pio);

    let (vcpus, cpuids, tsc_khz) = create_vcpus(
        &kvm,
        &vm_fd,
        config,
        guest_cpu,
        entry,
        (&pio, &mmio, &events),
    )?;
    let msr_list =
        crate::vm::vcpu_state::saveable_msrs(&kvm, &vcpus[0].fd).map_err(BuildError::Msrs)?;
    let transports = virtio.iter().map(|s| s.transport()).collect();
    Ok(BuiltVm {
        kvm,
        vm_fd: Arc::new(vm_fd),
        memory,
        serial,
        vcpus,
        virtio,
        transports,
        cpuids,
        tsc_khz,
        msr_list,
    })
}

/// Puts a virtio device behind an MMIO transport at `base`: its interrupt through an irqfd on
/// `irq`, each queue's notifications through an ioeventfd on QueueNotify matching the queue index.
fn attach_virtio(
    vm_fd: &VmFd,
    memory: &GuestMemoryMmap,
    mmio: &mut Bus,
    device: Box<dyn VirtioDevice>,
    base: u64,
    irq: u32,
) -> Result<VirtioSubscriber, BuildError> {
    let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm_fd
        .register_irqfd(&irq_evt, irq)
        .map_err(kvm_err("KVM_IRQFD (virtio)"))?;
    let interrupt = Arc::new(VirtioInterrupt::new(Arc::new(irq_evt)));
    let queue_count = device.queue_max_sizes().len();
    let mut queue_events = Vec::with_capacity(queue_count);
    for q in 0..queue_count {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        let addr = IoEventAddress::Mmio(base + devices::virtio::mmio::REG_QUEUE_NOTIFY);
        vm_fd
            .register_ioevent(&evt, &addr, q as u32)
            .map_err(kvm_err("KVM_IOEVENTFD (virtio queue)"))?;
        queue_events.push(evt);
    }
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        device,
        memory.clone(),
        interrupt,
    )));
    mmio.insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
    Ok(VirtioSubscriber::new(transport, queue_events))
}

/// Loads kernel, command line and initrd, and writes the zero page; returns the entry point.
fn load_guest_images(
    config: &VmConfig,
    cmdline_str: &str,
    layout: &MemoryLayout,
    memory: &GuestMemoryMmap,
) -> Result<vm_memory::GuestAddress, BuildError> {
    let open = |what, path: &std::path::Path| {
        File::open(path).map_err(|source| BuildError::OpenFile {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let mut kernel_file = open("kernel", &config.kernel)?;
    let kernel = arch::loader::load_kernel(memory, &mut kernel_file)?;

    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BuildError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(cmdline_str)
        .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    linux_loader::loader::load_cmdline(memory, vm_memory::GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BuildError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BuildError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let initrd = match &config.initrd {
        Some(path) => {
            let mut f = open("initrd", path)?;
            // initrd_addr_max from the bzImage header; an ELF vmlinux accepts any 32-bit address.
            let addr_max = kernel
                .setup_header
                .map_or(0xffff_ffff, |h| u64::from(h.initrd_addr_max));
            Some(arch::loader::load_initrd(
                memory, layout, kernel.end, addr_max, &mut f,
            )?)
        }
        None => None,
    };
    arch::bootparams::write_zero_page(
        memory,
        layout,
        &arch::bootparams::ZeroPageInput {
            setup_header: kernel.setup_header,
            cmdline_len,
            initrd,
        },
    )?;
    Ok(kernel.entry)
}

/// The vCPUs' contexts, their CPUID tables, and the guest's TSC rate.
type CreatedVcpus = (Vec<VcpuContext>, Vec<kvm_bindings::CpuId>, Option<u32>);

/// Creates the vCPUs with their CPUID (and, for a received VM, its TSC rate); with an entry
/// point, also their boot registers.
fn create_vcpus(
    kvm: &Kvm,
    vm_fd: &VmFd,
    config: &VmConfig,
    guest_cpu: Option<&crate::vm::cpu::GuestCpu>,
    entry: Option<vm_memory::GuestAddress>,
    (pio, mmio, events): (&Arc<Bus>, &Arc<Bus>, &Sender<VmEvent>),
) -> Result<CreatedVcpus, BuildError> {
    let count = config.vcpus;
    let mut cpuids = match guest_cpu {
        // The guest's own tables, exactly: never this host's.
        Some(g) => g.tables(count)?,
        None => crate::vm::cpu::boot_tables(kvm, config)?,
    };
    let mut out = Vec::new();
    let mut tsc_khz = None;
    for (index, cpuid) in (0..count).zip(cpuids.iter_mut()) {
        let fd = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        if let Some(khz) = guest_cpu.and_then(|g| g.tsc_khz) {
            let invariant = crate::vm::cpu::shows_invariant_tsc(cpuid.as_slice());
            crate::vm::cpu::set_guest_tsc(kvm, &fd, khz, invariant)?;
        }
        if tsc_khz.is_none() {
            tsc_khz = fd.get_tsc_khz().ok();
        }
        // A booted guest is shown its TSC rate (a received one's tables already say it).
        if let (None, Some(khz)) = (guest_cpu, tsc_khz) {
            arch::cpuid::add_timing_leaf(cpuid, khz);
        }
        let regs_err = |source| BuildError::VcpuRegs { index, source };
        fd.set_cpuid2(cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        // Only the boot vCPU starts at the entry point; the others stay in their reset state
        // until the guest starts them with INIT/SIPI, as on a PC.
        if let Some(entry) = entry.filter(|_| index == 0) {
            arch::regs::setup_msrs(&fd).map_err(regs_err)?;
            arch::regs::setup_regs(&fd, entry).map_err(regs_err)?;
            arch::regs::setup_sregs(&fd).map_err(regs_err)?;
            arch::regs::setup_fpu(&fd).map_err(regs_err)?;
            arch::regs::setup_lapic(&fd).map_err(regs_err)?;
        }
        out.push(VcpuContext {
            index,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            events: events.clone(),
        });
    }
    Ok((out, cpuids, tsc_khz))
}
