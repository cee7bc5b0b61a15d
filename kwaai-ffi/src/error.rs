//! Status codes, the panic boundary and the thread-local last-error message.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use kwaai_core::{Error, ErrorKind};

/// The result of every fallible function. The numeric values are stable and never reused.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum kwaai_status {
    /// Success.
    Ok = 0,
    /// A bad argument: NULL pointer, invalid UTF-8, malformed address, freed or foreign handle.
    InvalidArgument = 1,
    /// A local I/O operation failed.
    Io = 2,
    /// An identity (key) file is missing, unreadable or unsupported.
    Identity = 3,
    /// A network operation failed.
    Network = 4,
    /// A peer broke the protocol.
    Protocol = 5,
    /// An operation did not finish in time.
    Timeout = 6,
    /// The node is shut down, or the operation was cancelled.
    Closed = 7,
    /// A bug in the library.
    Internal = 8,
    /// The library panicked; the message says where. The handle involved may be unusable.
    Panic = 99,
}

/// Maps a core error kind onto its status code (the same number).
pub(crate) fn status_of(kind: ErrorKind) -> kwaai_status {
    match kind {
        ErrorKind::InvalidArgument => kwaai_status::InvalidArgument,
        ErrorKind::Io => kwaai_status::Io,
        ErrorKind::Identity => kwaai_status::Identity,
        ErrorKind::Network => kwaai_status::Network,
        ErrorKind::Protocol => kwaai_status::Protocol,
        ErrorKind::Timeout => kwaai_status::Timeout,
        ErrorKind::Closed => kwaai_status::Closed,
        ErrorKind::Internal => kwaai_status::Internal,
        // Kinds added later without a status here are reported as internal errors.
        _ => kwaai_status::Internal,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(message: String) {
    // Interior NULs cannot appear in a C string; replace them rather than lose the message.
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(message));
}

/// Runs an entry point's body behind the panic boundary and turns its result into a status.
pub(crate) fn ffi_call(body: impl FnOnce() -> Result<(), Error>) -> kwaai_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => kwaai_status::Ok,
        Ok(Err(e)) => {
            let status = status_of(e.kind());
            set_last_error(format!("{}: {}", e.kind(), e.message()));
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("panic: {what}"));
            kwaai_status::Panic
        }
    }
}

/// Returns the message of the last error on this thread, or NULL if none occurred yet.
///
/// The string belongs to the library: do not free it. It stays valid until the next failing
/// kwaai call on the same thread.
#[no_mangle]
pub extern "C" fn kwaai_last_error_message() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ref().map_or(std::ptr::null(), |m| m.as_ptr()))
}

/// Returns a static, NUL-terminated name for a status code ("ok", "invalid_argument", ...).
#[no_mangle]
pub extern "C" fn kwaai_status_name(status: kwaai_status) -> *const c_char {
    let name: &'static str = match status {
        kwaai_status::Ok => "ok\0",
        kwaai_status::InvalidArgument => "invalid_argument\0",
        kwaai_status::Io => "io\0",
        kwaai_status::Identity => "identity\0",
        kwaai_status::Network => "network\0",
        kwaai_status::Protocol => "protocol\0",
        kwaai_status::Timeout => "timeout\0",
        kwaai_status::Closed => "closed\0",
        kwaai_status::Internal => "internal\0",
        kwaai_status::Panic => "panic\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn every_core_kind_has_its_own_status_with_the_same_code() {
        for kind in ErrorKind::ALL {
            let status = status_of(kind);
            assert_eq!(status as u32, kind.code(), "{kind}");
            let name = unsafe { CStr::from_ptr(kwaai_status_name(status)) };
            assert_eq!(name.to_str().unwrap(), kind.name());
        }
    }

    #[test]
    fn panics_become_a_status_and_a_message() {
        let status = ffi_call(|| panic!("boom"));
        assert_eq!(status, kwaai_status::Panic);
        let message = unsafe { CStr::from_ptr(kwaai_last_error_message()) };
        assert_eq!(message.to_str().unwrap(), "panic: boom");
    }
}
