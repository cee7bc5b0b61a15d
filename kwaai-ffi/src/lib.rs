//! The stable C ABI of kwaai (`libkwaai.so`, `include/kwaai.h`).
//!
//! Rules every entry point follows: it catches panics, validates every pointer and handle, returns
//! a [`KwaaiStatus`], writes out-parameters only on success, and records a thread-local message
//! for [`kwaai_last_error_message`] on failure.

#![allow(non_camel_case_types)]

mod callbacks;
mod config;
mod dht;
mod error;
mod generation;
mod handles;
mod logging;
mod model;
mod node;
mod server;
mod session;
mod strings;
mod tensor;

pub use config::*;
pub use dht::*;
pub use error::*;
pub use generation::*;
pub use logging::*;
pub use model::*;
pub use node::*;
pub use server::*;
pub use session::*;
pub use strings::*;
pub use tensor::*;

/// The version of this C ABI. It changes only when an existing function or type changes
/// incompatibly; hosts compare it with the value they were compiled against.
pub const KWAAI_ABI_VERSION: u32 = 1;

/// Returns the ABI version of the loaded library (compare with `KWAAI_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn kwaai_abi_version() -> u32 {
    KWAAI_ABI_VERSION
}

/// Returns the library version as a static NUL-terminated string (do not free it).
#[no_mangle]
pub extern "C" fn kwaai_version() -> *const std::os::raw::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
