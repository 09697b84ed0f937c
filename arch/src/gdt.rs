//! The boot GDT: a flat 64-bit code segment, a flat data segment and a TSS descriptor,
//! and their conversion to the `kvm_segment`s KVM_SET_SREGS takes.

use kvm_bindings::kvm_segment;

/// Packs a segment descriptor: flags are the access byte in bits 0-7 and the
/// granularity/size nibble in bits 12-15, as in the SDM's descriptor layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code (L=1), data, TSS.
pub(crate) fn boot_gdt() -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Decodes a descriptor into the form KVM expects for a loaded segment register.
pub(crate) fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With G=1 the limit counts 4 KiB pages; KVM wants it in bytes.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Selectors of the boot GDT entries, as the boot registers load them.
    const CODE_SELECTOR: u16 = 0x08;
    const DATA_SELECTOR: u16 = 0x10;
    const TSS_SELECTOR: u16 = 0x18;

    #[test]
    fn code_segment_is_64_bit_flat() {
        let gdt = boot_gdt();
        let cs = kvm_segment_from_gdt(gdt[1], 1);
        assert_eq!(cs.selector, CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let gdt = boot_gdt();
        let ds = kvm_segment_from_gdt(gdt[2], 2);
        assert_eq!(
            (ds.selector, ds.type_, ds.db, ds.l),
            (DATA_SELECTOR, 3, 1, 0)
        );
        let tss = kvm_segment_from_gdt(gdt[3], 3);
        assert_eq!((tss.selector, tss.type_, tss.s), (TSS_SELECTOR, 0xb, 0));
        assert_eq!(tss.limit, 0xffff_ffff);
    }

    #[test]
    fn round_trips_base_and_limit() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = kvm_segment_from_gdt(e, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
