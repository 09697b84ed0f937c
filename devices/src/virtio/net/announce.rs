//! After a migration the network must learn where the guest's MAC lives now: the destination
//! sends RARP broadcasts from it (as QEMU does), so switches update their tables at once.

/// A broadcast RARP "request reverse" frame from `mac`, with a zeroed virtio-net header in front.
pub fn rarp_frame(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; super::VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]); // destination: broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x80, 0x35]); // ethertype RARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x03]); // Ethernet/IPv4, op 3
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    // Pad to the 60-byte Ethernet minimum.
    f.resize(super::VNET_HDR_LEN + 60, 0);
    f
}

#[cfg(test)]
mod tests {
    #[test]
    fn rarp_layout() {
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        let f = super::rarp_frame(mac);
        let eth = &f[12..];
        assert_eq!(eth.len(), 60);
        assert_eq!(&eth[0..6], &[0xff; 6]);
        assert_eq!(&eth[6..12], &mac);
        assert_eq!(&eth[12..14], &[0x80, 0x35]);
        assert_eq!(&eth[20..22], &[0, 3]);
        assert_eq!(&eth[22..28], &mac);
    }
}
