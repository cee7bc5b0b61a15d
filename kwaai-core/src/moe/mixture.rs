//! A mixture-of-experts layer over remote experts, as hivemind's `RemoteMixtureOfExperts` computes
//! it (hivemind/moe/client/moe.py): a local linear gate scores every grid dimension, beam search
//! picks up to `k_best` live experts per sample, every chosen expert runs on its sample, and the
//! outputs of the experts that answered are averaged with softmax weights of their scores.
//! Experts that fail or miss the deadline are skipped: the call waits until `k_min` experts
//! answered for every sample, then at most `timeout_after_k_min` for the rest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use candle_core::{Device, Tensor as CTensor};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rand::{Rng, SeedableRng};

use super::beam_search::MoeBeamSearcher;
use super::expert::candle;
use super::remote::{RemoteExpert, DEFAULT_CALL_TIMEOUT};
use super::uid::{ExpertInfo, UID_DELIMITER};
use crate::error::{Error, ErrorKind, Result};
use crate::node::Node;
use crate::p2p::Rpc;

/// How a [`RemoteMixtureOfExperts`] picks and waits for experts (hivemind's keyword arguments).
#[derive(Debug, Clone)]
pub struct MixtureConfig {
    /// Expert uids are `{uid_prefix}{i}.{j}…`.
    pub uid_prefix: String,
    /// Indices along each grid dimension.
    pub grid_size: Vec<usize>,
    /// Experts chosen per sample.
    pub k_best: usize,
    /// The forward pass fails unless at least this many expert calls answered.
    pub k_min: usize,
    /// The longest a forward pass waits in all (`None`: no limit).
    pub forward_timeout: Option<Duration>,
    /// Once every sample has `k_min` answers, how long to wait for the others (`None`: no limit).
    pub timeout_after_k_min: Option<Duration>,
    /// The backward pass fails unless at least this many expert calls answered.
    pub backward_k_min: usize,
    /// The longest a backward pass waits in all (`None`: no limit).
    pub backward_timeout: Option<Duration>,
    /// Return zeros instead of failing when no expert answered.
    pub allow_zero_outputs: bool,
    /// Write "no experts here" entries for empty prefixes during beam search.
    pub negative_caching: bool,
    /// The limit on each single expert call.
    pub call_timeout: Duration,
}

