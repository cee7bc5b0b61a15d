//! Text to token ids and back with a Hugging Face `tokenizer.json`.

use kwaai_core::model::TextTokenizer;
use wasm_bindgen::prelude::*;

use crate::js_error;

/// A Hugging Face fast tokenizer, built from the text of a `tokenizer.json`.
#[wasm_bindgen]
pub struct Tokenizer(TextTokenizer);

#[wasm_bindgen]
impl Tokenizer {
    /// Parses the text of a `tokenizer.json`; throws if it is not one.
    #[wasm_bindgen(js_name = fromJson)]
    pub fn from_json(json: &str) -> Result<Tokenizer, JsError> {
        TextTokenizer::from_json(json).map(Tokenizer).map_err(js_error)
    }

    /// The token ids of `text`, with the special tokens the tokenizer adds (e.g. Llama's `<s>`)
    /// when `addSpecialTokens` is true.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, JsError> {
        self.0.encode(text, add_special_tokens).map_err(js_error)
    }

    /// The text of `ids`, without special tokens when `skipSpecialTokens` is true.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, JsError> {
        self.0.decode(ids, skip_special_tokens).map_err(js_error)
    }
}
