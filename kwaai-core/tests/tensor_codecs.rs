//! Rust-only checks of the tensor codecs: hand-computed bytes, bounded decoders, stream
//! splitting, and the gradient compressors' ratio and error.

use half::bf16;
use kwaai_core::tensor::gradient::{BlockwiseErrorFeedback, TopK, TopKErrorFeedback};
use kwaai_core::tensor::{
    self, stream, CompressionType, DType, Data, DecodeLimits, Decoded, Tensor, TensorView, DYNAMIC_CODE,
};
use kwaai_core::wire::runtime;
use kwaai_core::ErrorKind;

fn f32_tensor(shape: &[usize], values: Vec<f32>) -> Tensor {
    Tensor::new(shape.to_vec(), Data::F32(values)).unwrap()
}

fn decode(msg: &runtime::Tensor) -> kwaai_core::Result<Tensor> {
    tensor::decode(msg, &DecodeLimits::default())
}

fn message(dtype: &str, size: &[u32], codec: CompressionType, buffer: Vec<u8>) -> runtime::Tensor {
    runtime::Tensor {
        buffer,
        size: size.to_vec(),
        dtype: dtype.into(),
        compression: codec as i32,
        ..Default::default()
    }
}

/// A deterministic spread of values in roughly [-4, 4].
fn wave(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.37).sin() * 3.0 + (i as f32 * 0.011).cos()) * if i % 7 == 0 { 0.1 } else { 1.0 })
        .collect()
}

fn code(i: usize) -> f32 {
    f32::from_bits(DYNAMIC_CODE[i])
}

// Stands in for hivemind's BLOCKWISE_8BIT case, which the reference stack cannot run.
#[test]
fn blockwise_encodes_to_hand_computed_bytes() {
    // absmax 2 is a power of two, so x / absmax is exactly the code entry each x was built from.
    let input = [2.0, 2.0 * code(200), 2.0 * code(3), 0.0, -2.0, 2.0 * code(100)];
    let msg = tensor::encode(&f32_tensor(&[2, 3], input.to_vec()).view(), CompressionType::Blockwise8bit).unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&1i64.to_le_bytes()); // one block
    expected.extend_from_slice(&256i64.to_le_bytes()); // code size
    expected.extend_from_slice(&2.0f32.to_le_bytes()); // absmax
    for bits in DYNAMIC_CODE {
        expected.extend_from_slice(&bits.to_le_bytes());
    }
    expected.extend_from_slice(&[255, 200, 3, 127, 0, 100]);
    assert_eq!(msg.buffer, expected);
    assert_eq!((msg.dtype.as_str(), &msg.size[..]), ("float32", &[2u32, 3][..]));
    assert_eq!(code(0), -1.0, "the CPU kernel's code starts at -1");
    assert_eq!(code(127), 0.0);
    assert_eq!(code(255), 1.0);
    assert_eq!(decode(&msg).unwrap(), f32_tensor(&[2, 3], input.to_vec()));
}

#[test]
fn blockwise_picks_the_nearer_neighbour_and_keeps_bfloat16_labels() {
    // Just above the midpoint of code[130] and code[131] goes right; just below goes left.
    let (lo, hi) = (code(130), code(131));
    let mid = (lo + hi) / 2.0;
    let input = vec![1.0, mid + (hi - lo) * 0.01, mid - (hi - lo) * 0.01];
    let msg = tensor::encode(&f32_tensor(&[3], input).view(), CompressionType::Blockwise8bit).unwrap();
    assert_eq!(&msg.buffer[msg.buffer.len() - 3..], &[255, 131, 130]);

    let values: Vec<bf16> = wave(5000).into_iter().map(bf16::from_f32).collect();
    let t = Tensor::new(vec![5000], Data::BF16(values.clone())).unwrap();
    let msg = tensor::encode(&t.view(), CompressionType::Blockwise8bit).unwrap();
    assert_eq!(msg.dtype, "bfloat16");
    assert_eq!(msg.buffer.len(), 16 + 4 * 2 + 4 * 256 + 5000);
    let Data::BF16(back) = decode(&msg).unwrap().into_parts().1 else { panic!("bfloat16 expected") };
    for (a, b) in values.iter().zip(&back) {
        // The dynamic code's coarsest step near ±absmax is about 1.4 % of absmax (~4).
        assert!((a.to_f32() - b.to_f32()).abs() <= 0.06, "{a} vs {b}");
    }
}

