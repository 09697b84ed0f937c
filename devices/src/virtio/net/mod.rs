//! virtio-net (virtio 1.x section 5.1) on a Linux tap device.

mod announce;
mod device;
mod tap;

pub use announce::rarp_frame;
pub use device::{Net, NetBackend};
pub use tap::{tap_name, Tap, TapError};

/// struct virtio_net_hdr_v1: the header in front of every frame (VIRTIO_F_VERSION_1).
pub(crate) const VNET_HDR_LEN: usize = 12;
/// Largest frame accepted from the guest or the tap: a 64 KiB GSO frame plus headers.
pub(crate) const MAX_FRAME_LEN: usize = 65562;

/// Parses "52:54:00:12:34:56".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A stable, locally administered MAC derived from a VM name and NIC index (52:54:00:xx:xx:xx).
pub fn default_mac(vm_name: &str, index: usize) -> [u8; 6] {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in vm_name.bytes().chain(std::iter::once(index as u8)) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:5f"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x5f])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 1, 0xab, 0xff]),
            "52:54:00:01:ab:ff"
        );
        assert_eq!(default_mac("web1", 0), default_mac("web1", 0));
        assert_ne!(default_mac("web1", 0), default_mac("web2", 0));
        assert_ne!(default_mac("web1", 0), default_mac("web1", 1));
        assert_eq!(&default_mac("x", 0)[..3], &[0x52, 0x54, 0]);
    }
}
