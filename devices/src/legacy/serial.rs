//! The 8250 UART on COM1 (vm-superio's model): guest output goes to a writer (the VMM's
//! stdout), host input is queued into its receive FIFO.

use std::io::Write;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Trigger;

use crate::{BusDevice, Interrupt};

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const SERIAL_PORT_SIZE: u64 = 8;

/// Adapts an [`Interrupt`] to vm-superio's trigger trait.
#[derive(Clone)]
pub(crate) struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
    /// Set after the first failed write to the output: a closed console is reported once.
    output_broken: bool,
}

impl Serial {
    pub fn new(irq: Arc<dyn Interrupt>, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(IrqTrigger(irq), out),
            output_broken: false,
        }
    }

    /// Queues host input for the guest; returns how many bytes fitted in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or_else(|e| {
            log::warn!("serial: cannot raise the receive interrupt: {e:?}");
            0
        })
    }

    /// Replaces the registers and pending input with a snapshot's, keeping the interrupt and
    /// output. A snapshot the UART cannot hold (more pending input than its FIFO) is refused
    /// and the UART left as it was.
    pub fn restore(&mut self, s: &SerialSnapshot) -> Result<(), SerialRestoreError> {
        s.validate()?;
        let trigger = self.uart.interrupt_evt().clone();
        let placeholder = vm_superio::Serial::new(
            trigger.clone(),
            Box::new(std::io::sink()) as Box<dyn Write + Send>,
        );
        let old = std::mem::replace(&mut self.uart, placeholder);
        let state = old.state();
        let out = old.into_writer();
        match vm_superio::Serial::from_state(&s.to_state(), trigger.clone(), NoEvents, out) {
            Ok(uart) => {
                self.uart = uart;
                Ok(())
            }
            Err(e) => {
                // Checked above, so not expected; put the old UART back all the same.
                let out = std::mem::replace(
                    &mut self.uart,
                    vm_superio::Serial::new(
                        trigger.clone(),
                        Box::new(std::io::sink()) as Box<dyn Write + Send>,
                    ),
                )
                .into_writer();
                self.uart = vm_superio::Serial::from_state(&state, trigger, NoEvents, out)
                    .unwrap_or_else(|_| unreachable!("a state the UART produced is valid"));
                Err(SerialRestoreError::Rejected(format!("{e:?}")))
            }
        }
    }

    pub fn snapshot(&self) -> SerialSnapshot {
        SerialSnapshot::from_state(&self.uart.state())
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < SERIAL_PORT_SIZE {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < SERIAL_PORT_SIZE {
            if let Err(e) = self.uart.write(offset as u8, data[0]) {
                if !self.output_broken {
                    log::warn!(
                        "serial: console output failed ({e:?}); further failures are not reported"
                    );
                    self.output_broken = true;
                }
            }
            // Console output is interactive: a prompt without a newline must show at once.
            if offset == 0 {
                let _ = self.uart.writer_mut().flush();
            }
        }
    }
}

/// The UART's receive FIFO holds this many bytes (vm-superio's FIFO_SIZE).
pub const SERIAL_FIFO_SIZE: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SerialRestoreError {
    #[error(
        "serial state holds {0} bytes of pending input; the UART's FIFO holds {SERIAL_FIFO_SIZE}"
    )]
    FifoOverflow(usize),
    #[error("serial state refused by the UART model: {0}")]
    Rejected(String),
}

/// The UART's registers and pending input, in a form that serialises.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialSnapshot {
    /// Checks what the UART model would refuse.
    pub fn validate(&self) -> Result<(), SerialRestoreError> {
        if self.in_buffer.len() > SERIAL_FIFO_SIZE {
            return Err(SerialRestoreError::FifoOverflow(self.in_buffer.len()));
        }
        Ok(())
    }

    fn from_state(s: &SerialState) -> Self {
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }

    fn to_state(&self) -> SerialState {
        SerialState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.in_buffer.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Counter(AtomicUsize);
    impl Interrupt for Counter {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_and_input_the_guest() {
        let irq = Arc::new(Counter::default());
        let out = Shared::default();
        let mut s = Serial::new(irq.clone(), Box::new(out.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Enable the received-data interrupt, then queue input.
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"ok"), 2);
        assert!(irq.0.load(Ordering::SeqCst) >= 1);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut c = [0u8];
        s.read(0, &mut c);
        assert_eq!(c[0], b'o');
    }

    #[test]
    fn snapshot_round_trips_registers_and_pending_input() {
        let irq = Arc::new(Counter::default());
        let mut s = Serial::new(irq.clone(), Box::new(std::io::sink()));
        s.write(3, &[0x03]);
        s.write(7, &[0x5a]);
        s.enqueue_input(b"abc");
        let snap = s.snapshot();
        let mut restored = Serial::new(irq, Box::new(std::io::sink()));
        restored.restore(&snap).unwrap();
        assert_eq!(restored.snapshot(), snap);
        assert_eq!(snap.in_buffer, b"abc");
        assert_eq!(snap.scratch, 0x5a);
    }

    #[test]
    fn a_snapshot_with_more_input_than_the_fifo_is_refused_not_a_crash() {
        let irq = Arc::new(Counter::default());
        let mut s = Serial::new(irq, Box::new(std::io::sink()));
        s.enqueue_input(b"kept");
        let before = s.snapshot();
        let hostile = SerialSnapshot {
            in_buffer: vec![b'x'; SERIAL_FIFO_SIZE + 1],
            ..before.clone()
        };
        assert_eq!(
            s.restore(&hostile),
            Err(SerialRestoreError::FifoOverflow(SERIAL_FIFO_SIZE + 1))
        );
        assert_eq!(s.snapshot(), before, "the UART is left as it was");
        let full = SerialSnapshot {
            in_buffer: vec![b'y'; SERIAL_FIFO_SIZE],
            ..before
        };
        s.restore(&full).unwrap();
    }

    #[test]
    fn wide_accesses_read_as_ones_and_are_ignored() {
        let mut s = Serial::new(Arc::new(Counter::default()), Box::new(std::io::sink()));
        let mut d = [0u8; 2];
        s.read(0, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        s.write(0, &[1, 2]);
    }
}
