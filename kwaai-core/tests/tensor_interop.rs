//! kwaai's tensor codecs against hivemind 1.1.10.post2's own, in the same test run: random data
//! is generated here, `tests/reference/codecs_interop.py` encodes it with hivemind and decodes
//! our bytes, and we compare bytes (where hivemind is deterministic) and decoded values.

mod common;

use std::sync::{Mutex, MutexGuard, OnceLock};

use kwaai_core::tensor::{self, stream, CompressionType, DType, Data, DecodeLimits, Tensor};
use kwaai_core::wire::runtime::{self, ExpertRequest, ExpertResponse};
use prost::Message;

/// splitmix64, so each test's data is random but reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn random_tensor(rng: &mut Rng, dtype: DType, shape: &[usize], scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let floats: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    let data = match dtype {
        DType::F64 => Data::F64((0..n).map(|_| rng.normal() * scale).collect()),
        DType::I64 => Data::I64((0..n).map(|_| rng.next() as i64 >> 20).collect()),
        DType::I32 => Data::I32((0..n).map(|_| rng.next() as i32).collect()),
        DType::I16 => Data::I16((0..n).map(|_| rng.next() as i16).collect()),
        DType::I8 => Data::I8((0..n).map(|_| rng.next() as i8).collect()),
        DType::U8 => Data::U8((0..n).map(|_| rng.next() as u8).collect()),
        DType::Bool => Data::Bool((0..n).map(|_| (rng.next() & 1) as u8).collect()),
        other => Data::from_f32(other, &floats),
    };
    Tensor::new(shape.to_vec(), data).unwrap()
}

struct Reference {
    process: common::ReferenceProcess,
    dir: tempfile::TempDir,
    calls: usize,
}

/// The one hivemind process this test binary shares; it exits when our stdin closes at exit.
fn reference() -> MutexGuard<'static, Reference> {
    static REFERENCE: OnceLock<Mutex<Reference>> = OnceLock::new();
    REFERENCE
        .get_or_init(|| {
            let mut process = common::ReferenceProcess::start("codecs_interop.py", &[]);
            assert_eq!(process.read_json()["ready"], true);
            Mutex::new(Reference { process, dir: tempfile::tempdir().unwrap(), calls: 0 })
        })
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What hivemind made of one input.
struct Outcome {
    /// hivemind's encoding of the input.
    theirs: runtime::Tensor,
    /// hivemind's decoding of our encoding.
    they_decoded_ours: Tensor,
    /// hivemind's decoding of its own encoding.
    they_decoded_theirs: Tensor,
}

fn exchange(codec: CompressionType, input: &Tensor, ours: &runtime::Tensor, legacy_bf16: bool) -> Outcome {
    let raw = tensor::encode(&input.view(), CompressionType::None).unwrap();
    let meta = serde_json::json!({ "codec": codec.as_str_name(), "legacy_bf16": legacy_bf16 });
    let request =
        ExpertRequest { uid: String::new(), tensors: vec![raw, ours.clone()], metadata: meta.to_string().into_bytes() };
    let mut r = reference();
    r.calls += 1;
    let (inp, out) = (r.dir.path().join(format!("{}.in", r.calls)), r.dir.path().join(format!("{}.out", r.calls)));
    std::fs::write(&inp, request.encode_to_vec()).unwrap();
    r.process.send_line(&serde_json::json!({ "in": inp, "out": out }).to_string());
    let reply = r.process.read_json();
    assert_eq!(reply["ok"], true, "hivemind failed on {codec:?} {:?} {:?}: {reply}", input.dtype(), input.shape());
    let response = ExpertResponse::decode(&std::fs::read(&out).unwrap()[..]).unwrap();
    let [theirs, ours_decoded, theirs_decoded]: [runtime::Tensor; 3] = response.tensors.try_into().unwrap();
    let limits = DecodeLimits::default();
    Outcome {
        theirs,
        they_decoded_ours: tensor::decode(&ours_decoded, &limits).unwrap(),
        they_decoded_theirs: tensor::decode(&theirs_decoded, &limits).unwrap(),
    }
}

fn decode(msg: &runtime::Tensor) -> Tensor {
    tensor::decode(msg, &DecodeLimits::default()).unwrap()
}

/// Runs one case and checks what holds for every codec: each side decodes the other's bytes to
/// exactly what the other side decodes them to.
fn check_cross_decoding(codec: CompressionType, input: &Tensor) -> (runtime::Tensor, Outcome) {
    let ours = tensor::encode(&input.view(), codec).unwrap();
    let outcome = exchange(codec, input, &ours, false);
    let what = format!("{codec:?} {:?} {:?}", input.dtype(), input.shape());
    assert_eq!(outcome.they_decoded_ours, decode(&ours), "hivemind decodes our {what} bytes differently");
    assert_eq!(decode(&outcome.theirs), outcome.they_decoded_theirs, "we decode hivemind's {what} bytes differently");
    assert_eq!(outcome.theirs.size, ours.size);
    assert_eq!(outcome.theirs.dtype, ours.dtype);
    assert_eq!(outcome.theirs.compression, ours.compression);
    (ours, outcome)
}

