//! The source side over a running [`Machine`]: memory reads, the union of KVM's dirty log and
//! the VMM's own dirty bitmap, pause with device freeze and disk flush, state capture.

use std::sync::Arc;

use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use migration::dirty::DirtyBitmap;
use migration::vm::{RamRegion, SourceVm, VmError, VmResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::state::{MigrationConfig, MigrationState};
use crate::vm::machine::Machine;

pub(crate) struct MachineSource {
    pub(crate) machine: Arc<Machine>,
    /// The user had paused the VM before the migration: giving up leaves its vCPUs paused.
    pub(crate) user_paused: bool,
    /// KVM's dirty log is cleared lazily, by [`SourceVm::clear_dirty`] (manual protection).
    pub(crate) manual_protect: std::sync::atomic::AtomicBool,
}

impl MachineSource {
    pub(crate) fn new(machine: Arc<Machine>, user_paused: bool) -> Self {
        MachineSource {
            machine,
            user_paused,
            manual_protect: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn manual(&self) -> bool {
        self.manual_protect
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl MachineSource {
    fn m(&self) -> &Machine {
        &self.machine
    }
}

impl SourceVm for MachineSource {
    fn config(&self) -> VmResult<Vec<u8>> {
        let m = self.m();
        let mut disk_sizes = Vec::new();
        for d in &m.config.disks {
            disk_sizes.push(
                devices::virtio::block::disk_size(&d.path)
                    .map_err(|e| VmError::Config(e.into()))?,
            );
        }
        // The payload stays here: the destination boots only what its operator grants.
        let vm = crate::config::VmConfig {
            kernel: Default::default(),
            initrd: None,
            cmdline: String::new(),
            ..m.config.clone()
        };
        let cfg = MigrationConfig {
            vm,
            cpu: crate::vm::cpu::GuestCpu {
                cpuids: m.cpuids.iter().map(|c| c.as_slice().to_vec()).collect(),
                tsc_khz: m.tsc_khz,
            },
            disk_sizes,
        };
        migration::envelope::seal(&cfg).map_err(|e| VmError::Config(e.into()))
    }

    fn regions(&self) -> Vec<RamRegion> {
        self.m().ram_regions()
    }

    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> VmResult<()> {
        self.m()
            .memory
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| VmError::Memory(e.into()))
    }

    fn page_is_zero(&self, gpa: u64) -> VmResult<bool> {
        let slice = self
            .m()
            .memory
            .get_slice(GuestAddress(gpa), 4096)
            .map_err(|e| VmError::Memory(e.into()))?;
        let guard = slice.ptr_guard();
        let words = guard.as_ptr().cast::<u64>();
        // The guest may write the page while it is looked at: volatile reads, as vm-memory
        // does for guest memory; a page written meanwhile is dirty again and sent next round.
        Ok((0..512).all(|i| {
            // SAFETY: `guard` keeps the 4096-byte slice mapped; `i < 512` stays inside it, and
            // a guest page is 8-byte aligned.
            unsafe { std::ptr::read_volatile(words.add(i)) == 0 }
        }))
    }

    fn start_dirty_log(&self) -> VmResult<()> {
        let m = self.m();
        let manual = crate::vm::dirty_log::enable_manual_protect(&m.kvm, &m.vm_fd);
        self.manual_protect
            .store(manual, std::sync::atomic::Ordering::Relaxed);
        crate::vm::memory::register(&m.vm_fd, &m.memory, KVM_MEM_LOG_DIRTY_PAGES)
            .map_err(|e| VmError::DirtyLog(e.into()))?;
        // Forget everything recorded so far: round 0 sends all memory anyway (with manual
        // protection KVM's log starts full and round 0 clears it as it goes).
        for region in m.memory.iter() {
            std::ops::Deref::deref(region).bitmap().reset();
        }
        if !manual {
            self.take_dirty()?;
        }
        Ok(())
    }

    fn clear_dirty(&self, region: usize, first_page: usize, words: &[u64]) -> VmResult<()> {
        if !self.manual() {
            return Ok(());
        }
        let m = self.m();
        let slot_pages = m.memory.iter().nth(region).map_or(0, |r| r.len() / 4096);
        crate::vm::dirty_log::clear(
            &m.vm_fd,
            region as u32,
            slot_pages,
            first_page as u64,
            words,
        )
        .map_err(|e| VmError::DirtyLog(e.into()))
    }

    fn stop_dirty_log(&self) {
        let m = self.m();
        if let Err(e) = crate::vm::memory::register(&m.vm_fd, &m.memory, 0) {
            log::warn!("cannot turn the dirty log off: {e}");
        }
    }

    fn peek_dirty(&self, region: usize) -> VmResult<Option<DirtyBitmap>> {
        if !self.manual() {
            return Ok(None);
        }
        let m = self.m();
        let Some(r) = m.memory.iter().nth(region) else {
            return Ok(None);
        };
        // With manual protection, reading the log clears nothing.
        let words = m
            .vm_fd
            .get_dirty_log(region as u32, r.len() as usize)
            .map_err(|e| VmError::DirtyLog(e.into()))?;
        Ok(Some(DirtyBitmap::from_words(
            (r.len() / 4096) as usize,
            words,
        )))
    }

    fn take_dirty(&self) -> VmResult<Vec<DirtyBitmap>> {
        let m = self.m();
        let mut out = Vec::new();
        for (slot, region) in m.memory.iter().enumerate() {
            let pages = (region.len() / 4096) as usize;
            let kvm_words = m
                .vm_fd
                .get_dirty_log(slot as u32, region.len() as usize)
                .map_err(|e| VmError::DirtyLog(e.into()))?;
            let mut bitmap = DirtyBitmap::from_words(pages, kvm_words);
            // Pages the VMM itself wrote (device DMA, used rings) are not in KVM's log.
            let vmm_words = std::ops::Deref::deref(region).bitmap().get_and_reset();
            bitmap.union_with(&DirtyBitmap::from_words(pages, vmm_words));
            out.push(bitmap);
        }
        Ok(out)
    }

    fn pause(&self) -> VmResult<()> {
        if let Err(e) = self.m().pause_all() {
            // A pause that did not complete (a vCPU that did not stop in time) counts as no
            // pause: nothing is lost yet, the guest runs on.
            let _ = self.resume();
            return Err(VmError::Pause(e.into()));
        }
        Ok(())
    }

    fn flush(&self) -> VmResult<()> {
        // Each disk's flush is taken out of its device under the transport's lock (a quick
        // step), then run with no lock held: a flush that hangs (the sender runs this on its
        // blocking pool, so the deadlines still fire) leaves the devices free for the give-up
        // to thaw and the guest to run on.
        let mut flushes = Vec::new();
        let mut taken: Result<(), devices::virtio::BackendError> = Ok(());
        self.m().each_transport(|t| {
            if taken.is_ok() {
                match t.device().backend_flush() {
                    Ok(Some(f)) => flushes.push(f),
                    Ok(None) => {}
                    Err(e) => taken = Err(e),
                }
            }
        });
        taken.map_err(|e| VmError::Pause(e.into()))?;
        for flush in flushes {
            flush().map_err(|e| VmError::Pause(e.into()))?;
        }
        Ok(())
    }

    fn resume(&self) -> VmResult<()> {
        if self.user_paused {
            self.m().thaw_devices();
        } else {
            self.m().resume_all();
        }
        Ok(())
    }

    fn save_state(&self) -> VmResult<Vec<u8>> {
        let m = self.m();
        let vm = crate::vm::vm_state::save(&m.vm_fd).map_err(|e| VmError::Save(e.into()))?;
        let msr_list = Arc::new(m.msr_list.clone());
        let cpuids: Arc<Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>> =
            Arc::new(m.cpuids.iter().map(|c| c.as_slice().to_vec()).collect());
        let vcpus = m
            .vcpus
            .on_each(move |i, fd| crate::vm::vcpu_state::save(fd, &msr_list, &cpuids[i as usize]))
            .map_err(|e| VmError::Save(e.into()))?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VmError::Save(e.into()))?;
        let serial = m
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot();
        let mut transports = Vec::new();
        m.each_transport(|t| transports.push(t.snapshot()));
        let state = MigrationState {
            vm,
            vcpus,
            serial,
            transports,
        };
        migration::envelope::seal(&state).map_err(|e| VmError::Save(e.into()))
    }

    fn release(&self) {
        self.m().release_backends();
    }

    fn throttle(&self, percent: u8) {
        self.m().vcpus.throttle(percent);
    }
}
