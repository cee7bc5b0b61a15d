//! Rust averagers on loopback find one group through the DHT and average to the exact
//! weighted mean, with and without compression; an averager that drops mid-round does not stop
//! the others.

mod common;

use std::time::Duration;

use common::{loopback_node, loopback_swarm};
use kwaai_core::averaging::{AveragerConfig, AveragingStage, DecentralizedAverager};
use kwaai_core::tensor::{CompressionType, Data, Tensor};
use rmpv::Value;

/// Peer `peer`'s tensors: distinct values per peer and element.
fn tensors_of(peer: usize, sizes: &[usize]) -> Vec<Tensor> {
    sizes
        .iter()
        .enumerate()
        .map(|(t, &n)| {
            let values =
                (0..n).map(|i| ((i * 7 + t * 13 + peer * 101) % 997) as f32 / 10.0 - 50.0 + peer as f32).collect();
            Tensor::new(vec![n], Data::F32(values)).unwrap()
        })
        .collect()
}

fn values(tensor: &Tensor) -> Vec<f32> {
    match tensor.data() {
        Data::F32(v) => v.clone(),
        other => panic!("expected float32, got {:?}", other.dtype()),
    }
}

fn config(prefix: &str, group: usize) -> AveragerConfig {
    AveragerConfig {
        prefix: prefix.into(),
        target_group_size: Some(group),
        min_group_size: group,
        min_matchmaking_time: Duration::from_secs(3),
        request_timeout: Duration::from_secs(2),
        part_size_bytes: 16 << 10,
        ..AveragerConfig::default()
    }
}

fn run_group(compression: CompressionType, tolerance: f32) {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let sizes = [10_000, 3, 40_000];
    let weights = [1.0, 2.0, 3.0, 4.0];
    let nodes = loopback_swarm(4);
    let averagers: Vec<DecentralizedAverager> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let config = AveragerConfig { compression, ..config("rustgroup", 4) };
            DecentralizedAverager::new(node, tensors_of(i, &sizes), config).unwrap()
        })
        .collect();
    let groups: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = averagers
            .iter()
            .enumerate()
            .map(|(i, averager)| {
                s.spawn(move || averager.step(Value::from(i as u64), weights[i], Duration::from_secs(60)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().expect("step succeeds")).collect()
    });
    let group = &groups[0];
    assert_eq!(group.size(), 4);
    for g in &groups {
        assert_eq!(g, group, "every member sees the same group");
    }
    let mut gathered: Vec<u64> = group.user_data().unwrap().iter().map(|(_, v)| v.as_u64().unwrap()).collect();
    gathered.sort();
    assert_eq!(gathered, vec![0, 1, 2, 3]);

    let total: f64 = weights.iter().sum();
    let initial: Vec<Vec<Tensor>> = (0..4).map(|p| tensors_of(p, &sizes)).collect();
    for (t, &n) in sizes.iter().enumerate() {
        let inputs: Vec<Vec<f32>> = initial.iter().map(|tensors| values(&tensors[t])).collect();
        let expected: Vec<f32> = (0..n)
            .map(|i| {
                let sum: f64 = (0..4).map(|p| weights[p] * f64::from(inputs[p][i])).sum::<f64>();
                (sum / total) as f32
            })
            .collect();
        for (p, averager) in averagers.iter().enumerate() {
            let got = values(&averager.tensors()[t]);
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!((g - e).abs() <= tolerance, "peer {p} tensor {t} element {i}: {g} vs mean {e}");
            }
        }
    }
}

#[test]
fn four_rust_averagers_reach_the_weighted_mean() {
    run_group(CompressionType::None, 1e-4);
}

#[test]
fn four_rust_averagers_reach_the_mean_through_float16() {
    // Values lie within ±60: float16 keeps about 3 decimal digits there.
    run_group(CompressionType::Float16, 0.1);
}

#[test]
fn four_rust_averagers_reach_the_mean_through_uniform_8bit() {
    // 256 buckets over ±3 standard deviations of each part: the delta quantization error stays
    // within a bucket (~0.2 here) plus clipping of outliers, which these values do not have.
    run_group(CompressionType::Uniform8bit, 1.0);
}

