"""Runs a hivemind.moe.Server with `ffn` experts on 127.0.0.1 for kwaai's MoE client.

Usage: moe_python_server.py UIDS HIDDEN SEED WEIGHTS_DIR [INITIAL_PEER...], UIDS comma-separated.
The experts start from torch.manual_seed(SEED) and have no optimizer (backward leaves them
unchanged); each one's state_dict is saved to WEIGHTS_DIR/<uid>.safetensors. Once the experts are
declared in the DHT it prints one JSON line {"peer_id", "maddrs", "weights": {uid: path}}. A
line "stop" on stdin shuts the server down (its DHT records stay until they expire) and prints
{"stopped": true}; closing stdin shuts it down and exits.
Used by kwaai-core/tests/moe_mixture_python.rs."""
import faulthandler
import gc
import json
import os
import sys

import torch
from hivemind.moe import Server
from hivemind.moe.server.dht_handler import declare_experts
from hivemind.utils import get_dht_time
from safetensors.torch import save_file


def main():
    gc.disable()
    faulthandler.enable()
    uids, hidden, seed, weights_dir = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.manual_seed(seed)
    server = Server.create(
        expert_uids=uids,
        expert_cls="ffn",
        hidden_dim=hidden,
        optim_cls=None,
        num_handlers=2,
        device="cpu",
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        initial_peers=sys.argv[5:],
        start=True,
    )
    running = True
    try:
        weights = {}
        for uid, backend in server.module_backends.items():
            path = os.path.join(weights_dir, f"{uid}.safetensors")
            save_file({k: v.contiguous() for k, v in backend.module.state_dict().items()}, path)
            weights[uid] = path
        declare_experts(server.dht, uids, get_dht_time() + 120)
        maddrs = [str(m) for m in server.dht.get_visible_maddrs()]
        print(json.dumps({"peer_id": server.dht.peer_id.to_base58(), "maddrs": maddrs, "weights": weights}), flush=True)
        for line in sys.stdin:
            if line.strip() == "stop" and running:
                server.shutdown()
                running = False
                print(json.dumps({"stopped": True}), flush=True)
    finally:
        if running:
            server.shutdown()


if __name__ == "__main__":
    main()
