//! The i8042 keyboard controller, reduced to what a microVM needs: the guest's reset command
//! (0xfe to the command port), which Linux uses for `reboot` with `reboot=k`, ends the VM.

use std::sync::Arc;

use vm_superio::Trigger;

use crate::{BusDevice, Interrupt};

/// Base port 0x60; the command/status port is at offset 4 (0x64).
pub(crate) const I8042_BASE: u64 = 0x60;
pub(crate) const I8042_SIZE: u64 = 5;

struct ResetLine(Arc<dyn Interrupt>);

impl Trigger for ResetLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

pub struct I8042 {
    inner: vm_superio::I8042Device<ResetLine>,
}

impl I8042 {
    /// `reset` fires when the guest asks the controller to reset the CPU.
    pub fn new(reset: Arc<dyn Interrupt>) -> Self {
        I8042 {
            inner: vm_superio::I8042Device::new(ResetLine(reset)),
        }
    }

    pub const BASE: u64 = I8042_BASE;
    pub const SIZE: u64 = I8042_SIZE;
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.inner.read(offset as u8);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                log::error!("i8042: cannot signal the reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Flag(AtomicBool);
    impl Interrupt for Flag {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn reset_command_fires_the_reset_line() {
        let flag = Arc::new(Flag::default());
        let mut dev = I8042::new(flag.clone());
        dev.write(4, &[0x20]);
        assert!(!flag.0.load(Ordering::SeqCst));
        dev.write(4, &[0xfe]);
        assert!(flag.0.load(Ordering::SeqCst));
    }
}
