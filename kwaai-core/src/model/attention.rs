//! Causal self-attention over a KV cache in one parallel pass: scores, scaling, the causal mask, softmax and
//! the weighted sum of values for a few query rows of one head at a time, read in place from the query and the
//! cache and written straight into the layout the output projection reads, (B, T, heads × head_dim).
//!
//! It computes what [`super::ops::attention`] does for a causal mask and a scale on the logits, with the same
//! roundings (bfloat16 after the product, after the scaling, of the probabilities and of the result); only the
//! order of the float32 sums differs.

use std::mem::MaybeUninit;

use candle_core::{DType, Device, Storage, Tensor};

use super::ops::{round_bf16, Rounding};
use super::threads::{for_each_task, Disjoint};
use crate::Result;

/// Query rows of one head per task: the head's keys and values stay in cache across them.
const ROWS_PER_TASK: usize = 16;
/// Query rows computed together, each key and value read once for all of them.
const GROUP: usize = 4;
/// Keys (or value dimensions) per vector of running sums.
const LANES: usize = 16;

/// `softmax(q k^T · scale + causal mask) v` for `q` (B, H, T, d) and `k`, `v` (B, Hkv, S, d) holding the `S - T`
/// earlier positions then the query's own (grouped-query attention when `Hkv < H`), as (B, T, H × d); `None`
/// where this pass does not apply: a gradient to carry, tensors that are not float32 on the CPU with a
/// contiguous last dimension, rounding other than bfloat16, or shapes that do not fit together.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, round: Rounding) -> Result<Option<Tensor>> {
    let tensors = [q, k, v];
    if tensors.iter().any(|t| t.track_op() || t.dtype() != DType::F32 || !t.device().is_cpu())
        || !matches!(round.0, None | Some(DType::BF16))
    {
        return Ok(None);
    }
    let ((b, h, t, d), (kb, hkv, s, kd)) = (q.dims4()?, k.dims4()?);
    if (kb, kd) != (b, d) || v.dims4()? != (b, hkv, s, d) || hkv == 0 || h % hkv != 0 || s < t || t == 0 || d == 0 {
        return Ok(None);
    }
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*q_storage, &*k_storage, &*v_storage) else {
        return Ok(None);
    };
    if [q_layout, k_layout, v_layout].iter().any(|l| l.stride()[3] != 1) {
        return Ok(None);
    }
    let heads = Heads {
        q: Strided::new(qs.as_slice::<f32>()?, q_layout),
        k: Strided::new(ks.as_slice::<f32>()?, k_layout),
        v: Strided::new(vs.as_slice::<f32>()?, v_layout),
        groups: h / hkv,
        heads: h,
        t,
        s,
        d,
        scale: scale as f32,
        bf16: round.0.is_some(),
    };
    let blocks = t.div_ceil(ROWS_PER_TASK);
    let len = b * t * h * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let target = Target::new(out.spare_capacity_mut().as_mut_ptr());
    // The last rows see the most keys: their tasks come first, so that the cheap ones fill in at the end.
    for_each_task(blocks * b * h, |task| {
        let block = blocks - 1 - task / (b * h);
        let (batch, head) = ((task % (b * h)) / h, task % h);
        let rows = block * ROWS_PER_TASK..t.min((block + 1) * ROWS_PER_TASK);
        heads.run(batch, head, rows, &target);
    });
    drop((q_storage, k_storage, v_storage));
    // SAFETY: the tasks cover every (batch, head, row), and each wrote that row's `d` values of the head.
    unsafe { out.set_len(len) };
    Ok(Some(Tensor::from_vec(out, (b, t, h * d), &Device::Cpu)?))
}

/// A 4-D tensor's values read in place through its offset and strides.
struct Strided<'a> {
    values: &'a [f32],
    start: usize,
    stride: [usize; 3],
}

impl<'a> Strided<'a> {
    fn new(values: &'a [f32], layout: &candle_core::Layout) -> Self {
        let s = layout.stride();
        Strided { values, start: layout.start_offset(), stride: [s[0], s[1], s[2]] }
    }

    /// The `d` values at `[i, j, p, ..]`.
    fn row(&self, i: usize, j: usize, p: usize, d: usize) -> &'a [f32] {
        &self.values[self.start + i * self.stride[0] + j * self.stride[1] + p * self.stride[2]..][..d]
    }
}

/// The output, (B, T, H × d), shared by the tasks; each writes the rows of its own head.
type Target = Disjoint<MaybeUninit<f32>>;

