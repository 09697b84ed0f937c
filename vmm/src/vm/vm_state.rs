//! VM-wide KVM state: the PIT, the KVM clock and the in-kernel irqchip (PIC master, PIC slave,
//! IOAPIC). Restored before any vCPU runs, so the guest clock continues where it stopped (and,
//! where both hosts pair it with real time, also counts the downtime).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Cap, VmFd};
use serde::{Deserialize, Serialize};

use super::state_error::{ioctl, KvmStateError};

#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
}

/// Sets the KVM clock to the saved one. Where both hosts pair the clock with their real time
/// (the source saved it with `KVM_CLOCK_REALTIME`, this host's KVM accepts the flag), KVM
/// adds the real time that passed since the save, so the guest's clock does not lose the
/// downtime (given hosts whose clocks agree, e.g. by NTP; a destination clock behind the
/// source's adds nothing). Otherwise the guest's clock stands still while it is paused and
/// its NTP (or a later `hwclock`) catches up.
fn restore_clock(vm: &VmFd, saved: &kvm_clock_data) -> Result<(), KvmStateError> {
    let accepted = u32::try_from(vm.check_extension_int(Cap::AdjustClock)).unwrap_or(0);
    let pair = saved.flags & KVM_CLOCK_REALTIME != 0 && accepted & KVM_CLOCK_REALTIME != 0;
    let plain = kvm_clock_data {
        clock: saved.clock,
        ..Default::default()
    };
    if pair {
        let paired = kvm_clock_data {
            flags: KVM_CLOCK_REALTIME,
            realtime: saved.realtime,
            ..plain
        };
        match vm.set_clock(&paired) {
            Ok(()) => {
                log::info!("kvmclock restored paired with real time: the downtime is not lost");
                return Ok(());
            }
            Err(e) => log::warn!(
                "KVM_SET_CLOCK with KVM_CLOCK_REALTIME failed ({e}); the guest's clock loses the downtime"
            ),
        }
    } else {
        log::info!(
            "kvmclock restored without real-time pairing (saved flags {:#x}, this host accepts {accepted:#x}): the guest's clock loses the downtime",
            saved.flags
        );
    }
    vm.set_clock(&plain).map_err(ioctl("KVM_SET_CLOCK"))
}

fn chip(vm: &VmFd, id: u32) -> Result<kvm_irqchip, KvmStateError> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(ioctl("KVM_GET_IRQCHIP"))?;
    Ok(c)
}

pub(crate) fn save(vm: &VmFd) -> Result<VmState, KvmStateError> {
    Ok(VmState {
        pit: vm.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?,
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
    })
}

pub(crate) fn restore(vm: &VmFd, s: &VmState) -> Result<(), KvmStateError> {
    vm.set_pit2(&s.pit).map_err(ioctl("KVM_SET_PIT2"))?;
    restore_clock(vm, &s.clock)?;
    for c in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        vm.set_irqchip(c).map_err(ioctl("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}
