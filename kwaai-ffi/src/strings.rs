//! C strings in and out.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;

use kwaai_core::{Error, Result};

use crate::error::ffi_call;

/// Reads a NUL-terminated UTF-8 argument named `name`.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that outlives the returned borrow.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("`{name}` is NULL")));
    }
    CStr::from_ptr(ptr).to_str().map_err(|e| Error::invalid_argument(format!("`{name}` is not valid UTF-8: {e}")))
}

/// Checks that an out-parameter is not NULL.
pub(crate) fn out_arg<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T> {
    // SAFETY: non-NULL out-parameters must point to writable storage, as the header documents.
    unsafe { ptr.as_mut() }.ok_or_else(|| Error::invalid_argument(format!("out-parameter `{name}` is NULL")))
}

/// Allocates a C string for the host; freed with [`kwaai_string_free`].
pub(crate) fn owned_c_string(text: String) -> Result<*mut c_char> {
    CString::new(text)
        .map(CString::into_raw)
        .map_err(|_| Error::new(kwaai_core::ErrorKind::Internal, "string with an interior NUL"))
}

/// Frees a string returned by this library. NULL is ignored.
///
/// # Safety
/// `string` must be NULL or a string returned by a kwaai function, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn kwaai_string_free(string: *mut c_char) {
    if string.is_null() {
        return;
    }
    ffi_call(|| {
        drop(CString::from_raw(string));
        Ok(())
    });
}
