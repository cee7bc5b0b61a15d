//! Loading from a Hugging Face model directory: its safetensors files memory-mapped, and the client's ends or a
//! server's span of blocks read from them.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::client::ClientModel;
use super::config::ModelConfig;
use super::span::{check_span, BlockSpan, LoadOptions};
use super::weights::{Checkpoint, ShardBytes};
use crate::{Error, ErrorKind, Result};

fn io_err(path: &Path, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::Io, format!("{what} {}", path.display()), e)
}

fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| io_err(path, "opening", e))?;
    // SAFETY: the checkpoint is opened read-only; a file changed under a running node is outside our contract,
    // as it is for every mmap-based loader.
    unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, "mapping", e))
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`, memory-mapped.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| io_err(&index_path, "reading", e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Error::with_source(ErrorKind::InvalidArgument, format!("bad {}", index_path.display()), e)
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::invalid_argument(format!("{}: no weight_map", index_path.display())))?;
            let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            if names.iter().any(|n| n.contains('/') || n.contains("..")) {
                return Err(Error::invalid_argument("weight_map names a file outside the model directory"));
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut shards = Vec::with_capacity(files.len());
        for path in files {
            if !path.exists() {
                return Err(Error::new(ErrorKind::Io, format!("missing checkpoint file {}", path.display())));
            }
            let bytes: ShardBytes = Box::new(map(&path)?);
            shards.push((path.display().to_string(), bytes));
        }
        Checkpoint::from_shards(shards)
    }
}

impl ClientModel {
    /// Loads the embeddings, final norm and LM head from a model directory (no blocks are read).
    pub fn load(dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        ClientModel::from_checkpoint(config, &Checkpoint::open(dir)?)
    }
}

impl BlockSpan {
    /// Loads blocks `start..end` from a Hugging Face model directory, reading only their tensors.
    pub fn load(dir: &Path, start: usize, end: usize, options: LoadOptions<'_>) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        check_span(&config, start, end)?;
        BlockSpan::from_checkpoint(config, &Checkpoint::open(dir)?, start, end, options)
    }
}
