"""Calls experts served by a kwaai node through hivemind's own client.

Reads one JSON object on stdin: {"maddr": the kwaai node's multiaddr (with /p2p/), "experts":
{uid: safetensors path of its ffn weights}, "hidden": width, "grid": grid size, "scores": one
score list per grid dimension, "beam": beam size}. Joins the DHT through the kwaai node, finds the
experts with hivemind's get_experts and MoEBeamSearcher, runs forward and backward through
RemoteExpert for a small batch (unary calls) and a large one (streamed calls), and the same
computation locally in torch. Prints one JSON line: the uids found, the beam search result, the
rpc_info schema it read, the raw rpc_info bytes next to those hivemind's own ffn expert would
send, and per expert and batch the largest output and gradient differences.
Used by kwaai-core/tests/moe_remote_python.rs."""
import faulthandler
import gc
import json
import sys

import hivemind
import torch
from hivemind.moe.client.beam_search import MoEBeamSearcher
from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker
from hivemind.moe.server.dht_handler import get_experts
from hivemind.moe.server.layers.common import FeedforwardBlock
from hivemind.proto import runtime_pb2
from hivemind.utils import MSGPackSerializer
from hivemind.utils.tensor_descr import DUMMY_BATCH_SIZE, BatchTensorDescriptor
from safetensors.torch import load_file


def describe(descriptor):
    return {"shape": list(descriptor.shape), "dtype": str(descriptor.dtype), "compression": int(descriptor.compression)}


def hivemind_ffn_info(hidden):
    """The rpc_info bytes a hivemind.moe.Server sends for an ffn expert (ModuleBackend.get_info)."""
    sample = torch.empty(DUMMY_BATCH_SIZE, hidden)
    args_schema = (BatchTensorDescriptor.from_tensor(sample),)
    outputs_schema = BatchTensorDescriptor.from_tensor(FeedforwardBlock(hidden)(sample))
    info = dict(forward_schema=(args_schema, {}), outputs_schema=outputs_schema, keyword_names=())
    return MSGPackSerializer.dumps(info)


def main():
    gc.disable()
    faulthandler.enable()
    request = json.loads(sys.stdin.read())
    torch.manual_seed(0)
    dht = hivemind.DHT(initial_peers=[request["maddr"]], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        uids = sorted(request["experts"])
        experts = get_experts(dht, uids)
        found = [e.uid if e is not None else None for e in experts]
        searcher = MoEBeamSearcher(dht, "ffn.", request["grid"], negative_caching=False)
        best = [e.uid for e in searcher.find_best_experts(request["scores"], beam_size=request["beam"])]
        results = {"found": found, "beam_search": best, "cases": []}
        first = next(e for e in experts if e is not None)
        raw = RemoteExpertWorker.run_coroutine(first.stub.rpc_info(runtime_pb2.ExpertUID(uid=first.uid)))
        results["info_hex"] = raw.serialized_info.hex()
        results["hivemind_info_hex"] = hivemind_ffn_info(request["hidden"]).hex()
        info = first.info
        args, kwargs = info["forward_schema"]
        results["schema"] = {
            "args": [describe(a) for a in args],
            "kwargs": sorted(kwargs),
            "outputs": describe(info["outputs_schema"]),
            "keyword_names": list(info["keyword_names"]),
        }
        for uid, expert in zip(uids, experts):
            if expert is None:
                continue
            local = FeedforwardBlock(request["hidden"])
            local.load_state_dict(load_file(request["experts"][uid]))
            for batch in (3, 9000):  # 9000 rows cross MAX_UNARY_PAYLOAD_SIZE: streamed calls
                x = torch.randn(batch, request["hidden"])
                grad = torch.randn(batch, request["hidden"])
                remote_x = x.clone().requires_grad_(True)
                remote_y = expert(remote_x)
                (remote_y * grad).sum().backward()
                local_x = x.clone().requires_grad_(True)
                local_y = local(local_x)
                (local_y * grad).sum().backward()
                results["cases"].append(
                    {
                        "uid": uid,
                        "batch": batch,
                        "shape": list(remote_y.shape),
                        "output_diff": (remote_y - local_y).abs().max().item(),
                        "grad_diff": (remote_x.grad - local_x.grad).abs().max().item(),
                        "grad_norm": local_x.grad.norm().item(),
                    }
                )
    finally:
        dht.shutdown()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
