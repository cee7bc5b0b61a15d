//! kwaai's MoE client against Python `hivemind.moe.Server`s on loopback: kwaai reads their
//! expert declarations, its beam search picks the best live experts, and its mixture-of-experts
//! layer's output and gradients (input, gate weight, gate bias) match the same mixture computed
//! locally with candle autograd from the servers' weights. After one server is stopped (its DHT
//! records still alive), the layer still returns the mixture of the experts that answered.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use candle_core::{Device, Tensor, Var, D};
use common::ReferenceProcess;
use kwaai_core::moe::{
    get_experts, ExpertInfo, FeedForwardExpert, MixtureConfig, MixtureForward, MoeBeamSearcher, RemoteMixtureOfExperts,
};
use kwaai_core::{Node, NodeConfig};

const HIDDEN: usize = 32;
const GRID: [usize; 2] = [3, 3];

struct PythonServer {
    process: ReferenceProcess,
    weights: HashMap<String, String>,
    maddr: String,
}

fn python_server(uids: &[&str], seed: u32, dir: &std::path::Path, initial_peers: &[&str]) -> PythonServer {
    let uids = uids.join(",");
    let hidden = HIDDEN.to_string();
    let seed = seed.to_string();
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec![uids.as_str(), hidden.as_str(), seed.as_str(), dir];
    args.extend_from_slice(initial_peers);
    let mut process = ReferenceProcess::start("moe_python_server.py", &args);
    let ready = process.read_json();
    let weights = serde_json::from_value(ready["weights"].clone()).expect("weights map");
    let maddr = ready["maddrs"][0].as_str().expect("a maddr").to_owned();
    PythonServer { process, weights, maddr }
}

/// The experts' scores under the gate for one input row: (uid, score), best first.
fn ranked(uids: &[&str], logits: &[f32]) -> Vec<String> {
    let mut scored: Vec<(f32, String)> = uids
        .iter()
        .map(|uid| {
            let c: Vec<usize> = uid.split('.').skip(1).map(|c| c.parse().unwrap()).collect();
            (logits[c[0]] + logits[GRID[0] + c[1]], (*uid).to_owned())
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, u)| u).collect()
}

