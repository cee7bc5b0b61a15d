//! What an expert computes: the [`ExpertModule`] trait (hivemind's `ModuleBackend` forward and
//! backward over flat tensor lists) and [`FeedForwardExpert`], hivemind's `ffn` expert
//! (hivemind/moe/server/layers/common.py `FeedforwardBlock`).

use std::path::Path;

use candle_core::{DType as CDType, Device, Tensor as CTensor, Var, D};
use rand::{Rng, SeedableRng};

use super::schema::{ExpertSchema, TensorDescriptor};
use crate::error::{Error, ErrorKind, Result};

/// A module served as an expert. Inputs arrive flat (positional, then keywords by name), with a
/// leading batch dimension, on the CPU, in the schema's dtypes.
pub trait ExpertModule: Send + Sync + 'static {
    /// The expert's inputs and outputs.
    fn schema(&self) -> &ExpertSchema;

    /// The outputs for `inputs`, flat, in `schema().outputs` order.
    fn forward(&self, inputs: &[CTensor]) -> Result<Vec<CTensor>>;

    /// The gradient of `sum(outputs · grad_outputs)` with respect to every input (zeros for an
    /// input that is not floating point or does not affect the outputs). The default re-runs
    /// [`ExpertModule::forward`] under candle's autograd, as hivemind re-runs the module.
    fn backward(&self, inputs: &[CTensor], grad_outputs: &[CTensor]) -> Result<Vec<CTensor>> {
        autograd_backward(self, inputs, grad_outputs)
    }
}

/// The input gradients of `module` by candle autograd (see [`ExpertModule::backward`]).
pub fn autograd_backward<M: ExpertModule + ?Sized>(
    module: &M,
    inputs: &[CTensor],
    grad_outputs: &[CTensor],
) -> Result<Vec<CTensor>> {
    let vars = inputs
        .iter()
        .map(|t| if t.dtype().is_float() { Var::from_tensor(&t.detach()).map(Some) } else { Ok(None) })
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(candle)?;
    let tracked: Vec<CTensor> =
        vars.iter().zip(inputs).map(|(v, t)| v.as_ref().map_or_else(|| t.clone(), |v| v.as_tensor().clone())).collect();
    let outputs = module.forward(&tracked)?;
    if outputs.len() != grad_outputs.len() {
        return Err(Error::invalid_argument(format!(
            "expected {} output gradients, got {}",
            outputs.len(),
            grad_outputs.len()
        )));
    }
    let mut objective: Option<CTensor> = None;
    for (output, grad) in outputs.iter().zip(grad_outputs) {
        if output.dims() != grad.dims() {
            return Err(Error::invalid_argument(format!(
                "an output gradient has shape {:?}, the output {:?}",
                grad.dims(),
                output.dims()
            )));
        }
        let grad = grad.to_dtype(output.dtype()).map_err(candle)?;
        let term = (output * grad).and_then(|t| t.sum_all()).and_then(|t| t.to_dtype(CDType::F32)).map_err(candle)?;
        objective = Some(match objective {
            Some(sum) => (sum + term).map_err(candle)?,
            None => term,
        });
    }
    let grads = match objective {
        Some(objective) => Some(objective.backward().map_err(candle)?),
        None => None,
    };
    vars.iter()
        .zip(inputs)
        .map(|(var, input)| {
            let found = var.as_ref().and_then(|v| grads.as_ref().and_then(|g| g.get(v.as_tensor()).cloned()));
            match found {
                Some(grad) => Ok(grad),
                None => input.zeros_like().map_err(candle),
            }
        })
        .collect()
}

pub(crate) fn candle(e: candle_core::Error) -> Error {
    Error::with_source(ErrorKind::InvalidArgument, "expert computation failed", e)
}

/// hivemind's `ffn` expert: `LayerNorm(x + Linear(GELU(Linear(x))))`, hidden → 4·hidden →
/// hidden, tanh-approximated GELU, layer-norm epsilon 1e-12, float32 on the CPU.
#[derive(Debug, Clone)]
pub struct FeedForwardExpert {
    hidden: usize,
    ffn_weight: CTensor,
    ffn_bias: CTensor,
    out_weight: CTensor,
    out_bias: CTensor,
    norm_weight: CTensor,
    norm_bias: CTensor,
    schema: ExpertSchema,
}

