//! kwaai's expert client against kwaai's expert server, without Python: RemoteExpert forward and
//! backward (unary and streamed) match the expert run locally, bad calls fail with clear errors,
//! and a mixture of experts on two nodes keeps answering after one node shuts down.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use kwaai_core::moe::{
    get_experts, ExpertDeclarer, ExpertInfo, ExpertModule, ExpertServer, FeedForwardExpert, MixtureConfig,
    RemoteExpert, RemoteMixtureOfExperts,
};
use kwaai_core::tensor::DecodeLimits;
use kwaai_core::{ErrorKind, Node, NodeConfig};

const HIDDEN: usize = 16;
const T: Duration = Duration::from_secs(30);

fn loopback(initial_peers: Vec<String>) -> NodeConfig {
    NodeConfig { listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()], initial_peers, ..NodeConfig::default() }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn serve(node: &Node, uids: &[&str], seed: u64) -> (Vec<FeedForwardExpert>, ExpertDeclarer) {
    let mut server = ExpertServer::new(DecodeLimits::default());
    let mut experts = Vec::new();
    for (i, uid) in uids.iter().enumerate() {
        let expert = FeedForwardExpert::from_seed(HIDDEN, seed + i as u64).unwrap();
        server.add(uid, Arc::new(expert.clone())).unwrap();
        experts.push(expert);
    }
    server.serve(node).unwrap();
    let declarer = ExpertDeclarer::start(node, uids.iter().map(|u| u.to_string()).collect(), T).unwrap();
    (experts, declarer)
}

