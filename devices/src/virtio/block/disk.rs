//! The disk backend: opening the image (O_DIRECT on request), the exclusive OFD lock that keeps
//! two VMMs from writing one shared disk, positioned reads and writes, flush.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{ID_BYTES, SECTOR_SIZE};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    pub path: PathBuf,
    pub readonly: bool,
    pub direct: bool,
    pub serial: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("disk {path} is in use by another process (it holds a {kind} lock); two VMMs writing one disk corrupt it")]
    Locked { path: PathBuf, kind: &'static str },
    #[error("cannot lock disk {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    #[error("cannot find the size of disk {0}")]
    Size(PathBuf, #[source] std::io::Error),
    #[error("disk {0} is empty")]
    Empty(PathBuf),
    #[error("disk {0} is neither a regular file nor a block device")]
    NotADisk(PathBuf),
}

/// An open disk image.
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    readonly: bool,
    direct: bool,
    id: [u8; ID_BYTES],
}

/// Buffers handed to O_DIRECT I/O must be aligned to the device's logical block size.
const DIRECT_ALIGN: usize = 4096;

impl Disk {
    /// Opens the disk and takes its lock.
    pub fn open(opts: &DiskOptions) -> Result<Self, DiskError> {
        let disk = Self::open_unlocked(opts)?;
        disk.lock()?;
        // On shared storage another host may have written since this host last read.
        disk.drop_cache();
        Ok(disk)
    }

