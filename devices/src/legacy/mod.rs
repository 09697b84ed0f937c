//! Legacy PC devices on the port I/O bus.

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::{
    Serial, SerialRestoreError, SerialSnapshot, COM1_BASE, COM1_IRQ, SERIAL_FIFO_SIZE,
    SERIAL_PORT_SIZE,
};
