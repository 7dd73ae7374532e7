//! Shared memory of the fast path (the routing table, the progress memory): a memfd mapped
//! whole and seen only as 64-bit atomic words. The one place that maps and unmaps it.
//!
//! Another process may write a shared mapping at any time (the daemon the table, every
//! member the progress memory), so it is never read as plain memory: only through
//! [`AtomicU64`], which tolerates concurrent writers. The daemon seals its size
//! (`F_SEAL_SHRINK`, `F_SEAL_GROW`) before anyone else gets it, and [`Mapping::open`]
//! refuses a memfd that could still shrink: a shrunk mapping would fault on access.
//!
//! A read-only mapping hands out the same `&[AtomicU64]`: callers only load from it (a
//! store would fault). Making that a type of its own is left to the fast path's trust work
//! (issue 17).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;

/// A shared mapping of a whole memfd, as atomic words.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is shared memory only ever accessed through atomics; it lives until
// Drop and may be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above: concurrent atomic accesses are fine.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a memfd of `len` bytes (a multiple of 8), maps it writable, then adds
    /// `seals`. Returns the memfd (to hand out) and the mapping.
    pub fn create(name: &str, len: usize, seals: libc::c_int) -> io::Result<(OwnedFd, Mapping)> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(io::Error::other("shared memory of an invalid size"));
        }
        let name = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: ftruncate on a descriptor we own; the result is checked.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let map = Self::map_exactly(memfd.as_raw_fd(), len, true)?;
        // SAFETY: fcntl with an int argument on a descriptor we own; checked.
        if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((memfd, map))
    }

    /// Maps all of `fd`, which must hold at least `least` bytes, a multiple of 8, and be
    /// sealed against shrinking; read-only unless `writable`.
    pub fn open(fd: BorrowedFd<'_>, least: usize, writable: bool) -> io::Result<Mapping> {
        // SAFETY: F_GET_SEALS takes no argument; the result is checked.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::other(
                "shared memory that is not sealed against shrinking",
            ));
        }
        // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a descriptor we borrow, into a local; checked.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = usize::try_from(st.st_size).map_err(io::Error::other)?;
        if len < least.max(8) || !len.is_multiple_of(8) {
            return Err(io::Error::other("shared memory of an invalid size"));
        }
        Self::map_exactly(fd.as_raw_fd(), len, writable)
    }

    fn map_exactly(fd: libc::c_int, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of `len` bytes of a descriptor the caller holds;
        // the kernel picks the address; the result is checked.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    /// The mapping as words. Every access is atomic: other processes write it.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` bytes (a multiple of 8), page-aligned, mapped until Drop, and only
        // ever accessed through atomics, here and in every other process.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<AtomicU64>(), self.len / 8) }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a mapping has at least one word.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map_exactly() mapped; the borrow checker ensures
        // no slice from words() outlives self.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_created_mapping_is_seen_by_another_mapping_of_its_memfd() {
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        let (fd, w) = Mapping::create("busd-test", 4096, seals).unwrap();
        let r = Mapping::open(fd.as_fd(), 4096, false).unwrap();
        w.words()[3].store(42, Ordering::Release);
        assert_eq!(r.words()[3].load(Ordering::Acquire), 42);
        assert_eq!(r.len(), 4096);
        // The seals hold: the size cannot change.
        // SAFETY: ftruncate on a descriptor we own.
        assert!(unsafe { libc::ftruncate(fd.as_raw_fd(), 8192) } < 0);
    }

    #[test]
    fn too_small_or_odd_sizes_are_refused() {
        assert!(Mapping::create("busd-test", 12, 0).is_err());
        let (fd, _w) = Mapping::create("busd-test", 64, libc::F_SEAL_SHRINK).unwrap();
        assert!(Mapping::open(fd.as_fd(), 128, false).is_err());
        assert!(Mapping::open(fd.as_fd(), 64, false).is_ok());
    }

    #[test]
    fn memory_that_could_shrink_under_the_mapping_is_refused() {
        let (fd, _w) = Mapping::create("busd-test", 64, libc::F_SEAL_GROW).unwrap();
        assert!(Mapping::open(fd.as_fd(), 64, false).is_err());
        // Nor a memfd that allows no seals at all.
        let plain = tempfile_like();
        assert!(Mapping::open(plain.as_fd(), 8, false).is_err());
    }

    /// A memfd created without MFD_ALLOW_SEALING (every seal query answers "none").
    fn tempfile_like() -> OwnedFd {
        // SAFETY: a valid C string; checked.
        let raw = unsafe { libc::memfd_create(c"plain".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on a descriptor we own.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 64) }, 0);
        fd
    }
}