#[test]
fn none_decodes_legacy_float32_bfloat16_with_rounding() {
    // 1 + 2^-8 is a tie between two bfloat16 values and rounds to even (1.0); 1 + 3·2^-8 rounds up.
    let legacy: Vec<u8> =
        [1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = decode(&message("bfloat16", &[3], CompressionType::None, legacy)).unwrap();
    assert_eq!(t.data(), &Data::BF16(vec![bf16::from_f32(1.0), bf16::from_f32(1.015625), bf16::from_f32(-2.5)]));
    let raw = [0x80u8, 0x3F, 0x20, 0xC0]; // 1.0, -2.5 as 2-byte bfloat16
    let t = decode(&message("bfloat16", &[2], CompressionType::None, raw.to_vec())).unwrap();
    assert_eq!(t.data(), &Data::BF16(vec![bf16::from_f32(1.0), bf16::from_f32(-2.5)]));
}

#[test]
fn float16_and_meanstd_encode_to_hand_computed_bytes() {
    let t = f32_tensor(&[3], vec![1.0, -70000.0, 0.5]);
    let msg = tensor::encode(&t.view(), CompressionType::Float16).unwrap();
    assert_eq!(msg.buffer, [0x00, 0x3C, 0xFF, 0xFB, 0x00, 0x38], "1.0, clamped -65504, 0.5");
    // Row [1, 3]: mean 2, std 1, so the scaled values are exactly -1 and 1.
    let msg = tensor::encode(&f32_tensor(&[1, 2], vec![1.0, 3.0]).view(), CompressionType::Meanstd16bit).unwrap();
    let mut expected = vec![0x00, 0xBC, 0x00, 0x3C];
    expected.extend_from_slice(&2.0f32.to_le_bytes());
    expected.extend_from_slice(&1.0f32.to_le_bytes());
    assert_eq!(msg.buffer, expected);
    assert_eq!(decode(&msg).unwrap(), f32_tensor(&[1, 2], vec![1.0, 3.0]));
}

#[test]
fn every_codec_round_trips_within_its_error() {
    let values = wave(3 << 20);
    // Large enough for several threads; rows longer than any internal working buffer.
    let t = f32_tensor(&[3 << 7, 1 << 13], values.clone());
    let cases = [
        (CompressionType::None, 0.0, 1.0),
        (CompressionType::Float16, 2e-3, 2.0),
        (CompressionType::Meanstd16bit, 2e-3, 1.9),
        (CompressionType::Quantile8bit, 0.1, 3.7),
        (CompressionType::Uniform8bit, 0.1, 3.7),
        (CompressionType::Blockwise8bit, 0.06, 3.7),
    ];
    for (codec, max_err, min_ratio) in cases {
        let msg = tensor::encode(&t.view(), codec).unwrap();
        let ratio = (values.len() * 4) as f64 / msg.buffer.len() as f64;
        let Data::F32(back) = decode(&msg).unwrap().into_parts().1 else { panic!("float32 expected") };
        let err = values.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= max_err, "{codec:?}: max error {err}");
        assert!(ratio >= min_ratio, "{codec:?}: ratio {ratio}");
    }
}

