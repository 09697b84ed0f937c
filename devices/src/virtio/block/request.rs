//! One virtio-blk request: parse the header, move the data between the disk and the guest's
//! buffers, and write the status byte (virtio 1.x section 5.2.6). Nothing a guest puts in a
//! descriptor chain can make this panic: bad chains get VIRTIO_BLK_S_IOERR or UNSUPP, and a
//! chain whose status byte cannot be written at all is reported as unrecoverable.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Address, ByteValued, Bytes, GuestMemoryBackend};

use super::disk::Disk;
use super::{ID_BYTES, SECTOR_SIZE};
use crate::virtio::GuestMemoryMmap;

pub(crate) const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub(crate) const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub(crate) const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub(crate) const VIRTIO_BLK_S_OK: u8 = 0;
pub(crate) const VIRTIO_BLK_S_IOERR: u8 = 1;
pub(crate) const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Largest data transfer one request may ask for.
pub(crate) const MAX_REQUEST_BYTES: usize = 32 << 20;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RequestHeader {
    request_type: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: plain-old-data with no padding (4 + 4 + 8 bytes).
unsafe impl ByteValued for RequestHeader {}

/// A request the device could not even complete with an error status.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unrecoverable {
    /// The chain has no device-writable byte for the status, or it is outside guest memory.
    NoStatusByte,
}

type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// Executes the request in `chain`; returns the number of bytes written into the guest's
/// buffers (data plus status), the value for the used ring.
pub fn execute(disk: &Disk, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<u32, Unrecoverable> {
    // The status byte is the last byte of the last device-writable descriptor; find it on its
    // own so a request with bad data buffers can still be answered with IOERR.
    let status_addr = chain
        .clone()
        .filter(|d| d.is_write_only() && d.len() > 0)
        .last()
        .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1))
        .filter(|a| mem.address_in_range(*a))
        .ok_or(Unrecoverable::NoStatusByte)?;
    let (status, data_written) = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
        (Ok(mut reader), Ok(mut writer)) => {
            let writable = writer.available_bytes();
            match writer.split_at(writable - 1) {
                Ok(_status_part) => {
                    let status = serve(disk, &mut reader, &mut writer);
                    (status, writer.bytes_written())
                }
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        _ => {
            log::debug!("virtio-blk: descriptors outside guest memory");
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    mem.write_obj(status, status_addr)
        .map_err(|_| Unrecoverable::NoStatusByte)?;
    Ok((data_written + 1) as u32)
}

fn serve<B: BitmapSlice>(
    disk: &Disk,
    reader: &mut Reader<'_, B>,
    writer: &mut Writer<'_, B>,
) -> u8 {
    let Ok(header) = reader.read_obj::<RequestHeader>() else {
        log::debug!("virtio-blk: request without a full header");
        return VIRTIO_BLK_S_IOERR;
    };
    match header.request_type {
        VIRTIO_BLK_T_IN => {
            if reader.available_bytes() != 0 {
                // Data buffers the device can only read: the driver got the direction wrong.
                return VIRTIO_BLK_S_IOERR;
            }
            let len = writer.available_bytes();
            match data_range(disk, header.sector, len) {
                Some(offset) => match disk.read_at(offset, len) {
                    Ok(buf) if writer.write_all(&buf).is_ok() => VIRTIO_BLK_S_OK,
                    Ok(_) => VIRTIO_BLK_S_IOERR,
                    Err(e) => {
                        log::warn!(
                            "virtio-blk: read of {len} bytes at {offset} from {} failed: {e}",
                            disk.path().display()
                        );
                        VIRTIO_BLK_S_IOERR
                    }
                },
                None => VIRTIO_BLK_S_IOERR,
            }
        }
        VIRTIO_BLK_T_OUT => {
            if disk.readonly() || writer.available_bytes() != 0 {
                return VIRTIO_BLK_S_IOERR;
            }
            let len = reader.available_bytes();
            let Some(offset) = data_range(disk, header.sector, len) else {
                return VIRTIO_BLK_S_IOERR;
            };
            let mut buf = vec![0u8; len];
            if reader.read_exact(&mut buf).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            match disk.write_at(offset, &buf) {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(e) => {
                    log::warn!(
                        "virtio-blk: write of {len} bytes at {offset} to {} failed: {e}",
                        disk.path().display()
                    );
                    VIRTIO_BLK_S_IOERR
                }
            }
        }
        VIRTIO_BLK_T_FLUSH => match disk.flush() {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(e) => {
                log::warn!("virtio-blk: flush of {} failed: {e}", disk.path().display());
                VIRTIO_BLK_S_IOERR
            }
        },
        VIRTIO_BLK_T_GET_ID => {
            let n = writer.available_bytes().min(ID_BYTES);
            if writer.write_all(&disk.id()[..n]).is_ok() {
                VIRTIO_BLK_S_OK
            } else {
                VIRTIO_BLK_S_IOERR
            }
        }
        _ => VIRTIO_BLK_S_UNSUPP,
    }
}

/// Byte offset of a transfer of `len` bytes at `sector`, if it is whole sectors inside the disk
/// and not larger than MAX_REQUEST_BYTES.
fn data_range(disk: &Disk, sector: u64, len: usize) -> Option<u64> {
    if len > MAX_REQUEST_BYTES || !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len as u64)?;
    (end <= disk.size()).then_some(offset)
}