    /// Opens the disk without locking it: a migration destination does this before the source
    /// lets go, and takes the lock at commit.
    pub fn open_unlocked(opts: &DiskOptions) -> Result<Self, DiskError> {
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.readonly);
        let file = open_image(&opts.path, &mut oo, opts.direct)?;
        let size = size_of(&file).map_err(|e| DiskError::Size(opts.path.clone(), e))?;
        if size < SECTOR_SIZE {
            return Err(DiskError::Empty(opts.path.clone()));
        }
        let mut id = [0u8; ID_BYTES];
        let serial = opts
            .serial
            .clone()
            .unwrap_or_else(|| default_serial(&opts.path));
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Disk {
            file,
            path: opts.path.clone(),
            size,
            readonly: opts.readonly,
            direct: opts.direct,
            id,
        })
    }

    /// Takes the lock (see [`lock`]).
    pub fn lock(&self) -> Result<(), DiskError> {
        lock(&self.file, &self.path, self.readonly)
    }

    /// Releases the lock, so another host's VMM can take the disk over.
    pub(crate) fn unlock(&self) {
        // Unlocking a lock we hold (or none) cannot conflict; there is nothing to report.
        let _ = ofd_setlk(&self.file, libc::F_UNLCK);
    }

    /// Forgets cached contents, so reads see what another host wrote to shared storage.
    pub(crate) fn drop_cache(&self) {
        // SAFETY: advisory call on a valid descriptor.
        unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if self.file.metadata().map(|m| !m.is_file()).unwrap_or(false) {
            // _IO(0x12, 97) in linux/fs.h; the libc crate does not define it.
            const BLKFLSBUF: libc::c_ulong = 0x1261;
            // SAFETY: BLKFLSBUF takes no argument; on a non-block device it fails harmlessly.
            unsafe { libc::ioctl(self.file.as_raw_fd(), BLKFLSBUF, 0) };
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Reads `len` bytes at `offset` into a buffer (aligned for O_DIRECT when needed).
    pub(crate) fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        if self.direct {
            let mut buf = AlignedBuf::new(len);
            self.file.read_exact_at(buf.as_mut_slice(), offset)?;
            return Ok(buf.as_slice()[..len].to_vec());
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.direct {
            let mut buf = AlignedBuf::new(data.len());
            buf.as_mut_slice()[..data.len()].copy_from_slice(data);
            return self
                .file
                .write_all_at(&buf.as_slice()[..data.len()], offset);
        }
        self.file.write_all_at(data, offset)
    }

    /// Makes every completed write durable (the guest's FLUSH).
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Another descriptor of the same open file (its offset, locks and writes shared): for a
    /// flush that must not hold the device (see `VirtioDevice::backend_flush`).
    pub fn duplicate(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }
}

fn default_serial(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Opens a disk image, refusing anything but a regular file or a block device: a FIFO would
/// block the open (and the VMM with it), a character device is not a disk. The open itself
/// does not block (O_NONBLOCK, cleared once the type is known), so the check has no window.
fn open_image(path: &Path, oo: &mut OpenOptions, direct: bool) -> Result<File, DiskError> {
    let flags = libc::O_NONBLOCK | if direct { libc::O_DIRECT } else { 0 };
    let file = oo
        .custom_flags(flags)
        .open(path)
        .map_err(|e| DiskError::Open(path.to_path_buf(), e))?;
    let meta = file
        .metadata()
        .map_err(|e| DiskError::Open(path.to_path_buf(), e))?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(DiskError::NotADisk(path.to_path_buf()));
    }
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let cleared = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(DiskError::Open(
            path.to_path_buf(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(file)
}

/// The size in bytes of the image file or block device at `path`, as a VM would see it.
pub fn disk_size(path: &Path) -> Result<u64, DiskError> {
    let file = open_image(path, OpenOptions::new().read(true), false)?;
    size_of(&file).map_err(|e| DiskError::Size(path.to_path_buf(), e))
}

fn size_of(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // A block device (shared LUN): its size is where seeking to the end lands.
    use std::io::Seek;
    let mut f = file;
    f.seek(std::io::SeekFrom::End(0))
}

/// Takes an open-file-description lock on the whole disk: exclusive for a writable disk,
/// shared for a read-only one. OFD locks belong to this open file, not the process, and are
/// released when it is closed.
fn lock(file: &File, path: &Path, readonly: bool) -> Result<(), DiskError> {
    let kind = if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    let Err(e) = ofd_setlk(file, kind) else {
        return Ok(());
    };
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => {
            let held = if readonly { "write" } else { "read or write" };
            Err(DiskError::Locked {
                path: path.to_path_buf(),
                kind: held,
            })
        }
        _ => Err(DiskError::Lock(path.to_path_buf(), e)),
    }
}

/// F_OFD_SETLK of `kind` (F_RDLCK, F_WRLCK, F_UNLCK) over the whole file, without waiting.
fn ofd_setlk(file: &File, kind: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock is plain data; zeroed is a valid value (start 0, length 0: the whole file).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK on a descriptor `file` keeps open, with a live flock it only reads.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A heap buffer aligned for O_DIRECT, its length rounded up to the alignment.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let size = len.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let layout = std::alloc::Layout::from_size_align(size, DIRECT_ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of layout.size() initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn temp_disk(tag: &str, size: usize) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-disk-{}-{tag}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; size]).unwrap();
        p
    }

    fn opts(path: &Path, readonly: bool) -> DiskOptions {
        DiskOptions {
            path: path.to_path_buf(),
            readonly,
            direct: false,
            serial: None,
        }
    }

    #[test]
    fn a_writable_disk_is_locked_against_a_second_opener() {
        let p = temp_disk("lock", 4096);
        let first = Disk::open(&opts(&p, false)).unwrap();
        let err = Disk::open(&opts(&p, false)).err().unwrap();
        assert!(matches!(err, DiskError::Locked { .. }), "{err}");
        assert!(matches!(
            Disk::open(&opts(&p, true)).err().unwrap(),
            DiskError::Locked { .. }
        ));
        drop(first);
        let ro1 = Disk::open(&opts(&p, true)).unwrap();
        let _ro2 = Disk::open(&opts(&p, true)).unwrap();
        assert!(matches!(
            Disk::open(&opts(&p, false)).err().unwrap(),
            DiskError::Locked { .. }
        ));
        drop(ro1);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_fifo_or_a_character_device_is_not_a_disk() {
        let fifo = std::env::temp_dir().join(format!("vmm-disk-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Neither call may block on the FIFO (nobody ever opens its other end).
        assert!(matches!(disk_size(&fifo), Err(DiskError::NotADisk(_))));
        assert!(matches!(
            Disk::open(&opts(&fifo, false)),
            Err(DiskError::NotADisk(_))
        ));
        assert!(matches!(
            disk_size(Path::new("/dev/null")),
            Err(DiskError::NotADisk(_))
        ));
        std::fs::remove_file(&fifo).unwrap();
    }

    #[test]
    fn serial_defaults_to_the_file_name_and_is_truncated() {
        let p = temp_disk("serial", 4096);
        let d = Disk::open(&opts(&p, true)).unwrap();
        assert!(d.id().starts_with(b"vmm-disk-"));
        let mut o = opts(&p, true);
        o.serial = Some("x".repeat(30));
        assert_eq!(Disk::open(&o).unwrap().id(), &[b'x'; 20]);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn direct_io_round_trips_unaligned_lengths() {
        let p = temp_disk("direct", 16384);
        let o = DiskOptions {
            path: p.clone(),
            readonly: false,
            direct: true,
            serial: None,
        };
        match Disk::open(&o) {
            Ok(d) => {
                d.write_at(4096, &[7u8; 4096]).unwrap();
                assert_eq!(d.read_at(4096, 4096).unwrap(), vec![7u8; 4096]);
            }
            // tmpfs does not support O_DIRECT; nothing to test there.
            Err(DiskError::Open(_, e)) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => panic!("{e}"),
        }
        std::fs::remove_file(&p).unwrap();
    }
}
