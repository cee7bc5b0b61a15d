//! The DHT prefix Petals derives from a model's Hugging Face repository name
//! (petals/models/{llama,bloom,falcon}/config.py `from_pretrained`).

use crate::model::Family;

/// The module UID (and DHT key) of one block: `"{dht_prefix}.{block}"`.
pub fn block_uid(dht_prefix: &str, block: u32) -> String {
    format!("{dht_prefix}.{block}")
}

/// The DHT prefix a Petals 2.2 server uses for the repository `repo` (e.g.
/// `meta-llama/Llama-2-70b-hf`) when no prefix is given. Petals derives none for a local
/// directory; such servers need an explicit prefix.
pub fn dht_prefix_for_repo(family: Family, repo: &str) -> String {
    let name = || repo.rsplit('/').next().unwrap_or(repo).replace('.', "-");
    match family {
        Family::Llama => {
            let prefix = name();
            if prefix.ends_with("-hf") {
                prefix
            } else {
                prefix + "-hf"
            }
        }
        // Kept whole, owner included, for compatibility with Petals < 1.2.
        Family::Bloom => format!("{repo}-petals").replace('.', "-"),
        Family::Falcon => name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_follow_petals_per_family() {
        assert_eq!(dht_prefix_for_repo(Family::Llama, "meta-llama/Llama-2-70b-hf"), "Llama-2-70b-hf");
        assert_eq!(dht_prefix_for_repo(Family::Llama, "huggyllama/llama-7b"), "llama-7b-hf");
        assert_eq!(dht_prefix_for_repo(Family::Llama, "petals-team/StableBeluga2"), "StableBeluga2-hf");
        assert_eq!(dht_prefix_for_repo(Family::Llama, "x/TinyLlama-1.1B"), "TinyLlama-1-1B-hf");
        assert_eq!(dht_prefix_for_repo(Family::Bloom, "bigscience/bloom"), "bigscience/bloom-petals");
        assert_eq!(dht_prefix_for_repo(Family::Bloom, "bigscience/bloomz-7b1"), "bigscience/bloomz-7b1-petals");
        assert_eq!(dht_prefix_for_repo(Family::Bloom, "x/bloom-1.1"), "x/bloom-1-1-petals");
        assert_eq!(dht_prefix_for_repo(Family::Falcon, "tiiuae/falcon-180B"), "falcon-180B");
        assert_eq!(dht_prefix_for_repo(Family::Falcon, "falcon-40b"), "falcon-40b");
    }
}