#[test]
fn unsupported_encodings_are_refused() {
    let bf = Tensor::new(vec![2], Data::BF16(vec![bf16::ONE; 2])).unwrap();
    for codec in [CompressionType::Float16, CompressionType::Meanstd16bit, CompressionType::Quantile8bit] {
        assert_eq!(tensor::encode(&bf.view(), codec).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
    let ints = Tensor::new(vec![2], Data::I64(vec![1, 2])).unwrap();
    assert!(tensor::encode(&ints.view(), CompressionType::Uniform8bit).is_err());
    assert!(tensor::encode(&ints.view(), CompressionType::Blockwise8bit).is_err());
    let scalar = f32_tensor(&[], vec![1.0]);
    assert!(tensor::encode(&scalar.view(), CompressionType::Meanstd16bit).is_err());
}

#[test]
fn decoders_refuse_lying_headers_before_allocating() {
    let protocol = |msg: runtime::Tensor| decode(&msg).unwrap_err().kind();
    // 2^40 elements claimed, 8 bytes carried: refused by the element limit, for every codec.
    for codec in [0, 1, 2, 3, 4, 5] {
        let codec = CompressionType::try_from(codec).unwrap();
        let msg = message("float32", &[1 << 20, 1 << 20], codec, vec![0; 8]);
        assert_eq!(protocol(msg), ErrorKind::Protocol, "{codec:?}");
    }
    let tight = DecodeLimits { max_elements: 10, max_rank: 2 };
    let msg = message("uint8", &[11], CompressionType::None, vec![0; 11]);
    assert_eq!(tensor::decode(&msg, &tight).unwrap_err().kind(), ErrorKind::Protocol);
    let msg = message("uint8", &[1, 1, 1], CompressionType::None, vec![0]);
    assert_eq!(tensor::decode(&msg, &tight).unwrap_err().kind(), ErrorKind::Protocol);
    // Buffers that are one byte short or long.
    assert_eq!(protocol(message("float32", &[2], CompressionType::None, vec![0; 7])), ErrorKind::Protocol);
    assert_eq!(protocol(message("float32", &[2], CompressionType::Float16, vec![0; 5])), ErrorKind::Protocol);
    assert_eq!(protocol(message("float32", &[1, 2], CompressionType::Meanstd16bit, vec![0; 11])), ErrorKind::Protocol);
    // A codebook that claims 2^62 entries, and an index past a short codebook.
    let mut huge = (1i64 << 62).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 12]);
    assert_eq!(protocol(message("float32", &[4], CompressionType::Quantile8bit, huge)), ErrorKind::Protocol);
    let mut short = 2i64.to_le_bytes().to_vec();
    short.extend_from_slice(&[0; 8]);
    short.extend_from_slice(&[0, 1, 2]);
    assert_eq!(protocol(message("float32", &[3], CompressionType::Uniform8bit, short)), ErrorKind::Protocol);
    // A blockwise header whose block count does not match the shape.
    let mut bw = 5i64.to_le_bytes().to_vec();
    bw.extend_from_slice(&256i64.to_le_bytes());
    bw.extend_from_slice(&[0; 4 * 5 + 4 * 256 + 3]);
    assert_eq!(protocol(message("float32", &[3], CompressionType::Blockwise8bit, bw)), ErrorKind::Protocol);
    // Unknown codec and dtype.
    let mut msg = message("float32", &[1], CompressionType::None, vec![0; 4]);
    msg.compression = 9;
    assert_eq!(protocol(msg), ErrorKind::Protocol);
    assert_eq!(protocol(message("complex64", &[1], CompressionType::None, vec![0; 8])), ErrorKind::Protocol);
}

#[test]
fn streams_split_like_hivemind_and_join_by_dtype_boundaries() {
    let t = f32_tensor(&[10], wave(10));
    let msg = tensor::encode(&t.view(), CompressionType::None).unwrap();
    let parts = stream::split(&msg, 16);
    assert_eq!(parts.len(), 3);
    assert_eq!((parts[0].chunks, parts[0].buffer.len(), parts[0].dtype.as_str()), (3, 16, "float32"));
    assert_eq!(parts[2], runtime::Tensor { buffer: msg.buffer[32..].to_vec(), ..Default::default() });
    // A zero-byte tensor is still one part, with chunks = 0.
    let empty =
        tensor::encode(&Tensor::new(vec![0], Data::I64(vec![])).unwrap().view(), CompressionType::None).unwrap();
    let empty_parts = stream::split(&empty, 16);
    assert_eq!((empty_parts.len(), empty_parts[0].chunks), (1, 0));
    let all: Vec<_> = parts.iter().chain(&empty_parts).chain(&parts).cloned().collect();
    let joined = stream::join(all, &DecodeLimits::default()).unwrap();
    assert_eq!(joined.len(), 3);
    assert_eq!((&joined[0], joined[1].numel(), &joined[2]), (&t, 0, &t));
    // A stream that starts without a header, or whose parts outgrow the header's shape.
    let limits = DecodeLimits::default();
    assert!(stream::join(parts[1..].to_vec(), &limits).is_err());
    let mut joiner = stream::StreamJoiner::new(limits);
    joiner.push(parts[0].clone()).unwrap();
    let flood = runtime::Tensor { buffer: vec![0; 8192], ..Default::default() };
    assert_eq!(joiner.push(flood).unwrap_err().kind(), ErrorKind::Protocol);
}

#[test]
fn host_buffers_encode_without_an_owned_copy() {
    let values = wave(64);
    let bytes: &[u8] = bytemuck::cast_slice(&values);
    let shape = [8usize, 8];
    // SAFETY: `bytes` holds 64 f32 values and outlives the view.
    let view = unsafe { TensorView::from_raw_parts(bytes.as_ptr(), DType::F32, &shape) }.unwrap();
    let msg = tensor::encode(&view, CompressionType::None).unwrap();
    assert_eq!(msg.buffer, bytes);
    assert_eq!(decode(&msg).unwrap(), f32_tensor(&shape, values));
}

