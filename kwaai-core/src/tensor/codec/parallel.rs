//! Data-parallel helpers for large tensors (std threads only; small inputs stay on one thread).

use std::sync::OnceLock;

fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(16))
}

/// Splits `input` into units of `in_per` items and `out` into matching units of `out_per`,
/// then calls `f(first_unit, input_piece, output_piece)` on consecutive runs of units across
/// threads, giving each thread at least `min_units` units.
pub(super) fn par_chunks<I: Sync, O: Send>(
    input: &[I],
    in_per: usize,
    out: &mut [O],
    out_per: usize,
    min_units: usize,
    f: impl Fn(usize, &[I], &mut [O]) + Sync,
) {
    let units = input.len().div_ceil(in_per.max(1));
    let workers = threads().min(units / min_units.max(1)).max(1);
    if workers == 1 {
        f(0, input, out);
        return;
    }
    let per = units.div_ceil(workers);
    std::thread::scope(|s| {
        let f = &f;
        let pieces = input.chunks(per * in_per).zip(out.chunks_mut(per * out_per));
        for (k, (inp, outp)) in pieces.enumerate() {
            s.spawn(move || f(k * per, inp, outp));
        }
    });
}

/// Copies `src` into a new vector, several threads at once for large inputs.
pub(super) fn copy_to_vec<T: Copy + Default + Send + Sync>(src: &[T]) -> Vec<T> {
    let mut out = fresh_vec(src.len());
    par_chunks(src, 1, &mut out, 1, 1 << 20, |_, s, d| d.copy_from_slice(s));
    out
}

/// A new vector of `len` default (zero) items whose pages are hinted huge ([`advise_huge_pages`]).
/// A large one comes zeroed from the allocator without being written (fresh pages), so the
/// caller's first write is the first touch.
pub(super) fn fresh_vec<T: Copy + Default>(len: usize) -> Vec<T> {
    let out = vec![T::default(); len];
    advise_huge_pages(out.as_ptr().cast(), std::mem::size_of_val(out.as_slice()));
    out
}

/// Resizes `buf` to `len` items (new ones default); when it must grow, the new allocation's
/// pages are hinted huge first ([`advise_huge_pages`]).
pub(super) fn resize_advised<T: Copy + Default>(buf: &mut Vec<T>, len: usize) {
    if buf.capacity() == 0 {
        *buf = fresh_vec(len);
        return;
    }
    if buf.capacity() < len {
        buf.reserve_exact(len - buf.len());
        let spare = buf.spare_capacity_mut();
        advise_huge_pages(spare.as_ptr().cast(), std::mem::size_of_val(spare));
    }
    buf.resize(len, T::default());
}

/// Asks Linux to back the 2 MiB-aligned part of a large buffer not yet touched with huge pages,
/// so that first touching 64 MiB takes 32 page faults instead of 16,384 (where transparent huge
/// pages are enabled for advised ranges). A hint only: elsewhere, or if it fails, nothing changes.
fn advise_huge_pages(start: *const u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = start as usize;
        let aligned = start.next_multiple_of(HUGE);
        let len = (start + bytes).saturating_sub(aligned) / HUGE * HUGE;
        if len >= 2 * HUGE {
            // SAFETY: the range lies inside a live allocation of the caller's; MADV_HUGEPAGE
            // changes how the kernel backs the pages, never their contents.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, bytes);
}

/// Σ values in float64, with independent partial sums so the loop vectorizes.
pub(super) fn sum_f64(values: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v);
        }
    }
    acc.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| f64::from(v)).sum::<f64>()
}

/// Σ (v − mean)² in float64, where each difference is rounded to float32 first (as torch
/// subtracts in float32 before taking the norm).
pub(super) fn sum_sq_centered(values: &[f32], mean: f32) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let d = f64::from(v - mean);
            *a += d * d;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v - mean).powi(2)).sum();
    acc.iter().sum::<f64>() + tail
}

/// Σ over threads of `sum` applied to pieces of `values`.
pub(super) fn par_sum(values: &[f32], sum: impl Fn(&[f32]) -> f64 + Sync) -> f64 {
    let mut partial = vec![0f64; threads()];
    let per = values.len().div_ceil(threads()).max(1);
    par_chunks(values, per, &mut partial, 1, 1.max((1 << 20) / per), |_, v, out| {
        for (o, piece) in out.iter_mut().zip(v.chunks(per)) {
            *o = sum(piece);
        }
    });
    partial.iter().sum()
}