/// The parameter names of the `ffn` expert, as its torch `state_dict` names them.
pub const FFN_PARAMETERS: [&str; 6] =
    ["ffn.weight", "ffn.bias", "ffn_output.weight", "ffn_output.bias", "layer_norm.weight", "layer_norm.bias"];

impl FeedForwardExpert {
    /// An expert of width `hidden` whose linear layers are drawn from `seed` as torch initialises
    /// them (uniform in ±1/√fan_in); the layer norm starts at weight 1, bias 0.
    pub fn from_seed(hidden: usize, seed: u64) -> Result<FeedForwardExpert> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
        };
        let inner = 4 * hidden;
        let tensor = |values: Vec<f32>, shape: &[usize]| CTensor::from_vec(values, shape, &Device::Cpu).map_err(candle);
        FeedForwardExpert::from_parameters([
            tensor(uniform(inner * hidden, hidden), &[inner, hidden])?,
            tensor(uniform(inner, hidden), &[inner])?,
            tensor(uniform(hidden * inner, inner), &[hidden, inner])?,
            tensor(uniform(hidden, inner), &[hidden])?,
            tensor(vec![1.0; hidden], &[hidden])?,
            tensor(vec![0.0; hidden], &[hidden])?,
        ])
    }

    /// An expert from its parameters in [`FFN_PARAMETERS`] order.
    pub fn from_parameters(parameters: [CTensor; 6]) -> Result<FeedForwardExpert> {
        let [ffn_weight, ffn_bias, out_weight, out_bias, norm_weight, norm_bias] =
            parameters.map(|p| p.to_dtype(CDType::F32).and_then(|p| p.to_device(&Device::Cpu)));
        let (ffn_weight, ffn_bias, out_weight, out_bias, norm_weight, norm_bias) = (
            ffn_weight.map_err(candle)?,
            ffn_bias.map_err(candle)?,
            out_weight.map_err(candle)?,
            out_bias.map_err(candle)?,
            norm_weight.map_err(candle)?,
            norm_bias.map_err(candle)?,
        );
        let hidden = ffn_weight.dim(1).map_err(candle)?;
        let inner = 4 * hidden;
        let expected: [(&CTensor, Vec<usize>); 6] = [
            (&ffn_weight, vec![inner, hidden]),
            (&ffn_bias, vec![inner]),
            (&out_weight, vec![hidden, inner]),
            (&out_bias, vec![hidden]),
            (&norm_weight, vec![hidden]),
            (&norm_bias, vec![hidden]),
        ];
        for ((tensor, shape), name) in expected.iter().zip(FFN_PARAMETERS) {
            if tensor.dims() != shape.as_slice() {
                return Err(Error::invalid_argument(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    tensor.dims()
                )));
            }
        }
        let width = hidden as u64;
        let schema = ExpertSchema::new(
            vec![TensorDescriptor::f32(&[width])],
            TensorDescriptor { requires_grad: true, ..TensorDescriptor::f32(&[width]) },
        );
        Ok(FeedForwardExpert { hidden, ffn_weight, ffn_bias, out_weight, out_bias, norm_weight, norm_bias, schema })
    }

    /// Loads an expert from a safetensors file holding [`FFN_PARAMETERS`].
    pub fn load(path: &Path) -> Result<FeedForwardExpert> {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("reading {}", path.display()), e))?;
        let mut take = |name: &str| {
            tensors.remove(name).ok_or_else(|| Error::invalid_argument(format!("{} has no {name}", path.display())))
        };
        FeedForwardExpert::from_parameters([
            take(FFN_PARAMETERS[0])?,
            take(FFN_PARAMETERS[1])?,
            take(FFN_PARAMETERS[2])?,
            take(FFN_PARAMETERS[3])?,
            take(FFN_PARAMETERS[4])?,
            take(FFN_PARAMETERS[5])?,
        ])
    }

    /// Saves the parameters to a safetensors file under their torch names.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, CTensor> =
            FFN_PARAMETERS.iter().map(|n| n.to_string()).zip(self.parameters().into_iter().cloned()).collect();
        candle_core::safetensors::save(&tensors, path)
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("writing {}", path.display()), e))
    }

    /// The parameters in [`FFN_PARAMETERS`] order.
    pub fn parameters(&self) -> [&CTensor; 6] {
        [&self.ffn_weight, &self.ffn_bias, &self.out_weight, &self.out_bias, &self.norm_weight, &self.norm_bias]
    }

    /// The expert's width.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// `LayerNorm(x + W2·gelu(W1·x + b1) + b2)` for `x` of shape `[batch, hidden]`.
    pub fn apply(&self, x: &CTensor) -> Result<CTensor> {
        let compute = || -> candle_core::Result<CTensor> {
            let x = x.to_dtype(CDType::F32)?;
            let inner = x.matmul(&self.ffn_weight.t()?)?.broadcast_add(&self.ffn_bias)?;
            let inner = gelu_tanh(&inner)?;
            let out = inner.matmul(&self.out_weight.t()?)?.broadcast_add(&self.out_bias)?;
            layer_norm(&(x + out)?, &self.norm_weight, &self.norm_bias, 1e-12)
        };
        compute().map_err(candle)
    }
}

