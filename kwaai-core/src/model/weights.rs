//! Safetensors checkpoints held in memory (one file or the shards of an index), read tensor by tensor.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
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

/// The safetensors files of a model, mapped or read into memory; headers are parsed once, tensor data is read
/// on request.
pub struct Checkpoint {
    /// Each file's name (for errors) and bytes.
    shards: Vec<(String, ShardBytes)>,
    index: HashMap<String, Entry>,
}

/// Bytes of one safetensors file: memory-mapped from disk, or owned.
pub(crate) type ShardBytes = Box<dyn AsRef<[u8]> + Send + Sync>;

fn parse(name: &str, data: &[u8], shard: usize, index: &mut HashMap<String, Entry>) -> Result<()> {
    let st = SafeTensors::deserialize(data)
        .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, format!("bad safetensors {name}"), e))?;
    let base = data.as_ptr() as usize;
    for (name, view) in st.tensors() {
        let start = view.data().as_ptr() as usize - base;
        let range = start..start + view.data().len();
        index.insert(name, Entry { shard, dtype: view.dtype(), shape: view.shape().to_vec(), range });
    }
    Ok(())
}

impl Checkpoint {
    /// A checkpoint of safetensors files already in memory, each with the name its errors use.
    pub(crate) fn from_shards(files: Vec<(String, ShardBytes)>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, (name, bytes)) in files.iter().enumerate() {
            parse(name, (**bytes).as_ref(), i, &mut index)?;
        }
        Ok(Checkpoint { shards: files, index })
    }

    /// A checkpoint of one safetensors file's bytes (e.g. fetched by a browser).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Checkpoint::from_shards(vec![("model.safetensors".to_owned(), Box::new(bytes))])
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
        let (file, bytes) = &self.shards[e.shard];
        if e.shape != shape {
            return Err(Error::invalid_argument(format!(
                "{name} in {file} has shape {:?}, expected {shape:?}",
                e.shape
            )));
        }
        let dt = dtype(e.dtype, name)?;
        let data = &(**bytes).as_ref()[e.range.clone()];
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
