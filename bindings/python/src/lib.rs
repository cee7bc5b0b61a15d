//! Python bindings of kwaai: the `kwaai._kwaai` extension module, re-exported by `kwaai`.
//!
//! One file per core concept: `node.rs` for `kwaai_core::Node`, `dht.rs` for its DHT, `error.rs`
//! for its errors, `value.rs` for Python objects as msgpack values, `model.rs` for the client's
//! `DistributedModel` and inference sessions, `generation.rs` for generation settings and token
//! streams, `server.rs` for `kwaai_core::server::Server`, `tensor.rs` for float tensors as bytes,
//! `exchange.rs` for tensors pushed between nodes.

use pyo3::prelude::*;

mod dht;
mod error;
mod exchange;
mod generation;
mod model;
mod node;
mod server;
mod tensor;
mod value;

#[pymodule]
fn _kwaai(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", kwaai_core::VERSION)?;
    error::register(m)?;
    m.add_class::<node::Node>()?;
    m.add_class::<dht::ValueWithExpiration>()?;
    m.add_class::<generation::GenerationConfig>()?;
    m.add_class::<generation::TokenStream>()?;
    m.add_class::<model::DistributedModel>()?;
    m.add_class::<model::InferenceSession>()?;
    m.add_class::<server::Server>()?;
    Ok(())
}
