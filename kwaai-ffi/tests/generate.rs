//! The C functions for serving and generation, called from Rust on a loopback swarm (a bootstrap
//! node and two nodes serving the halves of a tiny model): the tokens streamed through the token
//! callback are those kwaai-core's local model computes with every block in one process, greedy
//! and sampled.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::sync::Mutex;

use kwaai::*;
use kwaai_core::model::{generate, BlockSpan, ClientModel, GenerationConfig, LoadOptions, SamplingConfig};

/// The reference venv's Python: `$KWAAI_REFERENCE_PYTHON`, else `~/.cache/kwaai/reference-venv/bin/python`.
fn reference_python() -> PathBuf {
    let path = std::env::var_os("KWAAI_REFERENCE_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(".cache/kwaai/reference-venv/bin/python")
    });
    assert!(path.exists(), "the reference peer is not installed at {}: run `make reference`", path.display());
    path
}

fn make_tiny_llama(dir: &Path) {
    let shared = std::env::var_os("KWAAI_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let out = Command::new(reference_python())
        .arg(shared.join("reference/make_tiny_model.py"))
        .arg(dir)
        .args(["--family", "llama", "--layers", "4", "--hidden", "64"])
        .output()
        .expect("make_tiny_model.py runs");
    assert!(out.status.success(), "make_tiny_model.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn ok(status: kwaai_status) {
    if status != kwaai_status::Ok {
        let message = unsafe { CStr::from_ptr(kwaai_last_error_message()) };
        panic!("{status:?}: {}", message.to_string_lossy());
    }
}

fn start_node(peer: Option<&CString>) -> *mut kwaai_node {
    let mut config = null_mut();
    ok(kwaai_config_new(&mut config));
    let listen = CString::new("/ip4/127.0.0.1/tcp/0").unwrap();
    ok(unsafe { kwaai_config_add_listen_addr(config, listen.as_ptr()) });
    if let Some(peer) = peer {
        ok(unsafe { kwaai_config_add_initial_peer(config, peer.as_ptr()) });
    }
    let mut node = null_mut();
    ok(kwaai_node_start(config, &mut node));
    kwaai_config_free(config);
    node
}

fn serve(node: *mut kwaai_node, dir: &CString, prefix: &CString, start: u32, end: u32) -> *mut kwaai_server {
    let mut config = null_mut();
    ok(kwaai_server_config_new(&mut config));
    ok(unsafe { kwaai_server_config_set_model_dir(config, dir.as_ptr()) });
    ok(kwaai_server_config_set_block_range(config, start, end));
    ok(unsafe { kwaai_server_config_set_dht_prefix(config, prefix.as_ptr()) });
    ok(kwaai_server_config_set_throughput(config, 1.0));
    ok(kwaai_server_config_set_torch_dtype(config, kwaai_dtype::F32));
    let mut server = null_mut();
    ok(kwaai_node_serve(node, config, &mut server));
    kwaai_server_config_free(config);
    server
}

/// What the token callback saw: the ids, then how many `finished` calls came.
#[derive(Default)]
struct Seen {
    ids: Vec<u32>,
    finished: usize,
}

unsafe extern "C" fn on_token(user_data: *mut c_void, token: u32, _piece: *const c_char, finished: bool) {
    let seen = &*(user_data as *const Mutex<Seen>);
    let mut seen = seen.lock().unwrap();
    if finished {
        seen.finished += 1;
    } else {
        seen.ids.push(token);
    }
}

/// Streams a generation after `prompt` through the C ABI and returns its ids.
fn streamed(model: *mut kwaai_model, prompt: &[u32], config: *mut kwaai_generation_config) -> Vec<u32> {
    let seen = Mutex::new(Seen::default());
    let mut generation = null_mut();
    let user_data = &seen as *const Mutex<Seen> as *mut c_void;
    ok(unsafe {
        kwaai_model_generate(model, prompt.as_ptr(), prompt.len(), config, Some(on_token), user_data, &mut generation)
    });
    ok(kwaai_generation_wait(generation));
    kwaai_generation_free(generation);
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.finished, 1);
    seen.ids
}

#[test]
fn tokens_streamed_through_the_c_abi_equal_the_local_model() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tiny-ffi");
    make_tiny_llama(&dir);
    let c_dir = CString::new(dir.to_str().unwrap()).unwrap();
    let prefix = CString::new("tiny-ffi").unwrap();

    let boot = start_node(None);
    let mut addr = null_mut();
    ok(kwaai_node_listen_addr(boot, 0, &mut addr));
    let boot_addr = unsafe { CStr::from_ptr(addr) }.to_owned();
    unsafe { kwaai_string_free(addr) };
    let (host_a, host_b) = (start_node(Some(&boot_addr)), start_node(Some(&boot_addr)));
    let first = serve(host_a, &c_dir, &prefix, 0, 2);
    let second = serve(host_b, &c_dir, &prefix, 2, 4);

    let mut model = null_mut();
    ok(unsafe { kwaai_model_load(boot, c_dir.as_ptr(), prefix.as_ptr(), &mut model) });
    // "kwaai says" in the tiny tokenizer: <s>, then byte + 4.
    let prompt: Vec<u32> = vec![1, 111, 123, 101, 101, 109, 36, 119, 101, 125, 119];

    let local = ClientModel::load(&dir).unwrap();
    let span = BlockSpan::load(&dir, 0, 4, LoadOptions::default()).unwrap();
    let local_tokens = |config: &GenerationConfig| {
        let mut cache = span.new_cache(64);
        generate(&local, &prompt, config, |hidden| span.forward_with_cache(hidden, None, &mut cache), |_| {}).unwrap()
    };

    let mut config = null_mut();
    ok(kwaai_generation_config_new(&mut config));
    ok(kwaai_generation_config_set_max_new_tokens(config, 16));
    let greedy = GenerationConfig { max_new_tokens: 16, ..GenerationConfig::default() };
    let ids = streamed(model, &prompt, config);
    assert_eq!(ids.len(), 16);
    assert_eq!(ids, local_tokens(&greedy), "greedy tokens through the C ABI and the local model");

    ok(kwaai_generation_config_set_do_sample(config, true));
    ok(kwaai_generation_config_set_temperature(config, 0.8));
    ok(kwaai_generation_config_set_top_k(config, 40));
    ok(kwaai_generation_config_set_top_p(config, 0.9));
    ok(kwaai_generation_config_set_repetition_penalty(config, 1.2));
    ok(kwaai_generation_config_set_seed(config, 7));
    let sampled = GenerationConfig {
        max_new_tokens: 16,
        sampling: SamplingConfig {
            do_sample: true,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            repetition_penalty: 1.2,
            seed: 7,
        },
        ..GenerationConfig::default()
    };
    let expected = local_tokens(&sampled);
    assert_eq!(streamed(model, &prompt, config), expected, "sampled tokens through the C ABI and the local model");

    // A stop token ends the stream right after it (it is included).
    let stop = expected[5];
    let first_stop = expected.iter().position(|&t| t == stop).unwrap();
    ok(unsafe { kwaai_generation_config_set_stop_tokens(config, &stop, 1) });
    assert_eq!(streamed(model, &prompt, config), expected[..=first_stop]);

    kwaai_generation_config_free(config);
    kwaai_model_free(model);
    kwaai_server_free(first);
    kwaai_server_free(second);
    for node in [host_a, host_b, boot] {
        kwaai_node_free(node);
    }
}
