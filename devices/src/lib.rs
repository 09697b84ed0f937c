//! Devices of a microVM: the PIO/MMIO bus maps the vCPU exits are dispatched through, and the
//! legacy PC devices (8250 UART on COM1, the i8042 controller whose reset line ends the VM).

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

/// Something that raises a guest interrupt or signals the VMM (an eventfd behind an irqfd, a callback).
pub trait Interrupt: Send + Sync {
    fn trigger(&self) -> std::io::Result<()>;
}

impl Interrupt for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}
