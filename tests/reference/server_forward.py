"""Sends forward passes through blocks of the server argv[2] (joined through argv[1]) with Petals'
own client code (rpc_info, then run_remote_forward with the metadata a Petals client sends). For
each range "S:E" or "S:E:stream" in argv[5:] (stream: forced through rpc_forward_stream with
inputs split into 256-byte parts), the chain is blocks S..E-1 of prefix argv[4], the input is
transformers' hidden states after block S of the model in argv[3], and the output is compared with
those after block E. Prints one JSON line: a list with shape, dtype and errors for each range.
Used by kwaai-core/tests/server_forward_python.rs."""
import asyncio
import json
import sys

import hivemind
import torch
from hivemind import MSGPackSerializer, PeerID
from hivemind.proto import runtime_pb2
from petals.client.config import ClientConfig
import petals.client.remote_forward_backward as remote_fb
from petals.client.remote_forward_backward import run_remote_forward
from petals.server.handler import TransformerConnectionHandler
from petals.utils.misc import DUMMY
from petals.utils.packaging import pack_args_kwargs
from transformers import AutoModelForCausalLM


async def forward(p2p, peer_id, uids, hidden):
    stub = TransformerConnectionHandler.get_stub(p2p, peer_id)
    info = await stub.rpc_info(runtime_pb2.ExpertUID(uid=uids.split(" ")[0]))
    rpc_info = MSGPackSerializer.loads(info.serialized_info)
    flat_tensors, args_structure = pack_args_kwargs(hidden, DUMMY)
    metadata = {"args_structure": args_structure}
    (output,) = await run_remote_forward(
        uids, stub, rpc_info, *flat_tensors, config=ClientConfig(), metadata=MSGPackSerializer.dumps(metadata)
    )
    return output


STREAM_CALLS = []
_forward_stream = remote_fb._forward_stream


async def counting_forward_stream(*args, **kwargs):
    STREAM_CALLS.append(1)
    return await _forward_stream(*args, **kwargs)


async def run(dht, peer_id, prefix, ranges, states):
    remote_fb._forward_stream = counting_forward_stream
    p2p = await dht.replicate_p2p()
    results = []
    unary_limit, part_size = remote_fb.MAX_UNARY_PAYLOAD_SIZE, remote_fb.DEFAULT_MAX_MSG_SIZE
    for start, end, stream in ranges:
        remote_fb.MAX_UNARY_PAYLOAD_SIZE, remote_fb.DEFAULT_MAX_MSG_SIZE = (0, 256) if stream else (unary_limit, part_size)
        uids = " ".join(f"{prefix}.{i}" for i in range(start, end))
        hidden, expected = states[start], states[end]
        STREAM_CALLS.clear()
        try:
            output = await forward(p2p, peer_id, uids, hidden)
        except Exception as e:
            results.append({"error": repr(e)})
            continue
        results.append(
            {
                "shape": list(output.shape),
                "dtype": str(output.dtype),
                "max_abs_err": float((output - expected).abs().max()),
                "ref_scale": float(expected.abs().max()),
                "input_moved": float((output - hidden).abs().max()),
                "streamed": bool(STREAM_CALLS),
            }
        )
    return results


def main():
    initial_peer, peer_id, model_dir, prefix = sys.argv[1:5]
    ranges = [(int(r.split(":")[0]), int(r.split(":")[1]), r.endswith(":stream")) for r in sys.argv[5:]]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    input_ids = torch.randint(4, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        states = model(input_ids, output_hidden_states=True).hidden_states
    dht = hivemind.DHT(initial_peers=[initial_peer], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        results = asyncio.run(run(dht, PeerID.from_base58(peer_id), prefix, ranges, states))
    finally:
        dht.shutdown()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