impl MixtureConfig {
    /// hivemind's defaults: `k_min = backward_k_min = 1`, no timeouts, negative caching on.
    pub fn new(uid_prefix: &str, grid_size: Vec<usize>, k_best: usize) -> MixtureConfig {
        MixtureConfig {
            uid_prefix: uid_prefix.to_owned(),
            grid_size,
            k_best,
            k_min: 1,
            forward_timeout: None,
            timeout_after_k_min: None,
            backward_k_min: 1,
            backward_timeout: None,
            allow_zero_outputs: false,
            negative_caching: true,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// The result of [`RemoteMixtureOfExperts::forward`], kept for the backward pass.
#[derive(Debug, Clone)]
pub struct MixtureForward {
    /// The mixture's output, `[batch, output dims…]`.
    pub output: CTensor,
    /// The experts chosen for each sample, best first.
    pub experts: Vec<Vec<ExpertInfo>>,
    /// Whether each chosen expert answered.
    pub responded: Vec<Vec<bool>>,
    /// The softmax weight of each chosen expert (0 where it did not answer).
    pub weights: Vec<Vec<f32>>,
    input: CTensor,
    expert_outputs: Vec<Vec<Option<CTensor>>>,
}

/// The gradients of [`RemoteMixtureOfExperts::backward`].
#[derive(Debug, Clone)]
pub struct MixtureGradients {
    /// With respect to the input, through the experts and through the gate.
    pub input: CTensor,
    /// With respect to the gate's weight, `[sum(grid_size), in_features]`.
    pub gate_weight: CTensor,
    /// With respect to the gate's bias, `[sum(grid_size)]`.
    pub gate_bias: CTensor,
    /// Whether each expert that answered the forward pass answered the backward pass too.
    pub responded: Vec<Vec<bool>>,
}

/// A mixture-of-experts layer whose experts live on other peers. Input `[batch, in_features]`
/// goes to every chosen expert as its only argument.
pub struct RemoteMixtureOfExperts {
    config: MixtureConfig,
    searcher: MoeBeamSearcher,
    rpc: Rpc,
    runtime: tokio::runtime::Handle,
    in_features: usize,
    gate_weight: Vec<f32>,
    gate_bias: Vec<f32>,
    experts: Mutex<HashMap<String, RemoteExpert>>,
}

impl std::fmt::Debug for RemoteMixtureOfExperts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMixtureOfExperts").field("config", &self.config).finish()
    }
}

impl RemoteMixtureOfExperts {
    /// A layer on `node` with gate `logits = gate_weight · x + gate_bias`, `gate_weight` of shape
    /// `[sum(grid_size), in_features]`.
    pub fn new(
        node: &Node,
        config: MixtureConfig,
        gate_weight: &CTensor,
        gate_bias: &CTensor,
    ) -> Result<RemoteMixtureOfExperts> {
        let total: usize = config.grid_size.iter().sum();
        let (rows, in_features) = gate_weight.dims2().map_err(candle)?;
        if rows != total || gate_bias.dims() != [total] {
            return Err(Error::invalid_argument(format!(
                "the gate needs weight [{total}, in] and bias [{total}], got {:?} and {:?}",
                gate_weight.dims(),
                gate_bias.dims()
            )));
        }
        if config.k_best == 0 {
            return Err(Error::invalid_argument("k_best must be positive"));
        }
        let flat = |t: &CTensor| t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let searcher =
            MoeBeamSearcher::new(node, &config.uid_prefix, config.grid_size.clone(), config.negative_caching)?;
        Ok(RemoteMixtureOfExperts {
            searcher,
            rpc: node.rpc()?,
            runtime: node.runtime_handle()?,
            in_features,
            gate_weight: flat(gate_weight).map_err(candle)?,
            gate_bias: flat(gate_bias).map_err(candle)?,
            experts: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// A layer whose gate is drawn from `seed` as torch initialises a linear layer.
    pub fn with_seeded_gate(
        node: &Node,
        config: MixtureConfig,
        in_features: usize,
        seed: u64,
    ) -> Result<RemoteMixtureOfExperts> {
        let total: usize = config.grid_size.iter().sum();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bound = 1.0 / (in_features as f32).sqrt();
        let mut draw = |n: usize| (0..n).map(|_| rng.gen_range(-bound..bound)).collect::<Vec<f32>>();
        let weight =
            CTensor::from_vec(draw(total * in_features), (total, in_features), &Device::Cpu).map_err(candle)?;
        let bias = CTensor::from_vec(draw(total), total, &Device::Cpu).map_err(candle)?;
        RemoteMixtureOfExperts::new(node, config, &weight, &bias)
    }

    /// The gate's weight and bias.
    pub fn gate(&self) -> Result<(CTensor, CTensor)> {
        let total = self.gate_bias.len();
        let weight = CTensor::from_vec(self.gate_weight.clone(), (total, self.in_features), &Device::Cpu);
        let bias = CTensor::from_vec(self.gate_bias.clone(), total, &Device::Cpu);
        Ok((weight.map_err(candle)?, bias.map_err(candle)?))
    }

    /// The gate logits of one input row, `[sum(grid_size)]`.
    fn gate_logits(&self, row: &[f32]) -> Vec<f32> {
        (0..self.gate_bias.len())
            .map(|t| {
                let w = &self.gate_weight[t * self.in_features..(t + 1) * self.in_features];
                self.gate_bias[t] + w.iter().zip(row).map(|(a, b)| a * b).sum::<f32>()
            })
            .collect()
    }

    /// Gate logits split into one score list per grid dimension.
    fn split_by_dimension(&self, logits: &[f32]) -> Vec<Vec<f32>> {
        let mut rest = logits;
        self.config
            .grid_size
            .iter()
            .map(|&n| {
                let (dimension, tail) = rest.split_at(n);
                rest = tail;
                dimension.to_vec()
            })
            .collect()
    }

    /// The gate-logit positions (one per dimension) that score `uid`.
    fn logit_positions(&self, uid: &str) -> Result<Vec<usize>> {
        let coordinates = uid
            .strip_prefix(self.searcher.prefix())
            .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("{uid} is not under {}", self.searcher.prefix())))?;
        let coordinates: Vec<usize> = coordinates
            .split(UID_DELIMITER)
            .map(|c| c.parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::new(ErrorKind::Protocol, format!("{uid} does not fit the grid")))?;
        if coordinates.len() != self.config.grid_size.len() {
            return Err(Error::new(ErrorKind::Protocol, format!("{uid} does not fit the grid")));
        }
        let mut offset = 0;
        coordinates
            .iter()
            .zip(&self.config.grid_size)
            .map(|(&c, &n)| {
                offset += n;
                if c < n {
                    Ok(offset - n + c)
                } else {
                    Err(Error::new(ErrorKind::Protocol, format!("{uid} does not fit the grid")))
                }
            })
            .collect()
    }

    fn remote(&self, info: &ExpertInfo) -> RemoteExpert {
        let mut experts = self.experts.lock().unwrap_or_else(|p| p.into_inner());
        experts
            .entry(info.uid.clone())
            .or_insert_with(|| {
                RemoteExpert::from_parts(info.clone(), self.rpc.clone(), self.runtime.clone(), self.config.call_timeout)
            })
            .clone()
    }

    /// Runs the layer on `input` (`[batch, in_features]`).
    pub fn forward(&self, input: &CTensor) -> Result<MixtureForward> {
        self.runtime.block_on(self.forward_async(input))
    }

    /// Runs the layer on `input` (`[batch, in_features]`).
    pub async fn forward_async(&self, input: &CTensor) -> Result<MixtureForward> {
        let (batch, width) = input.dims2().map_err(candle)?;
        if width != self.in_features {
            return Err(Error::invalid_argument(format!("input width {width}, the gate takes {}", self.in_features)));
        }
        let input = input.to_dtype(candle_core::DType::F32).map_err(candle)?;
        let rows = input.to_vec2::<f32>().map_err(candle)?;
        let logits: Vec<Vec<f32>> = rows.iter().map(|row| self.gate_logits(row)).collect();
        let scores: Vec<Vec<Vec<f32>>> = logits.iter().map(|l| self.split_by_dimension(l)).collect();
        let experts = self.searcher.batch_find_best_experts_async(&scores, self.config.k_best).await?;
        let first = experts.iter().flatten().next().ok_or_else(|| {
            Error::new(
                ErrorKind::Network,
                "No responding experts found during beam search. Check that UID prefixes and the grid size are \
                 consistent with running servers.",
            )
        })?;
        let schema = self.remote(first).info_async().await?;
        if schema.flat_inputs().len() != 1 || schema.outputs.len() != 1 {
            return Err(Error::invalid_argument("the mixture needs experts with one input and one output"));
        }

        let mut calls: Vec<ExpertCall<'_, CTensor>> = Vec::new();
        for (i, chosen) in experts.iter().enumerate() {
            let row = input.narrow(0, i, 1).map_err(candle)?;
            for (j, info) in chosen.iter().enumerate() {
                let expert = self.remote(info);
                let row = row.clone();
                calls.push((
                    (i, j),
                    Box::pin(async move {
                        let mut outputs = expert.forward_async(&[row]).await?;
                        outputs.pop().ok_or_else(|| Error::new(ErrorKind::Protocol, "an expert returned nothing"))
                    }),
                ));
            }
        }
        let answers = collect_responses(
            calls,
            batch,
            self.config.k_min,
            self.config.forward_timeout,
            self.config.timeout_after_k_min,
        )
        .await;
        if answers.len() < self.config.k_min {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("Forward pass: less than {} responded within timeout", self.config.k_min),
            ));
        }
        if answers.is_empty() && !self.config.allow_zero_outputs {
            return Err(Error::new(ErrorKind::Timeout, "Forward pass: 0 experts responded within timeout"));
        }

