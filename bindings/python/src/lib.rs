//! Python bindings of kwaai: the `kwaai._kwaai` extension module, re-exported by `kwaai`.
//!
//! One file per core concept: `node.rs` for `kwaai_core::Node`, `dht.rs` for its DHT, `error.rs`
//! for its errors, `value.rs` for Python objects as msgpack values.

use pyo3::prelude::*;

mod dht;
mod error;
mod node;
mod value;

#[pymodule]
fn _kwaai(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", kwaai_core::VERSION)?;
    error::register(m)?;
    m.add_class::<node::Node>()?;
    m.add_class::<dht::ValueWithExpiration>()?;
    Ok(())
}