/// What every task reads: the query, keys and values, and the shapes.
struct Heads<'a> {
    q: Strided<'a>,
    k: Strided<'a>,
    v: Strided<'a>,
    groups: usize,
    heads: usize,
    t: usize,
    s: usize,
    d: usize,
    scale: f32,
    bf16: bool,
}

impl Heads<'_> {
    /// Attention of query `rows` of `head` in `batch`, into their part of `target`.
    fn run(&self, batch: usize, head: usize, rows: std::ops::Range<usize>, target: &Target) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { self.run_avx512(batch, head, rows, target) };
        }
        self.rows(batch, head, rows, target)
    }

    /// [`Heads::rows`] compiled for AVX-512.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, batch: usize, head: usize, rows: std::ops::Range<usize>, target: &Target) {
        self.rows(batch, head, rows, target)
    }

    #[inline(always)]
    fn rows(&self, batch: usize, head: usize, rows: std::ops::Range<usize>, target: &Target) {
        let (d, kv_head) = (self.d, head / self.groups);
        let round = |x: f32| if self.bf16 { round_bf16(x) } else { x };
        // Query row `i` sits at position `s - t + i` and sees the keys up to it.
        let seen_by = |i: usize| self.s - self.t + i + 1;
        // The keys the last row sees, transposed (d rows of `keys` values, zero past them), so that scores
        // come out 16 keys at a time.
        let last = seen_by(rows.end - 1);
        let keys = last.next_multiple_of(LANES);
        let mut keys_t = vec![0f32; d * keys];
        for first in (0..last).step_by(LANES) {
            // 16 keys at a time, so that both the reads and the writes stay within a few cache lines.
            let key_rows: Vec<&[f32]> =
                (first..last.min(first + LANES)).map(|j| self.k.row(batch, kv_head, j, d)).collect();
            for (c, dst) in keys_t.chunks_exact_mut(keys).enumerate() {
                dst[first..first + key_rows.len()].iter_mut().zip(&key_rows).for_each(|(o, row)| *o = row[c]);
            }
        }
        // Scores, then probabilities, of `GROUP` rows at a time (the last row repeated past the end).
        let mut probs = vec![0f32; GROUP * keys];
        let mut weights = vec![0f32; keys * GROUP];
        for first in rows.clone().step_by(GROUP) {
            let n = GROUP.min(rows.end - first);
            let queries: [&[f32]; GROUP] = std::array::from_fn(|r| self.q.row(batch, head, first + r.min(n - 1), d));
            for chunk in (0..keys).step_by(LANES) {
                let mut sums = [[0f32; LANES]; GROUP];
                for c in 0..d {
                    let k: &[f32; LANES] = keys_t[c * keys + chunk..][..LANES].try_into().expect("16 keys");
                    for (sum, query) in sums.iter_mut().zip(&queries) {
                        let q = query[c];
                        sum.iter_mut().zip(k).for_each(|(s, k)| *s += q * k);
                    }
                }
                for (r, sum) in sums.iter().enumerate() {
                    probs[r * keys + chunk..][..LANES].copy_from_slice(sum);
                }
            }
            for (r, row) in probs.chunks_exact_mut(keys).enumerate() {
                let (visible, hidden) = row.split_at_mut(if r < n { seen_by(first + r) } else { 0 });
                hidden.fill(0.0);
                let mut max = f32::NEG_INFINITY;
                for p in visible.iter_mut() {
                    *p = round(round(*p) * self.scale);
                    max = max.max(*p);
                }
                let mut total = 0f32;
                for p in visible.iter_mut() {
                    *p = (*p - max).exp();
                    total += *p;
                }
                visible.iter_mut().for_each(|p| *p = round(*p / total));
            }
            // The weighted sums of values, 16 of the head's dimensions at a time, with the rows' probabilities
            // of each key side by side.
            let seen = seen_by(first + n - 1);
            for (j, weights) in weights.chunks_exact_mut(GROUP).take(seen).enumerate() {
                weights.iter_mut().enumerate().for_each(|(r, w)| *w = probs[r * keys + j]);
            }
            for dims in (0..d).step_by(LANES) {
                let width = LANES.min(d - dims);
                let values = (0..seen).map(|j| &self.v.row(batch, kv_head, j, d)[dims..dims + width]);
                let sums = weighted_sums(&weights[..seen * GROUP], values);
                for (r, sum) in sums.iter().enumerate().take(n) {
                    // SAFETY: row `batch × t + first + r` and `head` are in bounds, and only this task writes them.
                    let part = unsafe { target.part(((batch * self.t + first + r) * self.heads + head) * d, d) };
                    for (o, s) in part[dims..dims + width].iter_mut().zip(sum) {
                        o.write(round(*s));
                    }
                }
            }
        }
    }
}

