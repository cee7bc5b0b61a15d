//! Text to token ids and back, with a model's `tokenizer.json` (from its directory or as a string).

use std::path::Path;

use crate::{Error, ErrorKind, Result};

/// A Hugging Face fast tokenizer.
pub struct TextTokenizer(tokenizers::Tokenizer);

impl TextTokenizer {
    /// Loads `tokenizer.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::new(ErrorKind::Io, format!("missing {}", path.display())));
        }
        tokenizers::Tokenizer::from_file(&path)
            .map(TextTokenizer)
            .map_err(|e| Error::invalid_argument(format!("bad {}: {e}", path.display())))
    }

    /// Parses the content of a `tokenizer.json` file (e.g. fetched by a browser).
    pub fn from_json(json: &str) -> Result<Self> {
        json.parse::<tokenizers::Tokenizer>()
            .map(TextTokenizer)
            .map_err(|e| Error::invalid_argument(format!("bad tokenizer.json: {e}")))
    }

    /// Token ids of `text`, with the special tokens the tokenizer adds (e.g. Llama's `<s>`) if asked.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.0
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::invalid_argument(format!("cannot encode: {e}")))
    }

    /// Text of `ids`, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.0.decode(ids, skip_special_tokens).map_err(|e| Error::invalid_argument(format!("cannot decode: {e}")))
    }
}

/// The text each new token adds to a generation's output: the whole output is decoded again (so
/// that tokenizers that merge pieces get them right) and the new end returned; text is held back
/// while its last character is incomplete.
#[derive(Debug, Default, Clone)]
pub struct TextDelta {
    ids: Vec<u32>,
    text_len: usize,
}

impl TextDelta {
    /// Adds token `id` and returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> String {
        self.ids.push(id);
        match tokenizer.decode(&self.ids, true) {
            Ok(full) if !full.ends_with('\u{fffd}') => {
                let delta = full.get(self.text_len..).unwrap_or_default().to_owned();
                self.text_len = full.len();
                delta
            }
            _ => String::new(),
        }
    }
}
