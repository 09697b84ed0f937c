//! Address-range maps from a port or guest-physical address to the device that owns it.
//! A vCPU exit looks its address up here; each device sits behind its own lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through port I/O or MMIO. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        base: u64,
        len: u64,
        other_base: u64,
        other_len: u64,
    },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A map of non-overlapping address ranges to devices.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base+len)`; an overlap with a placed device is refused.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::BadRange { base, len });
        }
        let end = base + (len - 1);
        let overlap = self
            .devices
            .range(..=end)
            .next_back()
            .filter(|(b, e)| *b + (e.len - 1) >= base);
        if let Some((b, e)) = overlap {
            return Err(BusError::Overlap {
                base,
                len,
                other_base: *b,
                other_len: e.len,
            });
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must lie inside the device's range.
        if offset.checked_add(size as u64)? <= entry.len {
            Some((offset, &entry.device))
        } else {
            None
        }
    }

    /// Reads from the device at `addr`; false (and `data` untouched) when no device owns it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; false when no device owns it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device whose lock was poisoned by a panicking vCPU thread is still usable: its state is
/// plain data, and the VMM is already shutting down on that panic.
fn lock(dev: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
        fill: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.fill.wrapping_add(offset as u8));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn dev(fill: u8) -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder {
            fill,
            ..Default::default()
        }))
    }

    #[test]
    fn dispatches_to_the_owner_with_relative_offsets() {
        let a = dev(0x10);
        let b = dev(0x20);
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 1).unwrap();
        let mut byte = [0u8];
        assert!(bus.read(0x3fd, &mut byte));
        assert_eq!(byte[0], 0x15);
        assert!(bus.write(0x60, &[0xfe]));
        assert_eq!(b.lock().unwrap().writes, vec![(0, vec![0xfe])]);
        assert!(a.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn unowned_addresses_and_straddling_accesses_miss() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x1000, 0x100).unwrap();
        let mut data = [0xaau8; 4];
        assert!(!bus.read(0xfff, &mut data[..1]));
        assert!(!bus.read(0x10fe, &mut data));
        assert_eq!(data, [0xaa; 4]);
        assert!(!bus.write(0x1100, &[1]));
        assert!(bus.read(0x10fc, &mut data));
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x1000, 0x100).unwrap();
        for (base, len) in [(0x1000, 1), (0xf00, 0x101), (0x10ff, 0x10), (0x0, 0x2000)] {
            assert!(
                matches!(bus.insert(dev(0), base, len), Err(BusError::Overlap { .. })),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(dev(0), 0x1100, 0x100).unwrap();
        bus.insert(dev(0), 0xf00, 0x100).unwrap();
        assert!(matches!(
            bus.insert(dev(0), 5, 0),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev(0), u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
    }
}