/// sqrt(Σ(a−b)²) / sqrt(Σa²).
fn relative_error(truth: &[f32], approx: &[f32]) -> f64 {
    let num: f64 = truth.iter().zip(approx).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let den: f64 = truth.iter().map(|a| f64::from(*a).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn blockwise_error_feedback_compresses_4x_and_carries_the_error_forward() {
    let n = 16 * 4096 + 100;
    let mut fb = BlockwiseErrorFeedback::new();
    let (mut sent_sum, mut true_sum) = (vec![0f64; n], vec![0f64; n]);
    let mut one_shot_error = 0.0;
    for step in 0..20 {
        let grad: Vec<f32> =
            wave(n).iter().enumerate().map(|(i, v)| v * 1e-3 + ((i + step) % 13) as f32 * 1e-6).collect();
        let msg = fb.compress(&grad, &[n]).unwrap();
        let ratio = (4 * n) as f64 / msg.buffer.len() as f64;
        assert!(ratio > 3.9, "ratio {ratio}");
        let Data::F32(sent) = decode(&msg).unwrap().into_parts().1 else { panic!("float32 expected") };
        if step == 0 {
            one_shot_error = relative_error(&grad, &sent);
            assert!(one_shot_error < 0.02, "one-step relative error {one_shot_error}");
        }
        for i in 0..n {
            sent_sum[i] += f64::from(sent[i]);
            true_sum[i] += f64::from(grad[i]);
        }
        // What was sent plus what is still owed is exactly what was given.
        for i in (0..n).step_by(97) {
            let owed = f64::from(fb.residual()[i]);
            assert!((sent_sum[i] + owed - true_sum[i]).abs() < 1e-6, "step {step} element {i}");
        }
    }
    let sums: (Vec<f32>, Vec<f32>) = sent_sum.iter().zip(&true_sum).map(|(s, t)| (*s as f32, *t as f32)).unzip();
    let accumulated_error = relative_error(&sums.1, &sums.0);
    assert!(accumulated_error < one_shot_error / 5.0, "error feedback: {accumulated_error} vs {one_shot_error}");
}

#[test]
fn top_k_keeps_the_largest_entries_and_feeds_back_the_rest() {
    let dense = wave(10_000);
    let sparse = TopK::select(&dense, 100).unwrap();
    let threshold = sparse.values.iter().map(|v| v.abs()).fold(f32::MAX, f32::min);
    assert_eq!(dense.iter().filter(|v| v.abs() > threshold).count(), 99);
    let bytes = sparse.to_bytes();
    let ratio = (4 * dense.len()) as f64 / bytes.len() as f64;
    assert!(ratio > 45.0, "ratio {ratio}");
    assert_eq!(TopK::from_bytes(&bytes, &DecodeLimits::default()).unwrap(), sparse);
    let kept = sparse.to_dense();
    let err = relative_error(&dense, &kept);
    assert!(err > 0.5 && err < 1.0, "keeping 1 % of a spread-out vector loses most of it: {err}");

    let mut fb = TopKErrorFeedback::new();
    let mut sent = vec![0f32; dense.len()];
    for _ in 0..200 {
        for (s, v) in sent.iter_mut().zip(fb.compress(&dense, 500).unwrap().to_dense()) {
            *s += v;
        }
    }
    let expected: Vec<f32> = dense.iter().map(|v| v * 200.0).collect();
    let accumulated = relative_error(&expected, &sent);
    assert!(accumulated < err / 10.0, "with feedback every entry is eventually sent: {accumulated} vs {err}");
    for (i, (s, r)) in sent.iter().zip(fb.residual()).enumerate().step_by(37) {
        assert!((s + r - expected[i]).abs() <= 1e-3 * expected[i].abs().max(1.0), "sent + owed = given at {i}");
    }

    let mut bad = bytes.clone();
    bad[16..20].copy_from_slice(&20_000u32.to_le_bytes());
    assert!(TopK::from_bytes(&bad, &DecodeLimits::default()).is_err());
    assert!(TopK::from_bytes(&bytes[..bytes.len() - 1], &DecodeLimits::default()).is_err());
}

#[test]
fn decode_into_reuses_storage_and_matches_decode() {
    let limits = DecodeLimits::default();
    let mut out = f32_tensor(&[4096], vec![0.0; 4096]);
    let cases = [
        (CompressionType::None, vec![3, 7], 21),
        (CompressionType::Float16, vec![100], 100),
        (CompressionType::Quantile8bit, vec![50, 2], 100),
        (CompressionType::Uniform8bit, vec![1000], 1000),
        (CompressionType::Blockwise8bit, vec![3000], 3000),
    ];
    for (codec, shape, n) in cases {
        let msg = tensor::encode(&f32_tensor(&shape, wave(n)).view(), codec).unwrap();
        let before = out.as_bytes().as_ptr();
        tensor::decode_into(&msg, &limits, &mut out).unwrap();
        assert_eq!(out, decode(&msg).unwrap());
        assert_eq!(out.as_bytes().as_ptr(), before, "{codec:?} reused the storage");
    }
    // Another dtype or codec falls back to a fresh decode; a bad message is still an error.
    let ints =
        tensor::encode(&Tensor::new(vec![2], Data::I16(vec![1, -1])).unwrap().view(), CompressionType::None).unwrap();
    tensor::decode_into(&ints, &limits, &mut out).unwrap();
    assert_eq!(out, decode(&ints).unwrap());
    let mut short = tensor::encode(&f32_tensor(&[2], vec![1.0, 2.0]).view(), CompressionType::None).unwrap();
    short.buffer.pop();
    let mut f = f32_tensor(&[2], vec![0.0; 2]);
    assert_eq!(tensor::decode_into(&short, &limits, &mut f).unwrap_err().kind(), ErrorKind::Protocol);
    let mut bad_index =
        tensor::encode(&f32_tensor(&[3], vec![1.0, 2.0, 3.0]).view(), CompressionType::Uniform8bit).unwrap();
    bad_index.buffer[..8].copy_from_slice(&1i64.to_le_bytes());
    bad_index.buffer.drain(12..8 + 4 * 256);
    bad_index.buffer[12..].copy_from_slice(&[0, 0, 5]);
    assert_eq!(tensor::decode_into(&bad_index, &limits, &mut f).unwrap_err().kind(), ErrorKind::Protocol);
}

#[test]
fn none_messages_decode_in_place_unless_their_bytes_need_converting() {
    let limits = DecodeLimits::default();
    let cases = [
        Tensor::new(vec![2, 3], Data::F32(wave(6))).unwrap(),
        Tensor::new(vec![3], Data::I64(vec![1, -1, i64::MAX])).unwrap(),
        Tensor::new(vec![2], Data::BF16(vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)])).unwrap(),
        Tensor::new(vec![0, 4], Data::F16(Vec::new())).unwrap(),
    ];
    for t in cases {
        let msg = tensor::encode(&t.view(), CompressionType::None).unwrap();
        let decoded = tensor::decode_borrowed(&msg, &limits).unwrap();
        let Decoded::Borrowed { bytes, .. } = &decoded else { panic!("{:?} was copied", t.dtype()) };
        assert_eq!(bytes.as_ptr(), msg.buffer.as_ptr(), "the message's own bytes");
        assert_eq!((decoded.view().shape(), decoded.view().dtype()), (t.shape(), t.dtype()));
        assert_eq!(decoded.into_tensor().unwrap(), t);
    }
    // Bytes that need converting decode as `decode` does: bools are normalised, and bfloat16 sent
    // as float32 values is rounded.
    let bools = message("bool", &[3], CompressionType::None, vec![0, 2, 1]);
    let legacy = message("bfloat16", &[1], CompressionType::None, 1.5f32.to_le_bytes().to_vec());
    let half = tensor::encode(&f32_tensor(&[4], wave(4)).view(), CompressionType::Float16).unwrap();
    for msg in [bools, legacy, half] {
        let decoded = tensor::decode_borrowed(&msg, &limits).unwrap();
        assert!(matches!(decoded, Decoded::Owned(_)), "{} is converted", msg.dtype);
        assert_eq!(decoded.into_tensor().unwrap(), decode(&msg).unwrap());
    }
    // A lying header is refused as `decode` refuses it.
    let short = message("float32", &[3], CompressionType::None, vec![0; 8]);
    assert_eq!(tensor::decode_borrowed(&short, &limits).unwrap_err().kind(), ErrorKind::Protocol);
    let huge = message("float32", &[u32::MAX, u32::MAX], CompressionType::None, vec![0; 8]);
    assert_eq!(tensor::decode_borrowed(&huge, &limits).unwrap_err().kind(), ErrorKind::Protocol);
}
