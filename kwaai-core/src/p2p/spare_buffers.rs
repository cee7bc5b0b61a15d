//! Large message buffers kept after a message was written, to read the next message into.
//!
//! Memory fresh from the system costs a page fault for every 4 KiB on first touch, which is most
//! of a megabyte call's time on loopback, and glibc's allocator hands such memory back to the
//! system often enough that a freed megabyte is seldom warm when the next one is allocated.
//! Request-reply traffic reads about as much as it writes, so a buffer that a write is done with
//! serves the next read of a like size. A few buffers wait here, process-wide; the rest are freed.
//! Only the native RPC code writes messages, so without `native` nothing is recycled.
#![cfg_attr(not(feature = "native"), allow(dead_code))]

use std::sync::Mutex;

use bytes::Bytes;

/// Smaller buffers come from the allocator, whose own caches serve them well.
const MIN_CAPACITY: usize = 64 << 10;
/// At most this many buffers wait...
const MAX_BUFFERS: usize = 4;
/// ...holding at most this many bytes together.
const MAX_BYTES: usize = 16 << 20;

/// The process's spare buffers.
static SPARE: SpareBuffers = SpareBuffers(Mutex::new(Vec::new()));

/// A buffer of `len` bytes to read a message into. Its contents are unspecified (a spare buffer
/// keeps what was written from it), so the caller must overwrite all of it before use.
pub(crate) fn for_reading(len: usize) -> Vec<u8> {
    SPARE.for_reading(len)
}

/// Keeps `buffer`, whose message has been written, for a later read, if it is large and there is
/// room; frees it otherwise.
pub(crate) fn recycle(buffer: Vec<u8>) {
    SPARE.recycle(buffer)
}

/// [`recycle`] for a written `Bytes`, when nothing else holds its memory.
pub(crate) fn recycle_bytes(bytes: Bytes) {
    SPARE.recycle_bytes(bytes)
}

struct SpareBuffers(Mutex<Vec<Vec<u8>>>);

impl SpareBuffers {
    fn for_reading(&self, len: usize) -> Vec<u8> {
        let Some(mut buffer) = (len >= MIN_CAPACITY).then(|| self.take(len)).flatten() else {
            return vec![0u8; len];
        };
        buffer.truncate(len);
        buffer.resize(len, 0);
        buffer
    }

    fn recycle(&self, buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity < MIN_CAPACITY {
            return;
        }
        let mut spare = self.lock();
        let held: usize = spare.iter().map(Vec::capacity).sum();
        if spare.len() < MAX_BUFFERS && held + capacity <= MAX_BYTES {
            spare.push(buffer);
        }
    }

    fn recycle_bytes(&self, bytes: Bytes) {
        if bytes.len() >= MIN_CAPACITY {
            if let Ok(unique) = bytes.try_into_mut() {
                self.recycle(unique.into());
            }
        }
    }

    /// The smallest spare buffer that holds `len` bytes without wasting over half of itself.
    fn take(&self, len: usize) -> Option<Vec<u8>> {
        let mut spare = self.lock();
        let fits = |buffer: &&Vec<u8>| (len..=len.saturating_mul(2)).contains(&buffer.capacity());
        let (index, _) = spare.iter().enumerate().filter(|(_, b)| fits(b)).min_by_key(|(_, b)| b.capacity())?;
        Some(spare.swap_remove(index))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_buffers_serve_later_reads_within_bounds() {
        let pool = SpareBuffers(Mutex::new(Vec::new()));
        let held = || pool.lock().len();
        // A small read never takes a spare; a small buffer is never kept.
        pool.recycle(vec![7u8; 1000]);
        assert_eq!(held(), 0);
        assert_eq!(pool.for_reading(10), vec![0u8; 10]);

        // A written megabyte serves the next read of a like size, in the same memory.
        let written = vec![9u8; 1 << 20];
        let address = written.as_ptr();
        pool.recycle(written);
        let read = pool.for_reading((1 << 20) - 5);
        assert_eq!(read.as_ptr(), address);
        assert_eq!(read.len(), (1 << 20) - 5);
        assert_eq!(held(), 0);

        // A buffer over twice the read's size stays for a larger read; the read gets zeroes.
        pool.recycle(read);
        let small = pool.for_reading(100 << 10);
        assert_ne!(small.as_ptr(), address);
        assert!(small.iter().all(|&b| b == 0));
        assert_eq!(held(), 1);

        // Growing past what the spare last held fills the rest with zeroes.
        let grown = pool.for_reading(1 << 20);
        assert_eq!(grown.as_ptr(), address);
        assert!(grown[(1 << 20) - 5..].iter().all(|&b| b == 0));

        // At most MAX_BUFFERS wait, and at most MAX_BYTES in all.
        for _ in 0..MAX_BUFFERS + 2 {
            pool.recycle(vec![1u8; 1 << 20]);
        }
        assert_eq!(held(), MAX_BUFFERS);
        pool.lock().clear();
        pool.recycle(vec![1u8; MAX_BYTES]);
        pool.recycle(vec![1u8; 1 << 20]);
        assert_eq!(held(), 1);
    }

    #[test]
    fn written_bytes_come_back_only_when_unshared() {
        let pool = SpareBuffers(Mutex::new(Vec::new()));
        let shared = Bytes::from(vec![3u8; 1 << 20]);
        let other = shared.clone();
        let address = shared.as_ptr();
        pool.recycle_bytes(shared);
        assert!(pool.lock().is_empty());
        pool.recycle_bytes(other);
        assert_eq!(pool.take(1 << 20).map(|b| b.as_ptr()), Some(address));
    }
}
