//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its CPUs,
//! its IOAPIC and the ISA interrupt routing. Linux scans 639K-640K for the floating pointer.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{APIC_START, EBDA_START, IOAPIC_PINS, IOAPIC_START};

const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MPC_SPEC_REV: u8 = 4;
const MPC_OEM: &[u8; 8] = b"MICROVMM";
const MPC_PRODUCT: &[u8; 12] = b"000000000000";
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MPC_APIC_USABLE: u8 = 1;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
/// Stepping/model/family reported for every CPU entry (family 6), and FPU+APIC feature flags.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4) | 1;
const CPU_FEATURE_FLAGS: u32 = (1 << 0) | (1 << 9);

/// Highest vCPU count: the floating pointer and the table must fit in the last KiB below 640 KiB.
pub const MAX_VCPUS: u8 = 32;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_VCPUS})")]
    TooManyCpus(u8),
    #[error("the MP table does not fit below 640 KiB")]
    TooLarge,
    #[error("cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the configuration table (header + entries) for `num_cpus` CPUs.
fn config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION]);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURE_FLAGS.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in 0..IOAPIC_PINS as u8 {
        // Conforming polarity and trigger; ISA bus 0, IRQ n -> IOAPIC pin n.
        entries.extend_from_slice(&[ENTRY_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);

    let entry_count = u16::from(num_cpus) + 1 + 1 + IOAPIC_PINS as u16 + 2;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(MPC_SIGNATURE);
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(MPC_SPEC_REV);
    table.push(0); // checksum, filled below
    table.extend_from_slice(MPC_OEM);
    table.extend_from_slice(MPC_PRODUCT);
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The 16-byte floating pointer structure pointing at the configuration table.
fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut mpf = [0u8; 16];
    mpf[0..4].copy_from_slice(MPF_SIGNATURE);
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = MPC_SPEC_REV;
    mpf[10] = checksum(&mpf);
    mpf
}

/// Writes the floating pointer at EBDA_START and the configuration table right after it.
pub fn write_mptable<M: GuestMemory + ?Sized>(mem: &M, num_cpus: u8) -> Result<(), MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let table_addr = EBDA_START + 16;
    let table = config_table(num_cpus);
    if table_addr + table.len() as u64 > 0xa0000 {
        return Err(MpTableError::TooLarge);
    }
    mem.write_slice(
        &floating_pointer(table_addr as u32),
        GuestAddress(EBDA_START),
    )
    .map_err(MpTableError::Write)?;
    mem.write_slice(&table, GuestAddress(table_addr))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_zero_and_counts_match() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_mptable(&mem, 4).unwrap();
        let mut mpf = [0u8; 16];
        mem.read_slice(&mut mpf, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&mpf[0..4], b"_MP_");
        assert_eq!(sum(&mpf), 0);
        let table_addr = u32::from_le_bytes(mpf[4..8].try_into().unwrap()) as u64;
        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(table_addr)).unwrap();
        assert_eq!(&hdr[0..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(sum(&table), 0);
        let count = u16::from_le_bytes([hdr[34], hdr[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        // 4 processor entries of 20 bytes, then 28 entries of 8 bytes.
        assert_eq!(len, 44 + 4 * 20 + 28 * 8);
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        assert_eq!(table[64 + 3], CPU_ENABLED);
    }

    #[test]
    fn refuses_bad_cpu_counts() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(write_mptable(&mem, 0).is_err());
        assert!(write_mptable(&mem, MAX_VCPUS + 1).is_err());
        assert!(write_mptable(&mem, MAX_VCPUS).is_ok());
    }
}
