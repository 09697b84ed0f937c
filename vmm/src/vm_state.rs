//! VM-wide KVM state: the PIT, the KVM clock and the in-kernel irqchip (PIC master, PIC slave,
//! IOAPIC). Restored before any vCPU runs, so the guest clock continues where it stopped.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
}

fn chip(vm: &VmFd, id: u32) -> Result<kvm_irqchip, String> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c)
        .map_err(|e| format!("KVM_GET_IRQCHIP {id} failed: {e}"))?;
    Ok(c)
}

pub fn save(vm: &VmFd) -> Result<VmState, String> {
    Ok(VmState {
        pit: vm
            .get_pit2()
            .map_err(|e| format!("KVM_GET_PIT2 failed: {e}"))?,
        clock: vm
            .get_clock()
            .map_err(|e| format!("KVM_GET_CLOCK failed: {e}"))?,
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
    })
}

pub fn restore(vm: &VmFd, s: &VmState) -> Result<(), String> {
    vm.set_pit2(&s.pit)
        .map_err(|e| format!("KVM_SET_PIT2 failed: {e}"))?;
    // Only the clock value travels; the flags describe the source host's clock source.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock)
        .map_err(|e| format!("KVM_SET_CLOCK failed: {e}"))?;
    for c in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        vm.set_irqchip(c)
            .map_err(|e| format!("KVM_SET_IRQCHIP {} failed: {e}", c.chip_id))?;
    }
    Ok(())
}
