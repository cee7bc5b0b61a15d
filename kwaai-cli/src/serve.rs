//! Serving a span of a model's blocks: the flags, their checks against the model, and the call
//! that starts serving.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kwaai_core::client::dht_prefix_for_dir;
use kwaai_core::model::ModelConfig;
use kwaai_core::server::{LoadProgressCallback, Server, ServerConfig};
use kwaai_core::tensor::DType;
use kwaai_core::Node;
use serde::{Deserialize, Serialize};

use crate::config::{parse_block_indices, Config};
use crate::failure::Failure;

/// What to serve (Petals' `run_server` flags, in kebab-case).
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct ServeArgs {
    /// A model directory (config.json + safetensors) to serve blocks of.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// How many blocks to serve (chosen automatically when neither this nor --block-indices is given).
    #[arg(long = "num-blocks", value_name = "N", conflicts_with = "block_indices")]
    pub num_blocks: Option<usize>,
    /// The blocks to serve, start:end (end exclusive).
    #[arg(long = "block-indices", value_name = "A:B")]
    pub block_indices: Option<String>,
    /// The DHT prefix of the model's records (derived from the model name when not given).
    #[arg(long = "dht-prefix", value_name = "P")]
    pub dht_prefix: Option<String>,
    /// Throughput to announce, tokens/s (measured when not given).
    #[arg(long, value_name = "X")]
    pub throughput: Option<f64>,
    /// The dtype to serve in: float32 or bfloat16 (default: the checkpoint's, float32 becoming bfloat16).
    #[arg(long = "torch-dtype", value_name = "DTYPE")]
    pub torch_dtype: Option<String>,
}

impl ServeArgs {
    /// Overrides `config` with every flag given; a span flag replaces the other span flag.
    pub fn apply_to(&self, config: &mut Config) {
        if let Some(model) = &self.model {
            config.model = Some(model.clone());
        }
        if let Some(n) = self.num_blocks {
            config.num_blocks = Some(n);
            config.block_indices = None;
        }
        if let Some(indices) = &self.block_indices {
            config.block_indices = Some(indices.clone());
            config.num_blocks = None;
        }
        if let Some(prefix) = &self.dht_prefix {
            config.dht_prefix = Some(prefix.clone());
        }
        if let Some(t) = self.throughput {
            config.throughput = Some(t);
        }
        if let Some(dtype) = &self.torch_dtype {
            config.torch_dtype = Some(dtype.clone());
        }
    }

    /// The serving settings of an effective configuration; `None` when it serves no model.
    pub fn from_config(config: &Config) -> Option<ServeArgs> {
        Some(ServeArgs {
            model: Some(config.model.clone()?),
            num_blocks: config.num_blocks,
            block_indices: config.block_indices.clone(),
            dht_prefix: config.dht_prefix.clone(),
            throughput: config.throughput,
            torch_dtype: config.torch_dtype.clone(),
        })
    }

    /// Checks the flags against the model: its config.json loads and the span fits its blocks.
    pub fn check_model(&self) -> Result<ModelConfig, Failure> {
        let dir = self.model.as_ref().ok_or_else(|| Failure::usage("no --model given"))?;
        if !dir.is_dir() {
            return Err(Failure::usage(format!("model directory {} does not exist", dir.display())));
        }
        let model = ModelConfig::from_dir(dir)
            .map_err(|e| Failure::usage(format!("model {}: {}", dir.display(), e.message())))?;
        if let Some(indices) = &self.block_indices {
            let span = parse_block_indices(indices).map_err(Failure::usage)?;
            if span.end as usize > model.num_layers {
                return Err(Failure::usage(format!(
                    "--block-indices {indices} goes past the model's {} blocks",
                    model.num_layers
                )));
            }
        }
        if let Some(n) = self.num_blocks {
            if n > model.num_layers {
                return Err(Failure::usage(format!(
                    "--num-blocks {n} exceeds the model's {} blocks",
                    model.num_layers
                )));
            }
        }
        Ok(model)
    }
}

/// The blocks a node serves, as `kwaainet status` reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedSpan {
    /// First block.
    pub start: u32,
    /// One past the last block.
    pub end: u32,
    /// The DHT prefix the blocks are announced under.
    pub dht_prefix: String,
}

/// Starts serving `serve` on `node` (announced under `--dht-prefix`, or the model directory's
/// name) and returns the running server with the span it announces.
pub fn serve_model(node: &Node, serve: &ServeArgs) -> Result<(Server, ServedSpan), Failure> {
    serve.check_model()?;
    let model_dir = serve.model.clone().ok_or_else(|| Failure::usage("no --model given"))?;
    let block_indices = match &serve.block_indices {
        Some(text) => Some(parse_block_indices(text).map_err(Failure::usage)?),
        None => None,
    };
    let dht_prefix = match &serve.dht_prefix {
        Some(prefix) => prefix.clone(),
        None => dht_prefix_for_dir(&model_dir)?,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading blocks [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shown = bar.clone();
    let config = ServerConfig {
        on_load_progress: Some(LoadProgressCallback(Arc::new(move |loaded, total| {
            shown.set_length(total as u64);
            shown.set_position(loaded as u64);
        }))),
        model_dir,
        block_indices,
        num_blocks: serve.num_blocks.map(|n| n as u32),
        dht_prefix: Some(dht_prefix.clone()),
        throughput: serve.throughput,
        torch_dtype: serve.torch_dtype.as_deref().map(DType::from_name).transpose()?,
        ..ServerConfig::default()
    };
    tracing::info!(peer_id = %node.peer_id(), dht_prefix, "loading the model's blocks");
    let server = Server::start(node, config);
    bar.finish_and_clear();
    let server = server?;
    let span = server.span();
    Ok((server, ServedSpan { start: span.start, end: span.end, dht_prefix }))
}