        let mut expert_outputs: Vec<Vec<Option<CTensor>>> = experts.iter().map(|c| vec![None; c.len()]).collect();
        for ((i, j), output) in answers {
            expert_outputs[i][j] = Some(output);
        }
        let out_dims: Vec<usize> = schema.outputs[0].shape.iter().map(|&d| d as usize).collect();
        let mut weights = Vec::with_capacity(batch);
        let mut rows_out = Vec::with_capacity(batch);
        for (i, chosen) in experts.iter().enumerate() {
            // An expert's logit is the sum of its coordinates' gate logits.
            let expert_logits = chosen
                .iter()
                .zip(&expert_outputs[i])
                .map(|(info, output)| match output {
                    Some(_) => Ok(Some(self.logit_positions(&info.uid)?.iter().map(|&p| logits[i][p]).sum::<f32>())),
                    None => Ok(None),
                })
                .collect::<Result<Vec<Option<f32>>>>()?;
            let w = softmax(&expert_logits);
            let mut row = CTensor::zeros(out_dims.as_slice(), candle_core::DType::F32, &Device::Cpu).map_err(candle)?;
            for (weight, output) in w.iter().zip(&expert_outputs[i]) {
                if let Some(output) = output {
                    let output = output.to_dtype(candle_core::DType::F32).and_then(|o| o.squeeze(0)).map_err(candle)?;
                    if output.dims() != out_dims.as_slice() {
                        return Err(Error::new(ErrorKind::Protocol, "an expert output has the wrong shape"));
                    }
                    row = (row + output.affine(f64::from(*weight), 0.0).map_err(candle)?).map_err(candle)?;
                }
            }
            weights.push(w);
            rows_out.push(row);
        }
        let output = CTensor::stack(&rows_out, 0).map_err(candle)?;
        let responded = expert_outputs.iter().map(|r| r.iter().map(Option::is_some).collect()).collect();
        Ok(MixtureForward { output, experts, responded, weights, input, expert_outputs })
    }

