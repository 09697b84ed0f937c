//! Loading a kernel (bzImage or ELF) and an initrd into guest memory, and telling a Linux
//! kernel from other 64-bit ELF images.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::layout::{MemoryLayout, HIMEM_START};

/// The 64-bit entry point of a bzImage sits 0x200 bytes into its protected-mode code (boot.rst, "64-bit boot protocol").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Bit 1 of xloadflags: the kernel has a 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot read the kernel image")]
    Io(#[source] std::io::Error),
    #[error("the kernel is neither an ELF image nor a bzImage: {0}")]
    UnknownFormat(String),
    #[error("cannot load the kernel image")]
    Load(#[source] linux_loader::loader::Error),
    #[error("this bzImage has no 64-bit entry point (XLF_KERNEL_64 unset)")]
    No64BitEntry,
    #[error("the initrd ({size} bytes) does not fit below {limit:#x} above the kernel end {kernel_end:#x}")]
    InitrdTooLarge {
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
    #[error("cannot copy the initrd into guest memory")]
    InitrdCopy(#[source] vm_memory::GuestMemoryError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// Where a kernel landed and how to enter it.
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte past the loaded image.
    pub end: u64,
    /// Setup header of a bzImage, to seed the zero page.
    pub setup_header: Option<setup_header>,
}

/// Loads a bzImage or an ELF image (segments at their physical addresses).
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    image: &mut File,
) -> Result<LoadedKernel, LoaderError> {
    let format = detect_format(image)?;
    match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, image, Some(GuestAddress(HIMEM_START)))
                .map_err(LoaderError::Load)?;
            Ok(LoadedKernel {
                format,
                entry: r.kernel_load,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, image, Some(GuestAddress(HIMEM_START)))
                .map_err(LoaderError::Load)?;
            let hdr = r
                .setup_header
                .expect("bzImage loader returns a setup header");
            if hdr.version >= 0x020c && hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::No64BitEntry);
            }
            Ok(LoadedKernel {
                format,
                entry: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                end: r.kernel_end,
                setup_header: Some(hdr),
            })
        }
    }
}

/// Tells an ELF image from a bzImage by their magic numbers.
pub(crate) fn detect_format(image: &mut File) -> Result<KernelFormat, LoaderError> {
    let mut head = [0u8; 0x206];
    image.seek(SeekFrom::Start(0)).map_err(LoaderError::Io)?;
    let n = read_up_to(image, &mut head).map_err(LoaderError::Io)?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoaderError::UnknownFormat(format!(
        "{n} bytes read, no ELF or HdrS magic"
    )))
}

/// Is this image a Linux kernel? A bzImage always is; an ELF vmlinux carries "Linux" or "Xen"
/// ELF notes (build id, PVH entry), which small hand-made images do not.
pub fn is_linux_kernel(image: &mut File) -> Result<bool, LoaderError> {
    match detect_format(image)? {
        KernelFormat::BzImage => Ok(true),
        KernelFormat::Elf => elf_has_linux_notes(image).map_err(LoaderError::Io),
    }
}

fn elf_has_linux_notes(image: &mut File) -> std::io::Result<bool> {
    let mut ehdr = [0u8; 64];
    image.seek(SeekFrom::Start(0))?;
    image.read_exact(&mut ehdr)?;
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().unwrap());
    let phentsize = u16::from_le_bytes(ehdr[54..56].try_into().unwrap()) as u64;
    let phnum = u16::from_le_bytes(ehdr[56..58].try_into().unwrap()) as u64;
    if phentsize < 56 || phnum > 256 {
        return Ok(false);
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        image.seek(SeekFrom::Start(phoff + i * phentsize))?;
        image.read_exact(&mut ph)?;
        const PT_NOTE: u32 = 4;
        if u32::from_le_bytes(ph[0..4].try_into().unwrap()) != PT_NOTE {
            continue;
        }
        let off = u64::from_le_bytes(ph[8..16].try_into().unwrap());
        let size = u64::from_le_bytes(ph[32..40].try_into().unwrap()).min(64 * 1024);
        let mut notes = vec![0u8; size as usize];
        image.seek(SeekFrom::Start(off))?;
        image.read_exact(&mut notes)?;
        if note_names(&notes).any(|n| n == b"Linux" || n == b"Xen") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Iterates over the names of the notes in an ELF note segment.
fn note_names(mut notes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if notes.len() < 12 {
            return None;
        }
        let namesz = u32::from_le_bytes(notes[0..4].try_into().unwrap()) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().unwrap()) as usize;
        let align4 = |x: usize| x.checked_add(3).map(|v| v & !3);
        let total = align4(namesz)
            .zip(align4(descsz))
            .and_then(|(a, b)| a.checked_add(b)?.checked_add(12))?;
        if total > notes.len() || namesz == 0 {
            return None;
        }
        let name = &notes[12..12 + namesz - 1];
        notes = &notes[total..];
        Some(name)
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Places the initrd as high as possible in low RAM, below `addr_max`, page aligned, above the kernel.
pub fn load_initrd<M: GuestMemory + ?Sized>(
    mem: &M,
    layout: &MemoryLayout,
    kernel_end: u64,
    addr_max: u64,
    initrd: &mut File,
) -> Result<(GuestAddress, usize), LoaderError> {
    let size = initrd.seek(SeekFrom::End(0)).map_err(LoaderError::Io)?;
    initrd.seek(SeekFrom::Start(0)).map_err(LoaderError::Io)?;
    let limit = layout.low_ram_end().min(addr_max.saturating_add(1));
    let too_large = || LoaderError::InitrdTooLarge {
        size,
        limit,
        kernel_end,
    };
    let start = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if start < kernel_end {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(start), initrd, size as usize)
        .map_err(LoaderError::InitrdCopy)?;
    Ok((GuestAddress(start), size as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((name.len() + 1) as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(name);
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn iterates_note_names() {
        let mut n = note(b"GNU", &[1, 2, 3, 4, 5]);
        n.extend(note(b"Linux", &[0; 4]));
        let names: Vec<_> = note_names(&n).collect();
        assert_eq!(names, vec![&b"GNU"[..], &b"Linux"[..]]);
    }

    #[test]
    fn truncated_notes_end_iteration() {
        let n = note(b"Linux", &[0; 8]);
        assert_eq!(note_names(&n[..n.len() - 1]).count(), 0);
        let mut huge = n.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(note_names(&huge).count(), 0);
    }
}
