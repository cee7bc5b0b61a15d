//! Host callbacks and their `user_data`, guarded so that a host never sees a call after it
//! cleared the callback.

use std::os::raw::c_void;
use std::sync::RwLock;

/// The host's `user_data`, passed back untouched to its callback on the node's threads.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub *mut c_void);
// SAFETY: the library never dereferences it; the header tells hosts that callbacks run on the
// node's threads, so the thread safety of what it points to is the host's contract.
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

/// A callback slot: calls run under a read lock, and replacing or clearing the callback takes the
/// write lock, so it waits for calls in progress and no call starts afterwards.
pub(crate) struct CallbackGate<C> {
    slot: RwLock<Option<(C, UserData)>>,
}

impl<C: Copy> CallbackGate<C> {
    pub const fn new() -> Self {
        CallbackGate { slot: RwLock::new(None) }
    }

    /// Installs (or with `None`, clears) the callback; returns once no call of the old one runs.
    pub fn set(&self, callback: Option<(C, UserData)>) {
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = callback;
    }

    /// Runs `f` with the current callback, or returns `None` when there is none.
    pub fn call<R>(&self, f: impl FnOnce(C, UserData) -> R) -> Option<R> {
        let slot = self.slot.read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|&(callback, user_data)| f(callback, user_data))
    }
}