    /// Gradients of `sum(output · grad_output)` for a forward pass. Experts that fail here count
    /// as constants (their input gradient is left out), as in hivemind.
    pub fn backward(&self, forward: &MixtureForward, grad_output: &CTensor) -> Result<MixtureGradients> {
        self.runtime.block_on(self.backward_async(forward, grad_output))
    }

    /// See [`RemoteMixtureOfExperts::backward`].
    pub async fn backward_async(&self, forward: &MixtureForward, grad_output: &CTensor) -> Result<MixtureGradients> {
        if grad_output.dims() != forward.output.dims() {
            return Err(Error::invalid_argument(format!(
                "grad_output has shape {:?}, the output {:?}",
                grad_output.dims(),
                forward.output.dims()
            )));
        }
        let grad_output = grad_output.to_dtype(candle_core::DType::F32).map_err(candle)?;
        let batch = forward.experts.len();
        let mut calls: Vec<ExpertCall<'_, CTensor>> = Vec::new();
        for (i, chosen) in forward.experts.iter().enumerate() {
            let row = forward.input.narrow(0, i, 1).map_err(candle)?;
            let grad_row = grad_output.narrow(0, i, 1).map_err(candle)?;
            for (j, info) in chosen.iter().enumerate() {
                if forward.expert_outputs[i][j].is_none() {
                    continue;
                }
                let expert = self.remote(info);
                let row = row.clone();
                let grad = grad_row.affine(f64::from(forward.weights[i][j]), 0.0).map_err(candle)?;
                calls.push((
                    (i, j),
                    Box::pin(async move {
                        let mut grads = expert.backward_async(&[row], &[grad]).await?;
                        grads.pop().ok_or_else(|| Error::new(ErrorKind::Protocol, "an expert returned no gradient"))
                    }),
                ));
            }
        }
        let answers = collect_responses(
            calls,
            batch,
            self.config.backward_k_min,
            self.config.backward_timeout,
            self.config.timeout_after_k_min,
        )
        .await;
        if answers.len() < self.config.backward_k_min {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("Backward pass: less than {} experts responded within timeout", self.config.backward_k_min),
            ));
        }

        let width = self.in_features;
        let total = self.gate_bias.len();
        let mut grad_input = vec![0f32; batch * width];
        let mut responded: Vec<Vec<bool>> = forward.experts.iter().map(|c| vec![false; c.len()]).collect();
        for ((i, j), grad) in answers {
            let grad = grad.flatten_all().and_then(|g| g.to_vec1::<f32>()).map_err(candle)?;
            if grad.len() != width {
                return Err(Error::new(ErrorKind::Protocol, "an expert gradient has the wrong shape"));
            }
            for (acc, g) in grad_input[i * width..(i + 1) * width].iter_mut().zip(grad) {
                *acc += g;
            }
            responded[i][j] = true;
        }

        // The gate: d(output_i)/d(logit_ij) = w_ij (y_ij - output_i), so
        // d(loss)/d(logit_ij) = w_ij (<y_ij, g_i> - Σ_k w_ik <y_ik, g_i>).
        let inputs = forward.input.to_vec2::<f32>().map_err(candle)?;
        let grads = grad_output.flatten_from(1).and_then(|g| g.to_vec2::<f32>()).map_err(candle)?;
        let mut gate_weight = vec![0f32; total * width];
        let mut gate_bias = vec![0f32; total];
        for (i, chosen) in forward.experts.iter().enumerate() {
            let dots = forward.expert_outputs[i]
                .iter()
                .map(|output| {
                    output
                        .as_ref()
                        .map(|o| {
                            let o = o.flatten_all()?.to_vec1::<f32>()?;
                            Ok(o.iter().zip(&grads[i]).map(|(a, b)| a * b).sum::<f32>())
                        })
                        .transpose()
                })
                .collect::<candle_core::Result<Vec<Option<f32>>>>()
                .map_err(candle)?;
            let mean: f32 = dots.iter().zip(&forward.weights[i]).map(|(d, w)| d.unwrap_or(0.0) * w).sum();
            let mut grad_logits = vec![0f32; total];
            for ((info, dot), w) in chosen.iter().zip(&dots).zip(&forward.weights[i]) {
                let Some(dot) = dot else { continue };
                let grad_logit = w * (dot - mean);
                for position in self.logit_positions(&info.uid)? {
                    grad_logits[position] += grad_logit;
                }
            }
            for (t, g) in grad_logits.iter().enumerate() {
                if *g == 0.0 {
                    continue;
                }
                gate_bias[t] += g;
                let w_row = &self.gate_weight[t * width..(t + 1) * width];
                for k in 0..width {
                    grad_input[i * width + k] += g * w_row[k];
                    gate_weight[t * width + k] += g * inputs[i][k];
                }
            }
        }
        let tensor = |v: Vec<f32>, shape: &[usize]| CTensor::from_vec(v, shape, &Device::Cpu).map_err(candle);
        Ok(MixtureGradients {
            input: tensor(grad_input, &[batch, width])?,
            gate_weight: tensor(gate_weight, &[total, width])?,
            gate_bias: tensor(gate_bias, &[total])?,
            responded,
        })
    }
}

