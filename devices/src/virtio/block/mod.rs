//! virtio-blk (virtio 1.x section 5.2) backed by a raw image file or a block device.

mod device;
mod disk;
mod request;

pub use device::Block;
pub use disk::{disk_size, Disk, DiskError, DiskOptions};

pub(crate) const SECTOR_SIZE: u64 = 512;
/// Length of the ID string GET_ID returns.
pub(crate) const ID_BYTES: usize = 20;