const SHAPES: [&[usize]; 4] = [&[], &[0], &[3, 5], &[2, 3, 40]];

#[test]
fn none_is_byte_identical_to_hivemind_for_every_dtype() {
    let mut rng = Rng(1);
    for dtype in DType::ALL {
        for shape in SHAPES {
            let input = random_tensor(&mut rng, dtype, shape, 3.0);
            let (ours, outcome) = check_cross_decoding(CompressionType::None, &input);
            assert_eq!(outcome.theirs, ours, "NONE {dtype:?} {shape:?}");
            assert_eq!(outcome.they_decoded_ours, input, "NONE {dtype:?} {shape:?} changed the values");
        }
    }
}

#[test]
fn bfloat16_none_decodes_both_wire_forms_and_sends_the_two_byte_form() {
    let mut rng = Rng(2);
    let input = random_tensor(&mut rng, DType::BF16, &[4, 33], 10.0);
    let ours = tensor::encode(&input.view(), CompressionType::None).unwrap();
    assert_eq!(ours.buffer.len(), 2 * input.numel(), "we send raw 2-byte bfloat16, as Petals peers do");
    let petals_form = exchange(CompressionType::None, &input, &ours, false);
    assert_eq!(petals_form.theirs, ours);
    let legacy = exchange(CompressionType::None, &input, &ours, true);
    assert_eq!(legacy.theirs.buffer.len(), 4 * input.numel(), "plain hivemind sends float32 labelled bfloat16");
    assert_eq!(legacy.theirs.dtype, "bfloat16");
    assert_eq!(decode(&legacy.theirs), input);
    assert_eq!(legacy.they_decoded_theirs, input);
}

#[test]
fn float16_is_byte_identical_to_hivemind() {
    let mut rng = Rng(3);
    let dtypes =
        [DType::F32, DType::F64, DType::F16, DType::I64, DType::I32, DType::I16, DType::I8, DType::U8, DType::Bool];
    for dtype in dtypes {
        for shape in SHAPES {
            // Wide enough that some float values exceed ±65504 and get clamped.
            let input = random_tensor(&mut rng, dtype, shape, 30000.0);
            let (ours, outcome) = check_cross_decoding(CompressionType::Float16, &input);
            assert_eq!(outcome.theirs, ours, "FLOAT16 {dtype:?} {shape:?}");
        }
    }
}

/// Whether two float16 bit patterns are at most one representable step apart.
fn within_one_f16_step(a: u16, b: u16) -> bool {
    let key = |h: u16| if h & 0x8000 != 0 { -i32::from(h & 0x7FFF) } else { i32::from(h) };
    (key(a) - key(b)).abs() <= 1
}

#[test]
fn meanstd_matches_hivemind_within_one_float16_step() {
    let mut rng = Rng(4);
    for dtype in [DType::F32, DType::F64, DType::F16] {
        // [3, 5000]: rows longer than the encoder's 4096-element working buffer.
        for shape in [&[7usize][..], &[4, 33], &[2, 3, 170], &[3, 5000]] {
            let input = random_tensor(&mut rng, dtype, shape, 5.0);
            let (ours, outcome) = check_cross_decoding(CompressionType::Meanstd16bit, &input);
            let (n, rows) = (input.numel(), input.numel() / shape[shape.len() - 1]);
            assert_eq!(outcome.theirs.buffer.len(), ours.buffer.len());
            let halves =
                |b: &[u8]| -> Vec<u16> { b[..2 * n].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect() };
            let (h_ours, h_theirs) = (halves(&ours.buffer), halves(&outcome.theirs.buffer));
            let off = h_ours.iter().zip(&h_theirs).filter(|(a, b)| a != b).count();
            assert!(h_ours.iter().zip(&h_theirs).all(|(&a, &b)| within_one_f16_step(a, b)), "{dtype:?} {shape:?}");
            assert!(off * 100 <= n, "{off} of {n} float16 values differ ({dtype:?} {shape:?})");
            let stats = |b: &[u8]| -> Vec<f32> {
                b[2 * n..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
            };
            let (s_ours, s_theirs) = (stats(&ours.buffer), stats(&outcome.theirs.buffer));
            assert_eq!(s_ours.len(), 2 * rows);
            // Means are sums of values of magnitude ~5 that cancel: compare at that scale.
            for (i, (a, b)) in s_ours.iter().zip(&s_theirs).enumerate() {
                let tolerance = if i < rows { 1e-6 * 5.0 } else { 1e-6 * b.abs() };
                assert!((a - b).abs() <= tolerance, "mean/std {a} vs {b} ({dtype:?} {shape:?})");
            }
        }
    }
}

/// The fraction of positions where two quantized index arrays differ, and the largest gap.
fn index_agreement(ours: &[u8], theirs: &[u8]) -> (f64, u8) {
    let differ = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    let gap = ours.iter().zip(theirs).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
    (differ as f64 / ours.len().max(1) as f64, gap)
}

#[test]
fn quantile_8bit_matches_hivemind_byte_for_byte() {
    let mut rng = Rng(5);
    // 250 001 elements makes hivemind cut two uneven chunks of 125 001 / 125 000.
    let cases =
        [(DType::F32, 1000usize), (DType::F32, 250_001), (DType::F64, 5000), (DType::F16, 5000), (DType::I32, 3000)];
    for (dtype, n) in cases {
        let input = random_tensor(&mut rng, dtype, &[n], 2.0);
        let (ours, outcome) = check_cross_decoding(CompressionType::Quantile8bit, &input);
        assert_eq!(outcome.theirs, ours, "QUANTILE_8BIT {dtype:?} {n}");
    }
}

#[test]
fn uniform_8bit_matches_hivemind() {
    let mut rng = Rng(6);
    for n in [1000usize, 300_000] {
        let input = random_tensor(&mut rng, DType::F32, &[n / 100, 100], 3.0);
        let (ours, outcome) = check_cross_decoding(CompressionType::Uniform8bit, &input);
        // hivemind's mean and norm come from torch's float32 reductions; ours from float64 sums.
        // A last-bit difference in the scale may move a value on a bucket edge by one bucket.
        let header = 8 + 256 * 4;
        let (differ, gap) = index_agreement(&ours.buffer[header..], &outcome.theirs.buffer[header..]);
        assert!(gap <= 1 && differ < 1e-4, "UNIFORM_8BIT {n}: {differ} of indices differ, by up to {gap}");
        let codebook = |b: &[u8]| -> Vec<f32> {
            b[8..header].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        for (a, b) in codebook(&ours.buffer).iter().zip(codebook(&outcome.theirs.buffer)) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1e-2), "UNIFORM_8BIT {n} codebook {a} vs {b}");
        }
    }
}

