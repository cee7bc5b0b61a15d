//! `kwaai.KwaaiError` and one subclass per `kwaai_core::ErrorKind`.

use kwaai_core::{Error, ErrorKind};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(kwaai, KwaaiError, PyException, "Base class of every kwaai error; `kind` names it.");
pyo3::create_exception!(kwaai, InvalidArgumentError, KwaaiError, "A bad argument (malformed address, ...).");
pyo3::create_exception!(kwaai, IoError, KwaaiError, "A local I/O operation failed.");
pyo3::create_exception!(kwaai, IdentityError, KwaaiError, "An identity file is missing, unreadable or unsupported.");
pyo3::create_exception!(kwaai, NetworkError, KwaaiError, "A network operation failed.");
pyo3::create_exception!(kwaai, ProtocolError, KwaaiError, "A peer broke the protocol.");
pyo3::create_exception!(kwaai, TimeoutError, KwaaiError, "An operation did not finish in time.");
pyo3::create_exception!(kwaai, ClosedError, KwaaiError, "The node is shut down, or the call was cancelled.");
pyo3::create_exception!(kwaai, InternalError, KwaaiError, "A bug in kwaai.");

/// The exception class of `kind`.
fn class_of(py: Python<'_>, kind: ErrorKind) -> Bound<'_, pyo3::types::PyType> {
    match kind {
        ErrorKind::InvalidArgument => py.get_type::<InvalidArgumentError>(),
        ErrorKind::Io => py.get_type::<IoError>(),
        ErrorKind::Identity => py.get_type::<IdentityError>(),
        ErrorKind::Network => py.get_type::<NetworkError>(),
        ErrorKind::Protocol => py.get_type::<ProtocolError>(),
        ErrorKind::Timeout => py.get_type::<TimeoutError>(),
        ErrorKind::Closed => py.get_type::<ClosedError>(),
        ErrorKind::Internal => py.get_type::<InternalError>(),
        _ => py.get_type::<KwaaiError>(),
    }
}

/// Converts a core error into the matching Python exception.
pub(crate) fn to_py(error: Error) -> PyErr {
    Python::with_gil(|py| PyErr::from_type(class_of(py, error.kind()), error.message().to_owned()))
}

/// Adds the exception classes to the module, each with its `kind` name and `code`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("KwaaiError", py.get_type::<KwaaiError>())?;
    let mut kinds = Vec::new();
    for kind in ErrorKind::ALL {
        let class = class_of(py, kind);
        class.setattr("kind", kind.name())?;
        class.setattr("code", kind.code())?;
        m.add(class.name()?.to_string().as_str(), class)?;
        kinds.push((kind.code(), kind.name()));
    }
    // Every kind the core knows, so tests can check that each maps to its own class.
    m.add("ERROR_KINDS", kinds)?;
    Ok(())
}
