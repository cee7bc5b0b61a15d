//! `DistributedModel` over two kwaai servers on loopback that chose their own blocks: text in, the
//! same tokens and text out as the whole model run locally, and the DHT prefix derived from the
//! directory name.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::loopback_node;
use kwaai_core::client::{dht_prefix_for_dir, DistributedModel};
use kwaai_core::model::{generate, BlockSpan, ClientModel, GenerationConfig, LoadOptions, TextTokenizer};
use kwaai_core::server::{LoadProgressCallback, Server, ServerConfig, Span};
use kwaai_core::tensor::DType;

fn make_tiny_llama(dir: &Path) {
    let script = common::repo_root().join("../shared/reference/make_tiny_model.py");
    let script =
        std::env::var_os("KWAAI_SHARED").map(|s| Path::new(&s).join("reference/make_tiny_model.py")).unwrap_or(script);
    let out = Command::new(common::reference_python())
        .arg(&script)
        .arg(dir)
        .args(["--family", "llama", "--layers", "4", "--hidden", "64"])
        .output()
        .expect("make_tiny_model.py runs");
    assert!(out.status.success(), "make_tiny_model.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_distributed_model_generates_what_the_local_model_does() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tiny.llama v1");
    make_tiny_llama(&dir);
    let prefix = dht_prefix_for_dir(&dir).unwrap();
    assert_eq!(prefix, "tiny-llama-v1");

    let bootstrap = loopback_node(&[]);
    let peers = vec![bootstrap.listen_addrs()[0].to_string()];
    // Two servers of two blocks each, their blocks chosen where the swarm lacks them and their
    // throughput measured, as Petals servers started with --num_blocks do.
    let progress = Arc::new(Mutex::new(Vec::new()));
    let serve = || {
        let host = loopback_node(&peers);
        let seen = Arc::clone(&progress);
        let config = ServerConfig {
            on_load_progress: Some(LoadProgressCallback(Arc::new(move |loaded, total| {
                seen.lock().unwrap().push((loaded, total));
            }))),
            model_dir: dir.clone(),
            num_blocks: Some(2),
            dht_prefix: Some(prefix.clone()),
            torch_dtype: Some(DType::F32),
            ..ServerConfig::default()
        };
        let server = Server::start(&host, config).expect("server starts");
        (host, server)
    };
    let first = serve();
    let second = serve();
    assert_eq!(first.1.span(), Span::new(0, 2).unwrap());
    assert_eq!(second.1.span(), Span::new(2, 4).unwrap(), "the second server takes the blocks nobody serves");
    assert_eq!(*progress.lock().unwrap(), [(1, 2), (2, 2), (1, 2), (2, 2)], "loading progress, block by block");

    let model = DistributedModel::load(&bootstrap, &dir, None, |_| {}).expect("model loads");
    let config = GenerationConfig { max_new_tokens: 12, ..GenerationConfig::default() };
    let tokens: Vec<_> = model.generate_text("kwaai says", config.clone()).unwrap().collect::<Result<_, _>>().unwrap();
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();

    let local = ClientModel::load(&dir).unwrap();
    let tokenizer = TextTokenizer::from_dir(&dir).unwrap();
    let span = BlockSpan::load(&dir, 0, 4, LoadOptions::default()).unwrap();
    let mut cache = span.new_cache(64);
    let prompt = tokenizer.encode("kwaai says", true).unwrap();
    assert_eq!(model.encode("kwaai says").unwrap(), prompt);
    let expected =
        generate(&local, &prompt, &config, |hidden| span.forward_with_cache(hidden, None, &mut cache), |_| {}).unwrap();
    assert_eq!(ids, expected);
    assert_eq!(ids.len(), 12);
    // The stream holds back a character whose bytes are still incomplete when generation ends;
    // decoding the ids shows such bytes as U+FFFD.
    let decoded = model.decode(&ids).unwrap();
    assert_eq!(decoded, tokenizer.decode(&expected, true).unwrap());
    let rest = decoded.strip_prefix(text.as_str()).unwrap_or_else(|| panic!("{text:?} is not a prefix of {decoded:?}"));
    assert!(rest.chars().all(|c| c == '\u{fffd}'), "{rest:?}");

    // A stop sequence taken from the middle of that output ends the generation right after its
    // first occurrence.
    let stop = expected[4..6].to_vec();
    let end = (2..=expected.len()).find(|&n| expected[..n].ends_with(&stop)).unwrap();
    let config = GenerationConfig { stop_sequences: vec![stop], ..config };
    let stopped: Vec<u32> = model.generate(&prompt, config).unwrap().map(|t| t.unwrap().id).collect();
    assert_eq!(stopped, expected[..end]);
}
