//! A disk image whose flush stalls on command: a FUSE file system (served by this test
//! process, mounted by it as root) holding one file, `disk.img`, kept in memory. Reads and
//! writes are served at once; `fsync`/`fdatasync` requests are held unanswered while the
//! disk is stalled, as a `hard` NFS mount holds them while its server is gone, and answered
//! when [`StallingDisk::release`] is called or the disk is dropped.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

const FILE: INodeNo = INodeNo(2);
const NAME: &str = "disk.img";
const TTL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    data: Vec<u8>,
    stalled: bool,
    /// Flushes held while stalled, answered on release.
    held: Vec<ReplyEmpty>,
    flushes: usize,
}

struct Fs(Arc<Mutex<State>>);

fn attr(ino: INodeNo, size: u64) -> FileAttr {
    let dir = ino == INodeNo::ROOT;
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl Fs {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().data.len() as u64
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == NAME {
            reply.entry(&TTL, &attr(FILE, self.size()), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT => reply.attr(&TTL, &attr(ino, 0)),
            FILE => reply.attr(&TTL, &attr(ino, self.size())),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.0.lock().unwrap();
        let start = (offset as usize).min(s.data.len());
        let end = (start + size as usize).min(s.data.len());
        reply.data(&s.data[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.0.lock().unwrap();
        let start = offset as usize;
        if start + data.len() > s.data.len() {
            // A disk image does not grow.
            reply.error(Errno::ENOSPC);
            return;
        }
        s.data[start..start + data.len()].copy_from_slice(data);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): nothing to write back.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.0.lock().unwrap();
        s.flushes += 1;
        if s.stalled {
            s.held.push(reply);
        } else {
            reply.ok();
        }
    }
}

/// The mounted file system (see the module doc); unmounted on drop.
pub struct StallingDisk {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl StallingDisk {
    /// Mounts the file system on `mountpoint` (created) with a disk of `size` zero bytes.
    pub fn mount(mountpoint: &Path, size: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(mountpoint)?;
        let state = Arc::new(Mutex::new(State {
            data: vec![0; size],
            ..State::default()
        }));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("vmm-test-stalling-disk".into())];
        let session = fuser::spawn_mount(Fs(state.clone()), mountpoint, &config)?;
        Ok(StallingDisk {
            state,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// The disk image's path.
    pub fn path(&self) -> PathBuf {
        self.mountpoint.join(NAME)
    }

    /// From now on, flushes are held unanswered.
    pub fn stall(&self) {
        self.state.lock().unwrap().stalled = true;
    }

    /// Flushes held now (waiting for an answer).
    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held.len()
    }

    /// Answers every held flush and stops stalling.
    pub fn release(&self) {
        let mut s = self.state.lock().unwrap();
        s.stalled = false;
        for r in s.held.drain(..) {
            r.ok();
        }
    }
}

impl Drop for StallingDisk {
    fn drop(&mut self) {
        self.release();
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
