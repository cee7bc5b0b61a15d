//! kwaai in the browser: the pure layers of `kwaai-core` exposed to JavaScript with wasm-bindgen.
//!
//! - [`tensor`]: hivemind's tensor wire format with every codec, to and from typed arrays.
//! - [`dht`]: the IDs hivemind's DHT stores keys under, and the bytes of subkeys.
//! - [`tokenizer`]: a Hugging Face `tokenizer.json`, text to token ids and back.
//! - [`sampling`]: the next token from logits, greedy or sampled (temperature, top-k, top-p).
//! - [`model`]: a model's client ends (embeddings, final norm, LM head) from safetensors bytes.
//! - `browser` (wasm32 only): `BrowserClient`, a Petals client that reaches the swarm through kwaai
//!   nodes over libp2p WebSockets and generates text in the page.
//!
//! Errors reach JavaScript as `Error`s whose message starts with the error kind
//! (`invalid_argument: ...`), the same kinds every other binding uses.

#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod dht;
pub mod model;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;

use wasm_bindgen::prelude::*;

/// A `kwaai_core::Error` as a JavaScript `Error`: `"<kind>: <message>"`.
pub(crate) fn js_error(e: kwaai_core::Error) -> JsError {
    JsError::new(&format!("{}: {e}", e.kind()))
}

/// The version of kwaai this module was built from.
#[wasm_bindgen]
pub fn version() -> String {
    kwaai_core::VERSION.to_owned()
}
