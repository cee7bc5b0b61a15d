//! The ends of a model that a Petals client runs in the page: token embeddings before the first
//! block, and the final norm and LM head after the last.

use candle_core::{Device, Tensor};
use kwaai_core::model::{Checkpoint, ModelConfig};
use wasm_bindgen::prelude::*;

use crate::js_error;

/// Embeddings, final norm and LM head of a Llama, BLOOM or Falcon model.
#[wasm_bindgen]
pub struct ClientModel(kwaai_core::model::ClientModel);

fn load(config_json: &str, safetensors: Vec<u8>) -> kwaai_core::Result<kwaai_core::model::ClientModel> {
    let config = ModelConfig::from_json(config_json)?;
    kwaai_core::model::ClientModel::from_checkpoint(config, &Checkpoint::from_bytes(safetensors)?)
}

#[wasm_bindgen]
impl ClientModel {
    /// Reads the model's ends from the text of its `config.json` and the bytes of its
    /// `model.safetensors` (float32, float16 or bfloat16); no transformer block is read.
    #[wasm_bindgen(js_name = fromSafetensors)]
    pub fn from_safetensors(config_json: &str, safetensors: Vec<u8>) -> Result<ClientModel, JsError> {
        load(config_json, safetensors).map(ClientModel).map_err(js_error)
    }

    /// Width of the hidden states.
    #[wasm_bindgen(getter, js_name = hiddenSize)]
    pub fn hidden_size(&self) -> usize {
        self.0.config().hidden_size
    }

    /// Tokens in the vocabulary (the width of a row of logits).
    #[wasm_bindgen(getter, js_name = vocabSize)]
    pub fn vocab_size(&self) -> usize {
        self.0.config().vocab_size
    }

    /// Transformer blocks the swarm runs between the two ends.
    #[wasm_bindgen(getter, js_name = numBlocks)]
    pub fn num_blocks(&self) -> usize {
        self.0.config().num_layers
    }

    /// Hidden states for a sequence of token ids: `ids.length × hiddenSize` float32 values, row by row.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>, JsError> {
        let run = || -> kwaai_core::Result<Vec<f32>> {
            let ids = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu)?;
            Ok(self.0.embed(&ids)?.flatten_all()?.to_vec1::<f32>()?)
        };
        run().map_err(js_error)
    }

    /// Logits for hidden states after the last block (`tokens × hiddenSize` values, row by row):
    /// `tokens × vocabSize` float32 values.
    pub fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>, JsError> {
        let width = self.hidden_size();
        if hidden.is_empty() || !hidden.len().is_multiple_of(width) {
            return Err(JsError::new(&format!(
                "invalid_argument: {} hidden values are not whole rows of {width}",
                hidden.len()
            )));
        }
        let run = || -> kwaai_core::Result<Vec<f32>> {
            let x = Tensor::from_slice(hidden, (1, hidden.len() / width, width), &Device::Cpu)?;
            Ok(self.0.logits(&x)?.flatten_all()?.to_vec1::<f32>()?)
        };
        run().map_err(js_error)
    }
}