/// The mixture recomputed locally with candle autograd over the experts that answered:
/// (output, grad input, grad gate weight, grad gate bias).
fn local_mixture(
    forward: &MixtureForward,
    experts: &HashMap<String, FeedForwardExpert>,
    x: &Tensor,
    gate: &(Tensor, Tensor),
    grad_output: &Tensor,
) -> [Tensor; 4] {
    let xv = Var::from_tensor(x).unwrap();
    let wv = Var::from_tensor(&gate.0).unwrap();
    let bv = Var::from_tensor(&gate.1).unwrap();
    let logits = xv.as_tensor().matmul(&wv.as_tensor().t().unwrap()).unwrap().broadcast_add(bv.as_tensor()).unwrap();
    let mut rows = Vec::new();
    for (i, chosen) in forward.experts.iter().enumerate() {
        let row = xv.as_tensor().narrow(0, i, 1).unwrap();
        let mut expert_logits = Vec::new();
        let mut outputs = Vec::new();
        for (j, info) in chosen.iter().enumerate() {
            if !forward.responded[i][j] {
                continue;
            }
            let c: Vec<usize> = info.uid.split('.').skip(1).map(|c| c.parse().unwrap()).collect();
            let l = (logits.get(i).unwrap().get(c[0]).unwrap() + logits.get(i).unwrap().get(GRID[0] + c[1]).unwrap())
                .unwrap();
            expert_logits.push(l);
            outputs.push(experts[&info.uid].apply(&row).unwrap().squeeze(0).unwrap());
        }
        let weights = candle_nn::ops::softmax(&Tensor::stack(&expert_logits, 0).unwrap(), D::Minus1).unwrap();
        let stacked = Tensor::stack(&outputs, 0).unwrap();
        rows.push(weights.unsqueeze(1).unwrap().broadcast_mul(&stacked).unwrap().sum(0).unwrap());
    }
    let output = Tensor::stack(&rows, 0).unwrap();
    let grads = (&output * grad_output).unwrap().sum_all().unwrap().backward().unwrap();
    [
        output,
        grads.get(xv.as_tensor()).unwrap().clone(),
        grads.get(wv.as_tensor()).unwrap().clone(),
        grads.get(bv.as_tensor()).unwrap().clone(),
    ]
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn assert_matches_local(
    mixture: &RemoteMixtureOfExperts,
    forward: &MixtureForward,
    experts: &HashMap<String, FeedForwardExpert>,
    x: &Tensor,
    grad_output: &Tensor,
) {
    let gate = mixture.gate().unwrap();
    let grads = mixture.backward(forward, grad_output).expect("mixture backward");
    for (i, row) in grads.responded.iter().enumerate() {
        assert_eq!(row, &forward.responded[i], "every expert that ran forward answers backward");
    }
    let [output, grad_x, grad_w, grad_b] = local_mixture(forward, experts, x, &gate, grad_output);
    assert!(max_diff(&forward.output, &output) < 1e-4, "outputs differ by {}", max_diff(&forward.output, &output));
    assert!(max_diff(&grads.input, &grad_x) < 1e-3, "input gradients differ by {}", max_diff(&grads.input, &grad_x));
    assert!(max_diff(&grads.gate_weight, &grad_w) < 1e-3, "gate weight gradients differ");
    assert!(max_diff(&grads.gate_bias, &grad_b) < 1e-3, "gate bias gradients differ");
    let norm = grad_x.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(norm > 1e-2, "a gradient worth comparing: {norm}");
}

#[test]
fn kwaai_mixture_of_python_experts_matches_local_and_survives_a_stopped_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a_uids = ["ffn.0.0", "ffn.0.1", "ffn.1.0"];
    let b_uids = ["ffn.1.1", "ffn.2.2"];
    let a = python_server(&a_uids, 1, dir.path(), &[]);
    let mut b = python_server(&b_uids, 2, dir.path(), &[&a.maddr]);
    let node = Node::start(NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        initial_peers: vec![a.maddr.clone()],
        ..NodeConfig::default()
    })
    .expect("a kwaai node joins through the Python server");

    let all: Vec<&str> = a_uids.iter().chain(&b_uids).copied().collect();
    let all_owned: Vec<String> = all.iter().map(|u| u.to_string()).collect();
    let found = get_experts(&node, &all_owned).expect("get_experts");
    let peers: HashMap<&str, &str> = [(&a, &a_uids[..]), (&b, &b_uids[..])]
        .iter()
        .flat_map(|(s, uids)| uids.iter().map(move |u| (*u, s.maddr.rsplit("/p2p/").next().unwrap())))
        .collect();
    for (uid, info) in all.iter().zip(&found) {
        let info = info.as_ref().unwrap_or_else(|| panic!("{uid} is declared by its Python server"));
        assert_eq!(info.uid, *uid);
        assert_eq!(info.peer_id.to_base58(), peers[uid], "{uid} is served by the right peer");
    }

    // Beam search over the Python declarations: scores ffn.2.2 = 3.5, ffn.1.0 = 2.0, ffn.1.1 = 1.5, ...
    let searcher = MoeBeamSearcher::new(&node, "ffn", GRID.to_vec(), true).expect("searcher");
    let best = searcher.find_best_experts(&[vec![0.0, 1.0, 2.0], vec![1.0, 0.5, 1.5]], 3).expect("beam search");
    let best: Vec<&str> = best.iter().map(|e: &ExpertInfo| e.uid.as_str()).collect();
    assert_eq!(best, ["ffn.2.2", "ffn.1.0", "ffn.1.1"]);

    let experts: HashMap<String, FeedForwardExpert> = a
        .weights
        .iter()
        .chain(&b.weights)
        .map(|(uid, path)| (uid.clone(), FeedForwardExpert::load(std::path::Path::new(path)).expect("weights")))
        .collect();
    let mut config = MixtureConfig::new("ffn.", GRID.to_vec(), 4);
    config.forward_timeout = Some(Duration::from_secs(60));
    config.backward_timeout = Some(Duration::from_secs(60));
    config.timeout_after_k_min = Some(Duration::from_secs(10));
    config.call_timeout = Duration::from_secs(30);
    let mixture = RemoteMixtureOfExperts::with_seeded_gate(&node, config, HIDDEN, 7).expect("mixture");
    let x = Tensor::randn(0f32, 1.0, (5, HIDDEN), &Device::Cpu).unwrap();
    let grad_output = Tensor::randn(0f32, 1.0, (5, HIDDEN), &Device::Cpu).unwrap();

    let forward = mixture.forward(&x).expect("mixture forward");
    let (gate_w, gate_b) = mixture.gate().unwrap();
    let logits = x.matmul(&gate_w.t().unwrap()).unwrap().broadcast_add(&gate_b).unwrap().to_vec2::<f32>().unwrap();
    for (i, chosen) in forward.experts.iter().enumerate() {
        let uids: Vec<String> = chosen.iter().map(|e| e.uid.clone()).collect();
        assert_eq!(uids, ranked(&all, &logits[i])[..4], "sample {i}: the 4 best experts by gate score");
        assert!(forward.responded[i].iter().all(|r| *r), "sample {i}: every expert answers");
    }
    assert_matches_local(&mixture, &forward, &experts, &x, &grad_output);

    // Stop server B: its experts stay in the DHT, their calls fail and are skipped.
    b.process.send_line("stop");
    assert_eq!(b.process.read_json()["stopped"], true);
    let forward = mixture.forward(&x).expect("the mixture still answers without server B");
    let mut skipped = 0;
    for (chosen, responded) in forward.experts.iter().zip(&forward.responded) {
        for (info, answered) in chosen.iter().zip(responded) {
            assert_eq!(*answered, a_uids.contains(&info.uid.as_str()), "{}: only server A's experts answer", info.uid);
            skipped += usize::from(!answered);
        }
    }
    assert!(skipped >= forward.experts.len(), "every sample chose at least one of B's 2 experts among its 4");
    assert_matches_local(&mixture, &forward, &experts, &x, &grad_output);
    drop(b);
    drop(a);
}