#[test]
fn blockwise_8bit_matches_bitsandbytes_byte_for_byte() {
    let mut rng = Rng(7);
    for dtype in [DType::F32, DType::BF16] {
        let input = random_tensor(&mut rng, dtype, &[3 * 4096 + 17], 2.0);
        let mut input_with_zero_block = input.clone();
        if let Data::F32(v) = &mut input_with_zero_block.clone().into_parts().1 {
            v[4096..8192].fill(0.0);
            input_with_zero_block = Tensor::new(vec![v.len()], Data::F32(v.clone())).unwrap();
        }
        for input in [input, input_with_zero_block] {
            let (ours, outcome) = check_cross_decoding(CompressionType::Blockwise8bit, &input);
            assert_eq!(outcome.theirs, ours, "BLOCKWISE_8BIT {dtype:?}");
        }
    }
}

/// Sends a stream of parts; hivemind joins them, re-encodes each tensor with its codec and
/// splits the results again with `chunk_size`.
fn stream_exchange(parts: &[runtime::Tensor], chunk_size: usize) -> Vec<runtime::Tensor> {
    let request = ExpertRequest { uid: String::new(), tensors: parts.to_vec(), metadata: Vec::new() };
    let mut r = reference();
    r.calls += 1;
    let (inp, out) = (r.dir.path().join(format!("{}.in", r.calls)), r.dir.path().join(format!("{}.out", r.calls)));
    std::fs::write(&inp, request.encode_to_vec()).unwrap();
    let line = serde_json::json!({ "op": "stream", "in": inp, "out": out, "chunk_size": chunk_size });
    r.process.send_line(&line.to_string());
    let reply = r.process.read_json();
    assert_eq!(reply["ok"], true, "hivemind failed to join our stream: {reply}");
    ExpertResponse::decode(&std::fs::read(&out).unwrap()[..]).unwrap().tensors
}

#[test]
fn chunked_streams_round_trip_both_ways_with_hivemind() {
    let mut rng = Rng(8);
    let inputs = [
        (random_tensor(&mut rng, DType::F32, &[70_000], 1.0), CompressionType::None),
        (random_tensor(&mut rng, DType::I64, &[0], 1.0), CompressionType::None),
        (random_tensor(&mut rng, DType::F32, &[300, 100], 1.0), CompressionType::Float16),
        (random_tensor(&mut rng, DType::BF16, &[2, 5000], 1.0), CompressionType::None),
        (random_tensor(&mut rng, DType::F32, &[], 1.0), CompressionType::None),
    ];
    let messages: Vec<runtime::Tensor> =
        inputs.iter().map(|(t, codec)| tensor::encode(&t.view(), *codec).unwrap()).collect();
    let expected: Vec<Tensor> = messages.iter().map(decode).collect();
    for chunk_size in [stream::DEFAULT_CHUNK_SIZE, 1000] {
        let parts: Vec<runtime::Tensor> = messages.iter().flat_map(|m| stream::split(m, chunk_size)).collect();
        assert!(parts.len() >= messages.len() + 4, "the large tensors span several parts");
        let theirs = stream_exchange(&parts, chunk_size);
        // hivemind joined our parts to the same tensors and split them exactly as we do.
        assert_eq!(theirs, parts, "chunk size {chunk_size}");
        assert_eq!(stream::join(theirs, &DecodeLimits::default()).unwrap(), expected);
    }
}