#[test]
fn an_averager_that_drops_mid_round_does_not_stop_the_others() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let sizes = [400_000];
    let nodes = loopback_swarm(4);
    let averagers: Vec<DecentralizedAverager> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let config = AveragerConfig {
                sender_timeout: Some(Duration::from_secs(3)),
                reducer_timeout: Some(Duration::from_secs(6)),
                part_size_bytes: 4 << 10,
                ..config("dropgroup", 4)
            };
            DecentralizedAverager::new(node, tensors_of(i, &sizes), config).unwrap()
        })
        .collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = averagers
            .iter()
            .map(|averager| s.spawn(move || averager.step(Value::Nil, 1.0, Duration::from_secs(60))))
            .collect();
        // Stop the last node as soon as its all-reduce begins.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while averagers[3].stage() != AveragingStage::RunningAllreduce {
            assert!(std::time::Instant::now() < deadline, "the group never formed");
            std::thread::sleep(Duration::from_millis(2));
        }
        // A leader's BEGIN_ALLREDUCE messages are queued by now; let them leave first.
        std::thread::sleep(Duration::from_millis(20));
        nodes[3].shutdown();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let initial: Vec<Vec<f32>> = (0..4).map(|p| values(&tensors_of(p, &sizes)[0])).collect();
    let survivors: Vec<Vec<f32>> = (0..3)
        .map(|p| {
            let group = results[p].as_ref().unwrap_or_else(|e| panic!("survivor {p} failed: {e}"));
            assert_eq!(group.size(), 4);
            values(&averagers[p].tensors()[0])
        })
        .collect();
    let mut agreed = 0usize;
    for i in 0..sizes[0] {
        let low = (0..4).map(|p| initial[p][i]).fold(f32::INFINITY, f32::min);
        let high = (0..4).map(|p| initial[p][i]).fold(f32::NEG_INFINITY, f32::max);
        for (p, got) in survivors.iter().enumerate() {
            assert!(
                got[i] >= low - 1e-3 && got[i] <= high + 1e-3,
                "survivor {p} element {i}: {} outside [{low}, {high}]",
                got[i]
            );
        }
        if (survivors[0][i] - survivors[1][i]).abs() < 1e-4 && (survivors[0][i] - survivors[2][i]).abs() < 1e-4 {
            agreed += 1;
        }
    }
    // The three surviving reducers average about three quarters of the vector for everyone.
    assert!(agreed >= sizes[0] / 2, "survivors agree on only {agreed} of {} elements", sizes[0]);
}

#[test]
fn bad_settings_and_tensors_are_invalid_arguments() {
    use kwaai_core::ErrorKind;
    let node = loopback_node(&[]);
    let f32_tensors = || tensors_of(0, &[4]);
    let bad_configs = [
        AveragerConfig { prefix: "has.dot".into(), ..AveragerConfig::default() },
        AveragerConfig { initial_group_bits: "012".into(), ..AveragerConfig::default() },
        AveragerConfig { class_name: "Bad Name".into(), ..AveragerConfig::default() },
        AveragerConfig { min_group_size: 0, ..AveragerConfig::default() },
        AveragerConfig { bandwidth: Some(-1.0), ..AveragerConfig::default() },
        AveragerConfig {
            sender_timeout: Some(Duration::from_secs(2)),
            reducer_timeout: Some(Duration::from_secs(1)),
            ..AveragerConfig::default()
        },
    ];
    for config in bad_configs {
        let err = DecentralizedAverager::new(&node, f32_tensors(), config.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{config:?}: {err}");
    }
    let ints = vec![Tensor::new(vec![2], Data::I64(vec![1, 2])).unwrap()];
    let err = DecentralizedAverager::new(&node, ints, AveragerConfig::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let averager = DecentralizedAverager::new(&node, f32_tensors(), AveragerConfig::default()).unwrap();
    assert_eq!(averager.step(Value::Nil, -1.0, Duration::from_secs(1)).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(averager.set_tensors(tensors_of(0, &[5])).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // Alone, no group forms: the step times out.
    let config = AveragerConfig {
        prefix: "alone".into(),
        min_matchmaking_time: Duration::from_millis(300),
        ..AveragerConfig::default()
    };
    let lonely = DecentralizedAverager::new(&node, f32_tensors(), config).unwrap();
    assert_eq!(lonely.step(Value::Nil, 1.0, Duration::from_secs(1)).unwrap_err().kind(), ErrorKind::Timeout);
    assert_eq!(lonely.tensors(), f32_tensors());
}
