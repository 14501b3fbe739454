//! Batched reads and deletes of a BPF hash map (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`,
//! kernel 5.6+), for walking the flow table: thousands of entries per syscall where aya 0.14's
//! iterator costs two syscalls per entry (a 262,144-entry table took half a million).
//!
//! Hand-written because aya 0.14 has no batch operations; the attribute layout is the kernel's
//! `bpf_attr.batch`, which is stable uapi.

use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per syscall.
const CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("BPF_MAP_{op}_BATCH: {source}")]
    Syscall {
        op: &'static str,
        source: std::io::Error,
    },
}

/// `bpf_attr.batch` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> Result<(), std::io::Error> {
    // SAFETY: `attr` is a valid bpf_attr.batch of the size passed; the buffers it points to
    // are owned by the caller and sized for `count` entries.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Calls `f` with every entry of the hash map `fd` (keys `K`, values `V`, the map's own sizes).
/// An entry added or removed meanwhile may or may not be seen, as with any walk.
pub fn for_each<K, V>(fd: BorrowedFd<'_>, mut f: impl FnMut(&K, &V)) -> Result<(), BatchError>
where
    K: bytemuck::Pod,
    V: bytemuck::Pod,
{
    let mut keys = vec![K::zeroed(); CHUNK];
    let mut values = vec![V::zeroed(); CHUNK];
    // The hash map's position: a bucket index the kernel hands back.
    let (mut position, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&position) as u64
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(CHUNK);
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            f(k, v);
        }
        match result {
            Ok(()) => {}
            // The end of the map (the last entries came with it).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(source) => {
                return Err(BatchError::Syscall {
                    op: "LOOKUP",
                    source,
                });
            }
        }
        position = next;
        first = false;
    }
}

/// Deletes `keys` from the hash map `fd`; keys already gone are skipped. Returns how many were
/// deleted.
pub fn delete<K: bytemuck::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<usize, BatchError> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(chunk.len());
        deleted += done;
        match result {
            Ok(()) => rest = &rest[chunk.len()..],
            // The kernel stops at a key that is gone (a FIN or an eviction got there first):
            // skip it and go on after it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = rest.get(done + 1..).unwrap_or_default();
            }
            Err(source) => {
                return Err(BatchError::Syscall {
                    op: "DELETE",
                    source,
                });
            }
        }
    }
    Ok(deleted)
}
