//! Python bindings of kwaai: the `kwaai._kwaai` extension module, re-exported by `kwaai`.
//!
//! One file per core concept: `node.rs` for `kwaai_core::Node`, `error.rs` for its errors.

use pyo3::prelude::*;

mod error;
mod node;

#[pymodule]
fn _kwaai(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", kwaai_core::VERSION)?;
    error::register(m)?;
    m.add_class::<node::Node>()?;
    Ok(())
}