impl ExpertModule for FeedForwardExpert {
    fn schema(&self) -> &ExpertSchema {
        &self.schema
    }

    fn forward(&self, inputs: &[CTensor]) -> Result<Vec<CTensor>> {
        let [x] = inputs else {
            return Err(Error::invalid_argument(format!("the ffn expert takes 1 input, got {}", inputs.len())));
        };
        if x.rank() != 2 || x.dim(1).ok() != Some(self.hidden) {
            return Err(Error::invalid_argument(format!(
                "the ffn expert takes [batch, {}], got {:?}",
                self.hidden,
                x.dims()
            )));
        }
        Ok(vec![self.apply(x)?])
    }
}

/// hivemind's `gelu_fast`: `0.5·x·(1 + tanh(0.7978845608·x·(1 + 0.044715·x²)))`, built from
/// differentiable operations.
fn gelu_tanh(x: &CTensor) -> candle_core::Result<CTensor> {
    let inner = (x.sqr()?.affine(0.044715, 1.0)? * x)?.affine(0.797_884_560_8, 0.0)?;
    (inner.tanh()?.affine(1.0, 1.0)? * x)?.affine(0.5, 0.0)
}

/// Layer normalisation over the last dimension, built from differentiable operations.
fn layer_norm(x: &CTensor, weight: &CTensor, bias: &CTensor, eps: f64) -> candle_core::Result<CTensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(variance + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffn_gradients_match_finite_differences() {
        let expert = FeedForwardExpert::from_seed(4, 7).unwrap();
        let x = CTensor::new(&[[0.3f32, -1.2, 0.8, 0.1], [1.0, 0.5, -0.4, 2.0]], &Device::Cpu).unwrap();
        let g = CTensor::new(&[[1.0f32, -2.0, 0.5, 0.0], [0.2, 0.3, -1.0, 1.5]], &Device::Cpu).unwrap();
        let grad = expert
            .backward(std::slice::from_ref(&x), std::slice::from_ref(&g))
            .unwrap()
            .remove(0)
            .to_vec2::<f32>()
            .unwrap();
        let objective = |x: &CTensor| -> f32 {
            let y = expert.forward(std::slice::from_ref(x)).unwrap().remove(0);
            (y * &g).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        };
        let eps = 1e-2f32;
        for (i, j) in [(0usize, 0usize), (0, 3), (1, 1), (1, 2)] {
            let mut shifted = x.to_vec2::<f32>().unwrap();
            shifted[i][j] += eps;
            let up = objective(&CTensor::new(shifted.clone(), &Device::Cpu).unwrap());
            shifted[i][j] -= 2.0 * eps;
            let down = objective(&CTensor::new(shifted, &Device::Cpu).unwrap());
            let numeric = (up - down) / (2.0 * eps);
            assert!((numeric - grad[i][j]).abs() < 2e-2, "({i},{j}): {numeric} vs {}", grad[i][j]);
        }
        let out = expert.forward(&[x]).unwrap().remove(0).to_vec2::<f32>().unwrap();
        for row in out {
            let mean = row.iter().sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-5, "layer norm centres each row: {mean}");
        }
    }
}
