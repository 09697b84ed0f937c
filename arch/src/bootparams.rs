//! The Linux zero page (struct boot_params): the setup header the kernel image carries (or a
//! synthetic one for an ELF vmlinux), the command line pointer, the initrd and the e820 map.
//! Format: Documentation/arch/x86/boot.rst and zero-page.rst.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{MemoryLayout, CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Alignment the kernel may assume it was loaded at (CONFIG_PHYSICAL_ALIGN of x86-64 defconfig).
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const E820_MAX_ENTRIES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("too many e820 entries")]
    E820Overflow,
    #[error("cannot write the zero page into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// What the zero page describes besides memory.
pub struct ZeroPageInput {
    /// Header copied from a bzImage; `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Length of the command line without its terminating NUL.
    pub cmdline_len: usize,
    /// Guest address and size of the initrd.
    pub initrd: Option<(GuestAddress, usize)>,
}

/// Builds the zero page for `layout` and writes it at ZERO_PAGE_START.
pub fn write_zero_page<M: GuestMemory + ?Sized>(
    mem: &M,
    layout: &MemoryLayout,
    input: &ZeroPageInput,
) -> Result<(), BootParamsError> {
    let params = build_zero_page(layout, input)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootParamsError::Write)
}

fn build_zero_page(
    layout: &MemoryLayout,
    input: &ZeroPageInput,
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = input.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = input.cmdline_len as u32 + 1;
    if let Some((addr, size)) = input.initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    add_e820(&mut params, 0, EBDA_START)?;
    let low_end = layout.low_ram_end();
    if low_end > HIMEM_START {
        add_e820(&mut params, HIMEM_START, low_end - HIMEM_START)?;
    }
    for &(start, len) in layout.ram.iter().skip(1) {
        add_e820(&mut params, start.0, len as u64)?;
    }
    Ok(params)
}

fn add_e820(params: &mut boot_params, addr: u64, size: u64) -> Result<(), BootParamsError> {
    let idx = params.e820_entries as usize;
    if idx >= E820_MAX_ENTRIES || idx >= params.e820_table.len() {
        return Err(BootParamsError::E820Overflow);
    }
    params.e820_table[idx] = boot_e820_entry {
        addr,
        size,
        r#type: E820_RAM,
    };
    params.e820_entries += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_skips_the_legacy_hole_and_the_mmio_gap() {
        let layout = MemoryLayout::new(5 << 30);
        let p = build_zero_page(
            &layout,
            &ZeroPageInput {
                setup_header: None,
                cmdline_len: 10,
                initrd: Some((GuestAddress(0x100_0000), 4096)),
            },
        )
        .unwrap();
        assert_eq!(p.e820_entries, 3);
        let e = |i: usize| {
            let entry = p.e820_table[i];
            ({ entry.addr }, { entry.size })
        };
        assert_eq!(e(0), (0, EBDA_START));
        assert_eq!(
            e(1),
            (HIMEM_START, crate::layout::MMIO_GAP_START - HIMEM_START)
        );
        assert_eq!(e(2), (crate::layout::MMIO_GAP_END, 2 << 30));
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.cmdline_size }, 11);
        assert_eq!({ hdr.ramdisk_image }, 0x100_0000);
        assert_eq!({ hdr.type_of_loader }, 0xff);
    }
}
