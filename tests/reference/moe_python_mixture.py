"""Runs hivemind's RemoteMixtureOfExperts over experts served by kwaai nodes.

The first stdin line is JSON {"maddrs": the kwaai nodes' multiaddrs, "experts": {uid: safetensors
path of its ffn weights}, "hidden": width, "grid": grid size, "k_best": experts per sample}; the
script joins the DHT, builds the layer and prints {"ready": true}. Each later line
{"dead": [uids]} runs one forward and backward pass on a random batch and the same mixture locally
in torch (same gate, same beam search result, the experts in "dead" masked out as the layer must
have skipped them), and prints {"chosen", "output_diff", "grad_diff", "proj_grad_diff",
"grad_norm"}. Closing stdin exits. Used by kwaai-core/tests/moe_python_mixture.rs."""
import faulthandler
import gc
import json
import sys

import hivemind
import torch
from hivemind.moe import RemoteMixtureOfExperts
from hivemind.moe.server.layers.common import FeedforwardBlock
from safetensors.torch import load_file


def local_mixture(moe, experts, x, dead):
    """The layer's computation in plain torch, with the selection its beam search makes."""
    grid_scores = moe.proj(x).split_with_sizes(moe.beam_search.grid_size, dim=-1)
    chosen = moe.beam_search.batch_find_best_experts([s.detach().numpy() for s in grid_scores], moe.k_best)
    logits = moe.compute_expert_scores(grid_scores, chosen)
    rows = []
    for i, row_experts in enumerate(chosen):
        alive = [j for j, e in enumerate(row_experts) if e.uid not in dead]
        weights = torch.softmax(logits[i, alive], dim=0)
        outputs = torch.stack([experts[row_experts[j].uid](x[i : i + 1])[0] for j in alive])
        rows.append((weights[:, None] * outputs).sum(0))
    return torch.stack(rows), [[e.uid for e in row] for row in chosen]


def main():
    gc.disable()
    faulthandler.enable()
    config = json.loads(sys.stdin.readline())
    torch.manual_seed(0)
    dht = hivemind.DHT(initial_peers=config["maddrs"], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        experts = {}
        for uid, path in config["experts"].items():
            experts[uid] = FeedforwardBlock(config["hidden"])
            experts[uid].load_state_dict(load_file(path))
        moe = RemoteMixtureOfExperts(
            in_features=config["hidden"],
            grid_size=tuple(config["grid"]),
            dht=dht,
            uid_prefix="ffn.",
            k_best=config["k_best"],
            forward_timeout=60,
            backward_timeout=60,
            timeout_after_k_min=10,
        )
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            dead = set(json.loads(line)["dead"])
            x = torch.randn(4, config["hidden"])
            grad = torch.randn(4, config["hidden"])
            remote_x = x.clone().requires_grad_(True)
            moe.zero_grad()
            remote_out = moe(remote_x)
            (remote_out * grad).sum().backward()
            remote_out = remote_out.detach()
            remote_proj_grad = moe.proj.weight.grad.clone()
            moe.zero_grad()
            local_x = x.clone().requires_grad_(True)
            local_out, chosen = local_mixture(moe, experts, local_x, dead)
            (local_out * grad).sum().backward()
            result = {
                "chosen": chosen,
                "output_diff": (remote_out - local_out).abs().max().item(),
                "grad_diff": (remote_x.grad - local_x.grad).abs().max().item(),
                "proj_grad_diff": (remote_proj_grad - moe.proj.weight.grad).abs().max().item(),
                "grad_norm": local_x.grad.norm().item(),
            }
            print(json.dumps(result), flush=True)
    finally:
        dht.shutdown()


if __name__ == "__main__":
    main()