/// For each of `GROUP` rows, `Σ_j weights[j][row] · values[j]` over values of up to 16 elements.
#[inline(always)]
fn weighted_sums<'a>(weights: &[f32], values: impl Iterator<Item = &'a [f32]>) -> [[f32; LANES]; GROUP] {
    let mut sums = [[0f32; LANES]; GROUP];
    for (w, value) in weights.chunks_exact(GROUP).zip(values) {
        let w: &[f32; GROUP] = w.try_into().expect("GROUP weights");
        match <&[f32; LANES]>::try_from(value) {
            // A whole vector (the common case): the sums stay in registers.
            Ok(value) => {
                for (sum, w) in sums.iter_mut().zip(w) {
                    sum.iter_mut().zip(value).for_each(|(s, v)| *s += w * v);
                }
            }
            // The same for the last, shorter piece of a row.
            Err(_) => {
                for (sum, w) in sums.iter_mut().zip(w) {
                    sum.iter_mut().zip(value).for_each(|(s, v)| *s += w * v);
                }
            }
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::attention;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The op-by-op path's result, in the fused pass's layout.
    fn op_by_op(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, r: Rounding) -> Tensor {
        let (b, h, t, d) = q.dims4().unwrap();
        let a = attention(q, k, v, r, |s| r.r((r.r(s)? * scale)?)).unwrap();
        a.transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap()
    }

    #[test]
    fn equals_the_op_by_op_path_over_a_cache_with_grouped_heads() {
        let (b, h, hkv, d, past, t, capacity) = (2, 6, 3, 40, 5, 37, 64);
        for r in [Rounding(None), Rounding(Some(DType::BF16))] {
            let rounded = |shape: (usize, usize, usize, usize)| {
                r.r(Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
            };
            // Keys and values are views into cache buffers longer than what they hold, as in a session.
            let (kbuf, vbuf) = (rounded((b, hkv, capacity, d)), rounded((b, hkv, capacity, d)));
            let (k, v) = (kbuf.narrow(2, 0, past + t).unwrap(), vbuf.narrow(2, 0, past + t).unwrap());
            let q = rounded((b, h, t, d));
            let scale = 1.0 / (d as f64).sqrt();
            let fused = causal_attention(&q, &k, &v, scale, r).unwrap().expect("the fused pass applies");
            assert_eq!(fused.dims(), &[b, t, h * d]);
            let want = op_by_op(&q, &k, &v, scale, r);
            let (got, want) = (values(&fused), values(&want));
            // Only the order of float32 sums differs. With bfloat16 rounding that moves a rounded value by a
            // step now and then, and a step in a score moves its probability by a few percent.
            let (tolerance, exact) = if r.is_on() { (0.05, 0.97) } else { (1e-5, 0.0) };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= tolerance * w.abs().max(1.0), "value {i}: {g} against {w}");
            }
            let equal = got.iter().zip(&want).filter(|(g, w)| g == w).count();
            assert!(equal as f64 >= exact * got.len() as f64, "{equal} of {} values equal", got.len());
        }
    }

    #[test]
    fn declines_what_it_does_not_compute() {
        let x = Tensor::randn(0f32, 1.0, (1, 2, 3, 8), &Device::Cpu).unwrap();
        let r = Rounding(None);
        assert!(causal_attention(&x, &x, &x, 1.0, Rounding(Some(DType::F16))).unwrap().is_none());
        let var = candle_core::Var::from_tensor(&x).unwrap();
        assert!(causal_attention(var.as_tensor(), &x, &x, 1.0, r).unwrap().is_none());
        // More query rows than keys, or heads that do not group.
        let short = x.narrow(2, 0, 2).unwrap();
        assert!(causal_attention(&x, &short, &short, 1.0, r).unwrap().is_none());
        let three = Tensor::randn(0f32, 1.0, (1, 3, 3, 8), &Device::Cpu).unwrap();
        assert!(causal_attention(&x, &three, &three, 1.0, r).unwrap().is_none());
        // A last dimension that is not contiguous.
        let strided = Tensor::randn(0f32, 1.0, (1, 2, 8, 3), &Device::Cpu).unwrap().transpose(2, 3).unwrap();
        assert!(causal_attention(&strided, &x, &x, 1.0, r).unwrap().is_none());
    }
}
