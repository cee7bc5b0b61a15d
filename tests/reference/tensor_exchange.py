"""A hivemind.P2P peer (with its Go p2pd) that exchanges tensors with kwaai nodes.

Usage: tensor_exchange.py [INITIAL_PEER_MULTIADDR ...]

Serves "kwaai.TensorExchange.rpc_push" (ExpertRequest with uid = tensor name and one tensor
serialized by hivemind -> empty ExpertResponse) and keeps what it receives. Prints
{"peer_id", "maddrs"} as one JSON line, then answers one JSON command per stdin line:
  {"op": "received"}  -> {"ok": true, "tensors": [{"peer", "name", "dtype", "shape", "values"}, ...]}
  {"op": "push", "peer": B58, "name": N, "dtype": D, "values": [...], "shape": [...]}
      -> {"ok": true} | {"ok": false, "type": EXC_CLASS, "error": TEXT}
Exits when stdin closes.
"""
import asyncio
import json
import os
import sys

# p2pd dials the stream-handler socket by a path that this venv's multiaddr makes relative:
# running it from "/" makes that path right (see ../shared/reference/bench/_common.py).
os.chdir("/")

import torch  # noqa: E402
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor  # noqa: E402
from hivemind.p2p import P2P, PeerID  # noqa: E402
from hivemind.proto.runtime_pb2 import ExpertRequest, ExpertResponse  # noqa: E402

NAME = "kwaai.TensorExchange.rpc_push"
received = []


async def on_push(request: ExpertRequest, context) -> ExpertResponse:
    if len(request.tensors) != 1:
        raise ValueError(f"expected one tensor, got {len(request.tensors)}")
    tensor = deserialize_torch_tensor(request.tensors[0])
    received.append(
        {
            "peer": context.remote_id.to_base58(),
            "name": request.uid,
            "dtype": str(tensor.dtype).replace("torch.", ""),
            "shape": list(tensor.shape),
            "values": tensor.float().flatten().tolist(),
        }
    )
    return ExpertResponse()


async def run_command(p2p: P2P, command: dict) -> dict:
    if command["op"] == "received":
        return {"ok": True, "tensors": received}
    try:
        tensor = torch.tensor(command["values"], dtype=getattr(torch, command["dtype"])).reshape(command["shape"])
        request = ExpertRequest(uid=command["name"], tensors=[serialize_torch_tensor(tensor)])
        peer = PeerID.from_base58(command["peer"])
        await asyncio.wait_for(p2p.call_protobuf_handler(peer, NAME, request, ExpertResponse), 20)
        return {"ok": True}
    except Exception as e:  # reported to the test, which asserts on it
        return {"ok": False, "type": type(e).__name__, "error": str(e)}


async def main():
    p2p = await P2P.create(initial_peers=sys.argv[1:], host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False)
    try:
        await p2p.add_protobuf_handler(NAME, on_push, ExpertRequest)
        maddrs = [str(m) for m in await p2p.get_visible_maddrs()]
        print(json.dumps({"peer_id": p2p.peer_id.to_base58(), "maddrs": maddrs}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            print(json.dumps(await run_command(p2p, json.loads(line))), flush=True)
    finally:
        await p2p.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
