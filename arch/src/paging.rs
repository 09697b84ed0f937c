//! Identity page tables for the 64-bit entry: 2 MiB pages covering the first 4 GiB, so the
//! kernel, its boot structures and the MMIO gap are all reachable before the guest builds its own.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{PDE_PAGES, PDE_START, PDPTE_START, PML4_START};

const PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes the identity tables; returns the value for CR3.
pub(crate) fn write_identity_tables<M: GuestMemory + ?Sized>(
    mem: &M,
) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT_WRITABLE, GuestAddress(PML4_START))?;
    for dir in 0..PDE_PAGES {
        let pd = PDE_START + dir * 0x1000;
        mem.write_obj(pd | PRESENT_WRITABLE, GuestAddress(PDPTE_START + dir * 8))?;
        for i in 0..512u64 {
            let phys = ((dir << 9) + i) << 21;
            mem.write_obj(
                phys | PRESENT_WRITABLE | PAGE_SIZE_2M,
                GuestAddress(pd + i * 8),
            )?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn maps_four_gib_identically() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_START);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpte3: u64 = mem.read_obj(GuestAddress(PDPTE_START + 3 * 8)).unwrap();
        assert_eq!(pdpte3, (PDE_START + 0x3000) | 3);
        // The last 2 MiB page of the 4th GiB maps 0xffe0_0000.
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
    }
}
