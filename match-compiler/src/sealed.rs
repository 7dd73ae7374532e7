//! Large messages on the fast path (DESIGN 5.3): the D-Bus message travels in a sealed
//! memfd passed with the frame, so one copy serves every receiver of a broadcast and the
//! size is bounded by the bus's `max_message_size`, not by a datagram.
//!
//! A frame with [`ROUTE_MEMFD`](crate::header::ROUTE_MEMFD) is the routing header followed
//! by the message's length (a big-endian `u64`) and nothing else; the first descriptor
//! passed with it is the memfd, holding exactly the message from offset 0, sealed against
//! writing, shrinking and growing; the message's own descriptors follow. A receiver checks
//! the seals before it reads: once they are in place nobody, the sender included, can
//! change the bytes it reads.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Bytes after the routing header in a memfd frame.
pub const REFERENCE_LEN: usize = 8;

/// The seals a receiver requires.
pub const REQUIRED_SEALS: libc::c_int =
    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// Why a memfd frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a memfd frame must be the routing header and an 8-byte length")]
    Reference,
    #[error("a memfd frame came without a descriptor")]
    Missing,
    #[error("the message's descriptor is not a sealed memfd (seals {0:#x})")]
    Unsealed(libc::c_int),
    #[error("a message of {0} bytes exceeds the limit of {1}")]
    TooLarge(u64, usize),
    #[error("the memfd holds {0} bytes, the frame announces {1}")]
    Size(u64, u64),
    #[error("reading the memfd failed: {0}")]
    Io(#[from] io::Error),
}

/// A new memfd holding `message`, sealed (write, shrink, grow, and the seals themselves).
pub fn seal(message: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: a valid NUL-terminated name; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"busd-message".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor nobody else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(memfd);
    io::Write::write_all(&mut file, message)?;
    let seals = REQUIRED_SEALS | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// The reference that follows the routing header in a memfd frame.
pub fn reference(len: usize) -> [u8; REFERENCE_LEN] {
    (len as u64).to_be_bytes()
}

/// The message length a memfd frame announces (`rest`: the frame after the header).
pub fn announced(rest: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; REFERENCE_LEN] = rest.try_into().map_err(|_| Error::Reference)?;
    Ok(u64::from_be_bytes(bytes))
}

/// Reads the message a memfd frame refers to, after checking that the descriptor is a
/// memfd sealed as required, of exactly the announced size, and not over `max` bytes.
pub fn open(memfd: BorrowedFd<'_>, len: u64, max: usize) -> Result<Vec<u8>, Error> {
    if len > max as u64 {
        return Err(Error::TooLarge(len, max));
    }
    // SAFETY: fcntl on a descriptor the caller holds; any descriptor may be asked (only
    // memfds and shmem files have seals, everything else fails).
    let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(Error::Unsealed(seals.max(0)));
    }
    let file = std::fs::File::from(memfd.try_clone_to_owned()?);
    let size = file.metadata()?.len();
    if size != len {
        return Err(Error::Size(size, len));
    }
    let mut message = vec![0; len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut message, 0)?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_sealed_message_reads_back() {
        let message: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let fd = seal(&message).unwrap();
        let len = announced(&reference(message.len())).unwrap();
        assert_eq!(open(fd.as_fd(), len, 1 << 20).unwrap(), message);
    }

    #[test]
    fn the_sender_cannot_change_it_afterwards() {
        let fd = seal(b"hello").unwrap();
        let mut file = std::fs::File::from(fd);
        assert!(io::Write::write_all(&mut file, b"x").is_err());
        assert!(file.set_len(1).is_err());
        assert!(file.set_len(100).is_err());
    }

    #[test]
    fn an_unsealed_memfd_or_another_file_is_refused() {
        // SAFETY: as in seal().
        let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a new descriptor.
        let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut file = std::fs::File::from(memfd);
        io::Write::write_all(&mut file, b"hello").unwrap();
        assert!(matches!(
            open(file.as_fd(), 5, 100),
            Err(Error::Unsealed(_))
        ));
        let pipe = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            open(pipe.as_fd(), 0, 100),
            Err(Error::Unsealed(_))
        ));
    }

    #[test]
    fn size_and_limit_are_checked() {
        let fd = seal(b"hello").unwrap();
        assert!(matches!(open(fd.as_fd(), 4, 100), Err(Error::Size(5, 4))));
        assert!(matches!(open(fd.as_fd(), 5, 4), Err(Error::TooLarge(5, 4))));
        assert!(matches!(announced(&[0; 7]), Err(Error::Reference)));
        assert!(matches!(announced(&[0; 9]), Err(Error::Reference)));
    }
}