/// One pending expert call: (sample, expert slot) and the call.
type ExpertCall<'a, T> = ((usize, usize), BoxFuture<'a, Result<T>>);

/// Softmax over the present logits; absent ones get weight 0 (all absent: all 0).
fn softmax(logits: &[Option<f32>]) -> Vec<f32> {
    let max = logits.iter().flatten().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    let exps: Vec<f32> = logits.iter().map(|l| l.map_or(0.0, |l| (l - max).exp())).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Awaits the calls as they finish (hivemind's `_collect_responses`): stops at `total` after the
/// start, or `after_k_min` after every one of `samples` samples has `k_min` answers, whichever
/// comes first; calls still running then are dropped. Failed calls are logged and left out.
async fn collect_responses<T>(
    calls: Vec<ExpertCall<'_, T>>,
    samples: usize,
    k_min: usize,
    total: Option<Duration>,
    after_k_min: Option<Duration>,
) -> Vec<((usize, usize), T)> {
    let start = tokio::time::Instant::now();
    let mut deadline = total.map(|t| start + t);
    let mut successes = vec![0usize; samples];
    let mut pending_samples = samples;
    let mut running: FuturesUnordered<_> =
        calls.into_iter().map(|(index, call)| async move { (index, call.await) }).collect();
    let mut answers = Vec::new();
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, running.next()).await {
                Ok(next) => next,
                Err(_) => {
                    if !running.is_empty() {
                        tracing::debug!(dropped = running.len(), "expert calls missed the deadline");
                    }
                    break;
                }
            },
            None => running.next().await,
        };
        let Some(((i, j), result)) = next else { break };
        match result {
            Ok(value) => {
                answers.push(((i, j), value));
                successes[i] += 1;
                if successes[i] == k_min {
                    pending_samples = pending_samples.saturating_sub(1);
                    if pending_samples == 0 {
                        if let Some(after) = after_k_min {
                            let soon = tokio::time::Instant::now() + after;
                            deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(sample = i, expert = j, error = %e, "an expert call failed; skipping it"),
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_skips_absent_experts() {
        let w = softmax(&[Some(0.0), None, Some(0.0)]);
        assert_eq!(w, vec![0.5, 0.0, 0.5]);
        assert_eq!(softmax(&[None, None]), vec![0.0, 0.0]);
    }

    #[test]
    fn collecting_stops_after_k_min_plus_grace_and_skips_failures() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let never = || -> BoxFuture<'static, Result<u32>> { Box::pin(futures::future::pending()) };
            let calls: Vec<ExpertCall<'static, u32>> = vec![
                ((0, 0), Box::pin(async { Ok(1) })),
                ((0, 1), Box::pin(async { Err(Error::new(ErrorKind::Network, "gone")) })),
                ((0, 2), never()),
                (
                    (1, 0),
                    Box::pin(async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(2)
                    }),
                ),
            ];
            let answers = collect_responses(calls, 2, 1, None, Some(Duration::from_millis(100))).await;
            assert_eq!(answers, vec![((0, 0), 1), ((1, 0), 2)]);
        });
    }
}
