//! Core errors as JavaScript `Error`s whose `code` is the kind name (e.g. `"invalid_argument"`).

use kwaai_core::{Error, ErrorKind};
use napi::{Env, JsUnknown};
use napi_derive::napi;

/// Converts a core error into a JavaScript `Error` with `code` (the kind name) and `errno`
/// (the kind's stable number).
pub(crate) fn to_js(env: &Env, error: &Error) -> napi::Error {
    let build = || -> napi::Result<JsUnknown> {
        let mut object = env.create_error(napi::Error::from_reason(error.message().to_owned()))?;
        object.set_named_property("code", env.create_string(error.kind().name())?)?;
        object.set_named_property("errno", env.create_uint32(error.kind().code())?)?;
        Ok(object.into_unknown())
    };
    match build() {
        Ok(value) => napi::Error::from(value),
        Err(e) => e,
    }
}

/// A stable error kind: its number and the `code` name errors carry.
#[napi(object)]
pub struct ErrorKindInfo {
    pub code: u32,
    pub name: String,
}

/// Every error kind the core defines.
#[napi]
pub fn error_kinds() -> Vec<ErrorKindInfo> {
    ErrorKind::ALL.iter().map(|k| ErrorKindInfo { code: k.code(), name: k.name().to_owned() }).collect()
}
