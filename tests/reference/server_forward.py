"""Sends a forward pass through blocks argv[4] (a space-joined uid chain) of the server argv[2]
(joined through argv[1]) with Petals' own client code (rpc_info, then run_remote_forward with the
metadata a Petals client sends), and compares the result with transformers' hidden states of the
model in argv[3] after block argv[5]. Prints one JSON line: shape, max abs error, reference scale.
Used by kwaai-core/tests/server_forward_python.rs."""
import asyncio
import json
import sys

import hivemind
import torch
from hivemind import MSGPackSerializer, PeerID
from hivemind.proto import runtime_pb2
from petals.client.config import ClientConfig
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
    try:
        (output,) = await run_remote_forward(
            uids, stub, rpc_info, *flat_tensors, config=ClientConfig(), metadata=MSGPackSerializer.dumps(metadata)
        )
    except Exception as e:
        return None, repr(e)
    return output, None


def main():
    initial_peer, peer_id, model_dir, uids, end_block = sys.argv[1:6]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    input_ids = torch.randint(4, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        states = model(input_ids, output_hidden_states=True).hidden_states
    hidden, expected = states[0], states[int(end_block)]
    dht = hivemind.DHT(initial_peers=[initial_peer], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        output, error = asyncio.run(run(dht, PeerID.from_base58(peer_id), uids, hidden))
    finally:
        dht.shutdown()
    if error is not None:
        print(json.dumps({"error": error}), flush=True)
        return
    print(
        json.dumps(
            {
                "shape": list(output.shape),
                "dtype": str(output.dtype),
                "max_abs_err": float((output - expected).abs().max()),
                "ref_scale": float(expected.abs().max()),
                "input_moved": float((output - hidden).abs().max()),
            }
        ),
        flush=True,
    )


async def run(dht, peer_id, uids, hidden):
    p2p = await dht.replicate_p2p()
    return await forward(p2p, peer_id, uids, hidden)


if __name__ == "__main__":
    main()
