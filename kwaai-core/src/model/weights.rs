//! Memory-mapped safetensors checkpoints (one file or a sharded index), read tensor by tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};

use super::ops::Linear;
use crate::{Error, ErrorKind, Result};

/// Progress of a load, reported after each tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    /// Tensors read so far.
    pub tensors_done: usize,
    /// Tensors to read in all.
    pub tensors_total: usize,
    /// Bytes read so far (as stored in the checkpoint).
    pub bytes_done: u64,
}

/// Where a tensor lies: its shard, dtype, shape and byte range in the shard.
struct Entry {
    shard: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

/// The safetensors files of a model directory, mapped into memory; headers are parsed once, tensor data is
/// read on request.
pub struct Checkpoint {
    shards: Vec<(PathBuf, Mmap)>,
    index: HashMap<String, Entry>,
}

fn io_err(path: &Path, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::Io, format!("{what} {}", path.display()), e)
}

fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| io_err(path, "opening", e))?;
    // SAFETY: the checkpoint is opened read-only; a file changed under a running node is outside our contract,
    // as it is for every mmap-based loader.
    unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, "mapping", e))
}

fn parse(path: &Path, data: &[u8], shard: usize, index: &mut HashMap<String, Entry>) -> Result<()> {
    let st = SafeTensors::deserialize(data).map_err(|e| {
        Error::with_source(ErrorKind::InvalidArgument, format!("bad safetensors {}", path.display()), e)
    })?;
    let base = data.as_ptr() as usize;
    for (name, view) in st.tensors() {
        let start = view.data().as_ptr() as usize - base;
        let range = start..start + view.data().len();
        index.insert(name, Entry { shard, dtype: view.dtype(), shape: view.shape().to_vec(), range });
    }
    Ok(())
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`.
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
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            if !path.exists() {
                return Err(Error::new(ErrorKind::Io, format!("missing checkpoint file {}", path.display())));
            }
            let mmap = map(&path)?;
            parse(&path, &mmap, i, &mut index)?;
            shards.push((path, mmap));
        }
        Ok(Checkpoint { shards, index })
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.index.get(name).ok_or_else(|| Error::invalid_argument(format!("the checkpoint has no tensor {name}")))
    }

    /// The stored dtype of a tensor.
    pub fn dtype_of(&self, name: &str) -> Result<DType> {
        dtype(self.entry(name)?.dtype, name)
    }

    /// Reads tensor `name`, checks its shape, and converts it to `to` on the CPU. Returns it with its stored size.
    pub fn load(&self, name: &str, shape: &[usize], to: DType) -> Result<(Tensor, u64)> {
        let e = self.entry(name)?;
        let (path, mmap) = &self.shards[e.shard];
        if e.shape != shape {
            return Err(Error::invalid_argument(format!(
                "{name} in {} has shape {:?}, expected {shape:?}",
                path.display(),
                e.shape
            )));
        }
        let dt = dtype(e.dtype, name)?;
        let data = &mmap[e.range.clone()];
        let t = Tensor::from_raw_buffer(data, dt, shape, &Device::Cpu)?.to_dtype(to)?;
        Ok((t, data.len() as u64))
    }
}

fn dtype(d: StDtype, name: &str) -> Result<DType> {
    Ok(match d {
        StDtype::F32 => DType::F32,
        StDtype::BF16 => DType::BF16,
        StDtype::F16 => DType::F16,
        other => return Err(Error::invalid_argument(format!("{name}: unsupported dtype {other:?}"))),
    })
}

/// Reads a list of named tensors with expected shapes, reporting progress after each.
pub(crate) struct Loader<'a, 'p> {
    pub ckpt: &'a Checkpoint,
    pub dtype: DType,
    pub done: usize,
    pub total: usize,
    pub bytes: u64,
    pub progress: Option<&'p mut dyn FnMut(LoadProgress)>,
    /// Quantize linear layers to 8 bits.
    pub quantize: bool,
}

impl Loader<'_, '_> {
    /// Loads one tensor.
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (t, bytes) = self.ckpt.load(name, shape, self.dtype)?;
        self.done += 1;
        self.bytes += bytes;
        if let Some(cb) = self.progress.as_mut() {
            cb(LoadProgress { tensors_done: self.done, tensors_total: self.total, bytes_done: self.bytes });
        }
        Ok(t)
    }

    /// Loads a linear layer's weight: bfloat16 weights stay bfloat16 (our kernels widen them as they stream),
    /// others become float32.
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let keep = self.ckpt.dtype_of(name)? == DType::BF16;
        let saved = self.dtype;
        if keep {
            self.dtype = DType::BF16;
        }
        let t = self.get(name, shape);
        self.dtype = saved;
        t
    }

    /// Loads a linear layer `{name}.weight` (out, inp), and `{name}.bias` if `bias`.
    pub fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.weight(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias { Some(self.get(&format!("{name}.bias"), &[out])?) } else { None };
        Linear::new(w, b, self.quantize)
    }

    /// Loads a tensor if the checkpoint has it.
    pub fn get_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.ckpt.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}
