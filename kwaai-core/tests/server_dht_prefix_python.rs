//! The DHT prefix derived from a repository name equals what Petals' own config classes derive.

mod common;

use kwaai_core::model::Family;
use kwaai_core::server::dht_prefix_for_repo;

#[test]
fn prefixes_equal_petals_config_classes() {
    let cases = [
        (Family::Llama, "llama", "meta-llama/Llama-2-70b-hf"),
        (Family::Llama, "llama", "huggyllama/llama-7b"),
        (Family::Llama, "llama", "someone/Tiny.Llama-1.1B"),
        (Family::Bloom, "bloom", "bigscience/bloom"),
        (Family::Bloom, "bloom", "x/bloom-1.1"),
        (Family::Falcon, "falcon", "tiiuae/falcon-180B"),
        (Family::Falcon, "falcon", "a/b/falcon-4.0"),
    ];
    let args: Vec<String> = cases.iter().map(|(_, family, repo)| format!("{family}:{repo}")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_reference_script("server_dht_prefix.py", &args, "");
    let python: Vec<String> = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    let ours: Vec<String> = cases.iter().map(|(family, _, repo)| dht_prefix_for_repo(*family, repo)).collect();
    assert_eq!(ours, python);
}
