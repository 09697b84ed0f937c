//! What of a device model moves with the VM beyond its transport's registers (the transport's
//! own state is `mmio::TransportSnapshot`): the queues as an activated device holds them, and
//! a typed state per device kind. Saved on the source while the device is frozen, restored
//! into a fresh device built from the destination's grants (never from the peer's paths).
//! The kinds travel inside the migration state's envelope, which carries the format version:
//! a new field takes `#[serde(default)]` and a minor version, a changed one a major.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

/// The device-specific state of one virtio device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A device with nothing beyond its queues (virtio-blk: every request completes before
    /// the device is frozen), or a state from a source that sent none.
    #[default]
    Stateless,
    Net(NetState),
}

impl DeviceState {
    fn kind(&self) -> &'static str {
        match self {
            DeviceState::Stateless => "stateless",
            DeviceState::Net(_) => "virtio-net",
        }
    }
}

/// virtio-net: a frame read from the tap that no receive buffer had room for yet; the guest
/// gets it first on the destination instead of losing it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    #[serde(with = "serde_bytes", default)]
    pub rx_pending: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceStateError {
    #[error("a {found} device state for a {expected} device")]
    Kind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("a pending frame of {0} bytes, longer than any frame (at most {max})", max = super::net::MAX_FRAME_LEN)]
    FrameTooLong(usize),
}

/// Saving and restoring a device model's own state (Firecracker's `Persist`, over a device
/// the destination has built already).
pub trait Persist {
    /// The queues while the device is active (they belong to the device after activation).
    fn queue_states(&self) -> Vec<QueueState> {
        Vec::new()
    }
    fn save_state(&self) -> DeviceState {
        DeviceState::Stateless
    }
    /// Takes a saved state; a state of another kind is refused.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        match state {
            DeviceState::Stateless => Ok(()),
            other => Err(DeviceStateError::Kind {
                expected: "stateless",
                found: other.kind(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Disk;
    impl Persist for Disk {}

    #[test]
    fn a_stateless_device_refuses_another_kinds_state() {
        let mut d = Disk;
        assert_eq!(d.save_state(), DeviceState::Stateless);
        d.restore_state(&DeviceState::Stateless).unwrap();
        assert_eq!(
            d.restore_state(&DeviceState::Net(NetState::default())),
            Err(DeviceStateError::Kind {
                expected: "stateless",
                found: "virtio-net"
            })
        );
    }
}
