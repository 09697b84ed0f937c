//! Guest physical memory layout of a microVM.
//!
//! Low memory holds the boot structures at fixed addresses below 1 MiB; RAM runs from 0 up to
//! the 32-bit MMIO gap (3 GiB .. 4 GiB, where the IOAPIC, the local APIC and the virtio-mmio
//! devices live) and continues above 4 GiB.

use vm_memory::GuestAddress;

/// GDT used for the 64-bit entry.
pub(crate) const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the guest installs its own before enabling interrupts.
pub(crate) const BOOT_IDT_START: u64 = 0x520;
/// Linux zero page (struct boot_params).
pub(crate) const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub(crate) const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, four page directories of 2 MiB pages (4 GiB).
pub(crate) const PML4_START: u64 = 0x9000;
pub(crate) const PDPTE_START: u64 = 0xa000;
pub(crate) const PDE_START: u64 = 0xb000;
/// Number of page directories, each mapping 1 GiB.
pub(crate) const PDE_PAGES: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Linux on x86 accepts at most 2048 bytes (COMMAND_LINE_SIZE); newer kernels more.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; the MP floating pointer goes here (Linux scans 639K-640K).
pub(crate) const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole: kernels are loaded at or above it.
pub(crate) const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap.
pub(crate) const MMIO_GAP_START: u64 = 0xc000_0000;
pub(crate) const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Virtio-mmio device windows, one page each, from here upwards.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC and local APIC default addresses (handled in-kernel by KVM).
pub(crate) const IOAPIC_START: u64 = 0xfec0_0000;
pub(crate) const APIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the TSS on Intel hosts, inside the MMIO gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// First IRQ line handed to virtio devices (0-4 are taken by the PIT, keyboard, cascade and COM1/COM2).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// The in-kernel IOAPIC has 24 pins.
pub const IOAPIC_PINS: u32 = 24;

/// The RAM regions of a guest with `mem_size` bytes, split around the MMIO gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// (start, length) of each RAM region, in ascending order.
    pub ram: Vec<(GuestAddress, usize)>,
}

impl MemoryLayout {
    pub fn new(mem_size: u64) -> Self {
        let mut ram = Vec::new();
        let low = mem_size.min(MMIO_GAP_START);
        ram.push((GuestAddress(0), low as usize));
        if mem_size > MMIO_GAP_START {
            ram.push((
                GuestAddress(MMIO_GAP_END),
                (mem_size - MMIO_GAP_START) as usize,
            ));
        }
        MemoryLayout { ram }
    }

    /// End (exclusive) of the RAM below the MMIO gap.
    pub(crate) fn low_ram_end(&self) -> u64 {
        self.ram[0].0 .0 + self.ram[0].1 as u64
    }

    /// Total RAM in bytes.
    pub fn total(&self) -> u64 {
        self.ram.iter().map(|r| r.1 as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region() {
        let l = MemoryLayout::new(256 << 20);
        assert_eq!(l.ram, vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(l.low_ram_end(), 256 << 20);
    }

    #[test]
    fn large_guest_is_split_around_the_gap() {
        let l = MemoryLayout::new(4 << 30);
        assert_eq!(l.ram.len(), 2);
        assert_eq!(l.ram[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(l.ram[1], (GuestAddress(MMIO_GAP_END), (1usize << 30)));
        assert_eq!(l.total(), 4 << 30);
    }
}