#[test]
fn remote_expert_calls_match_local_and_bad_calls_fail_clearly() {
    let server = Node::start(loopback(vec![])).unwrap();
    let (experts, _declarer) = serve(&server, &["ffn.0", "ffn.1"], 3);
    let client = Node::start(loopback(vec![server.listen_addrs()[0].to_string()])).unwrap();

    let found = get_experts(&client, &["ffn.1".to_owned(), "ffn.7".to_owned()]).unwrap();
    let info = found[0].clone().expect("ffn.1 is declared");
    assert_eq!(info.peer_id, server.peer_id());
    assert!(found[1].is_none(), "ffn.7 is not declared");
    let remote = RemoteExpert::new(&client, info, T).unwrap();
    assert_eq!(&remote.info().unwrap(), experts[1].schema());

    // 3 rows go unary; 40 000 rows (2.5 MiB) go through the streaming handlers.
    for rows in [3usize, 40_000] {
        let x = Tensor::randn(0f32, 1.0, (rows, HIDDEN), &Device::Cpu).unwrap();
        let g = Tensor::randn(0f32, 1.0, (rows, HIDDEN), &Device::Cpu).unwrap();
        let remote_y = remote.forward(std::slice::from_ref(&x)).unwrap().remove(0);
        let local_y = experts[1].forward(std::slice::from_ref(&x)).unwrap().remove(0);
        assert!(max_diff(&remote_y, &local_y) < 1e-6, "{rows} rows: outputs");
        let remote_g = remote.backward(std::slice::from_ref(&x), std::slice::from_ref(&g)).unwrap().remove(0);
        let local_g = experts[1].backward(std::slice::from_ref(&x), std::slice::from_ref(&g)).unwrap().remove(0);
        assert!(max_diff(&remote_g, &local_g) < 1e-6, "{rows} rows: gradients");
    }

    let x = Tensor::zeros((2, HIDDEN), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = remote.forward(&[x.clone(), x.clone()]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let narrow = Tensor::zeros((2, HIDDEN - 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = remote.forward(&[narrow]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "the server's error comes back: {err}");
    assert!(err.message().contains("ffn expert takes"), "{err}");
    let unknown = RemoteExpert::new(&client, ExpertInfo { uid: "ffn.9".into(), peer_id: server.peer_id() }, T).unwrap();
    let err = unknown.info().unwrap_err();
    assert!(err.message().contains("ffn.9"), "{err}");
}

#[test]
fn a_mixture_over_two_nodes_survives_one_shutting_down() {
    let first = Node::start(loopback(vec![])).unwrap();
    let first_addr = first.listen_addrs()[0].to_string();
    let second = Node::start(loopback(vec![first_addr.clone()])).unwrap();
    let (_, _first_declarer) = serve(&first, &["mix.0.0", "mix.1.1"], 20);
    let (_, second_declarer) = serve(&second, &["mix.0.1", "mix.1.0"], 30);
    let client = Node::start(loopback(vec![first_addr])).unwrap();

    let mut config = MixtureConfig::new("mix", vec![2, 2], 4);
    config.forward_timeout = Some(T);
    config.backward_timeout = Some(T);
    config.timeout_after_k_min = Some(Duration::from_secs(5));
    config.call_timeout = Duration::from_secs(10);
    let mixture = RemoteMixtureOfExperts::with_seeded_gate(&client, config, HIDDEN, 1).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, HIDDEN), &Device::Cpu).unwrap();
    let forward = mixture.forward(&x).unwrap();
    assert!(forward.experts.iter().all(|row| row.len() == 4), "all 4 experts chosen for every sample");
    assert!(forward.responded.iter().flatten().all(|r| *r), "all answer");
    for weights in &forward.weights {
        assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    drop(second_declarer);
    second.shutdown();
    let forward = mixture.forward(&x).expect("the mixture answers without the second node");
    for (row, responded) in forward.experts.iter().zip(&forward.responded) {
        for (info, answered) in row.iter().zip(responded) {
            assert_eq!(*answered, info.peer_id == first.peer_id(), "{}", info.uid);
        }
    }
    let grads = mixture.backward(&forward, &Tensor::ones((3, HIDDEN), candle_core::DType::F32, &Device::Cpu).unwrap());
    assert_eq!(grads.unwrap().input.dims(), &[3, HIDDEN]);

    // With every expert gone the layer fails instead of inventing an output: no expert answers
    // (Timeout), or, once no record is reachable either, beam search finds none (Network).
    first.shutdown();
    let err = mixture.forward(&x).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Network), "{err}");
}

/// An `ffn` expert that answers only after a long pause.
struct StalledExpert(FeedForwardExpert);

impl ExpertModule for StalledExpert {
    fn schema(&self) -> &kwaai_core::moe::ExpertSchema {
        self.0.schema()
    }

    fn forward(&self, inputs: &[Tensor]) -> kwaai_core::Result<Vec<Tensor>> {
        std::thread::sleep(Duration::from_secs(20));
        self.0.forward(inputs)
    }
}

#[test]
fn a_mixture_skips_an_expert_that_misses_the_grace_period_after_k_min() {
    let node = Node::start(loopback(vec![])).unwrap();
    let fast = FeedForwardExpert::from_seed(HIDDEN, 41).unwrap();
    let mut server = ExpertServer::new(DecodeLimits::default());
    server.add("lag.0", Arc::new(fast.clone())).unwrap();
    server.add("lag.1", Arc::new(StalledExpert(FeedForwardExpert::from_seed(HIDDEN, 42).unwrap()))).unwrap();
    server.serve(&node).unwrap();
    let _declarer = ExpertDeclarer::start(&node, vec!["lag.0".into(), "lag.1".into()], T).unwrap();
    let client = Node::start(loopback(vec![node.listen_addrs()[0].to_string()])).unwrap();

    let mut config = MixtureConfig::new("lag.", vec![2], 2);
    config.forward_timeout = Some(Duration::from_secs(60));
    config.timeout_after_k_min = Some(Duration::from_secs(1));
    let mixture = RemoteMixtureOfExperts::with_seeded_gate(&client, config, HIDDEN, 5).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, HIDDEN), &Device::Cpu).unwrap();
    let forward = mixture.forward(&x).expect("the fast expert's answer is enough");
    let answered: Vec<(&str, bool)> =
        forward.experts[0].iter().zip(&forward.responded[0]).map(|(e, r)| (e.uid.as_str(), *r)).collect();
    assert_eq!(answered.len(), 2, "both experts were chosen: {answered:?}");
    assert!(answered.contains(&("lag.0", true)) && answered.contains(&("lag.1", false)), "{answered:?}");
    let alone = fast.forward(std::slice::from_ref(&x)).unwrap().remove(0);
    assert!(max_diff(&forward.output, &alone) < 1e-6, "the output is the fast expert's alone");
}
