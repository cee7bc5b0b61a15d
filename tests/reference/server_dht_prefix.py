"""Prints, as one JSON line, the DHT prefix Petals' config classes derive for each "family:repo"
in argv[1:], without downloading anything: the transformers base loader is replaced by one that
returns the arguments it got. Used by kwaai-core/tests/server_dht_prefix_python.rs."""
import json
import sys
import types

import transformers
from petals.models.bloom.config import DistributedBloomConfig
from petals.models.falcon.config import DistributedFalconConfig
from petals.models.llama.config import DistributedLlamaConfig

CLASSES = {"llama": DistributedLlamaConfig, "bloom": DistributedBloomConfig, "falcon": DistributedFalconConfig}


def fake_from_pretrained(cls, name, *args, dht_prefix=None, **kwargs):
    return types.SimpleNamespace(dht_prefix=dht_prefix, pad_token_id=0)


def main():
    transformers.PretrainedConfig.from_pretrained = classmethod(fake_from_pretrained)
    prefixes = []
    for item in sys.argv[1:]:
        family, repo = item.split(":", 1)
        prefixes.append(CLASSES[family].from_pretrained(repo).dht_prefix)
    print(json.dumps(prefixes), flush=True)


if __name__ == "__main__":
    main()
