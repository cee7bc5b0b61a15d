"""Runs a Petals client's RemoteSequential over blocks 0..argv[4] of the model in argv[2] (prefix
argv[3]), with argv[1] as the only initial peer, so the client finds the servers through the DHT,
fetches rpc_info and calls rpc_forward as it does in fine-tuning. Prints one JSON line comparing
the output with transformers' hidden states after block argv[4].
Used by kwaai-core/tests/server_forward_python.rs."""
import json
import sys

import torch
from petals import AutoDistributedConfig
from petals.client.remote_sequential import RemoteSequential
from transformers import AutoModelForCausalLM


def main():
    initial_peer, model_dir, prefix, end_block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    input_ids = torch.randint(4, model.config.vocab_size, (1, 5))
    with torch.no_grad():
        states = model(input_ids, output_hidden_states=True).hidden_states
    hidden, expected = states[0], states[end_block]

    config = AutoDistributedConfig.from_pretrained(
        model_dir, initial_peers=[initial_peer], dht_prefix=prefix, max_retries=1, daemon_startup_timeout=30
    )
    remote = RemoteSequential(config, end_block=end_block)
    try:
        with torch.no_grad():
            output = remote(hidden)
    finally:
        remote.sequence_manager.shutdown()
    print(
        json.dumps(
            {
                "shape": list(output.shape),
                "max_abs_err": float((output - expected).abs().max()),
                "ref_scale": float(expected.abs().max()),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
