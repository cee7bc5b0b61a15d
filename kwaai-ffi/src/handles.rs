//! Registries of live handles, so that NULL, freed or foreign pointers give an error, not a crash.
//!
//! A handle is a boxed value whose address is recorded in its registry while it is alive. Every
//! access checks the address under the registry's lock, and freeing removes it under the same lock,
//! so a handle is never dereferenced after (or while) it is freed.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use kwaai_core::{Error, Result};

/// The set of live handle addresses of one type.
pub(crate) struct Registry {
    what: &'static str,
    live: Mutex<BTreeSet<usize>>,
}

impl Registry {
    pub const fn new(what: &'static str) -> Self {
        Registry { what, live: Mutex::new(BTreeSet::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<usize>> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Boxes `value`, records it as live and returns the handle.
    pub fn insert<T>(&self, value: T) -> *mut T {
        let ptr = Box::into_raw(Box::new(value));
        self.lock().insert(ptr as usize);
        ptr
    }

    /// Runs `f` on the handle's value if the handle is live. `f` runs under the registry lock, so
    /// keep it short (clone what you need out of it).
    pub fn with<T, R>(&self, handle: *mut T, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        let live = self.lock();
        if handle.is_null() {
            return Err(Error::invalid_argument(format!("{} handle is NULL", self.what)));
        }
        if !live.contains(&(handle as usize)) {
            return Err(Error::invalid_argument(format!("{} handle is freed or not from this library", self.what)));
        }
        // SAFETY: the address is live (allocated by `insert`, not yet removed), and every access
        // to it happens under this lock, so the reference is valid and unique for `f`'s duration.
        Ok(f(unsafe { &mut *handle }))
    }

    /// Forgets a live handle and returns its value; `None` for NULL, freed or foreign handles.
    pub fn remove<T>(&self, handle: *mut T) -> Option<Box<T>> {
        if handle.is_null() || !self.lock().remove(&(handle as usize)) {
            return None;
        }
        // SAFETY: the address was live and has just been removed under the lock, so this is the
        // only owner of the allocation made by `insert`.
        Some(unsafe { Box::from_raw(handle) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwaai_core::ErrorKind;

    #[test]
    fn freed_null_and_foreign_handles_are_refused() {
        static REGISTRY: Registry = Registry::new("test");
        let handle = REGISTRY.insert(41_u32);
        assert_eq!(
            REGISTRY
                .with(handle, |v| {
                    *v += 1;
                    *v
                })
                .unwrap(),
            42
        );
        assert_eq!(*REGISTRY.remove(handle).unwrap(), 42);
        assert!(REGISTRY.remove(handle).is_none(), "double free must be refused");
        assert_eq!(REGISTRY.with(handle, |v| *v).unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(REGISTRY.with(std::ptr::null_mut::<u32>(), |v| *v).unwrap_err().kind(), ErrorKind::InvalidArgument);
        let mut foreign = 7_u32;
        assert!(REGISTRY.with(&mut foreign as *mut u32, |v| *v).is_err());
    }
}
