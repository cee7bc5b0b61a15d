"""A hivemind.P2P peer (with its Go p2pd) that exchanges tensors with kwaai nodes.

Usage: tensor_exchange.py [INITIAL_PEER_MULTIADDR ...]

Serves "kwaai.TensorExchange.rpc_push" (ExpertRequest with uid = tensor name and the tensor
serialized by hivemind -> empty ExpertResponse) and "kwaai.TensorExchange.rpc_push_stream" (the
same request split by hivemind's split_for_streaming, one part per ExpertRequest, joined with
deserialize_tensor_stream), and keeps what it receives. A push whose metadata is
{"sparse": "topk", "shape": [...]} carries values and int64 indices, scattered into zeros here.
Prints {"peer_id", "maddrs"} as one JSON line, then answers one JSON command per stdin line:
  {"op": "received"}  -> {"ok": true, "tensors": [{"peer", "name", "dtype", "shape", "sha256",
                          "values" (only up to 4096 elements), "streamed"}, ...]}
  {"op": "push", "peer": B58, "name": N, "dtype": D, "shape": [...],
   "values": [...] | "pattern": true}
      -> {"ok": true, "streamed": bool} | {"ok": false, "type": EXC_CLASS, "error": TEXT}
"pattern" sends the float32 tensor whose bit patterns are 0, 1, 2, ... (shape's element count).
Serialized tensors over 2 MiB go through the stream in 4 MiB parts. Exits when stdin closes.
"""
import asyncio
import hashlib
import json
import os
import sys

# p2pd dials the stream-handler socket by a path that this venv's multiaddr makes relative:
# running it from "/" makes that path right (see ../shared/reference/bench/_common.py).
os.chdir("/")

import torch  # noqa: E402
from hivemind.compression import deserialize_tensor_stream, deserialize_torch_tensor  # noqa: E402
from hivemind.compression import serialize_torch_tensor  # noqa: E402
from hivemind.p2p import P2P, PeerID  # noqa: E402
from hivemind.proto.runtime_pb2 import ExpertRequest, ExpertResponse  # noqa: E402
from hivemind.utils.serializer import MSGPackSerializer  # noqa: E402
from hivemind.utils.streaming import split_for_streaming  # noqa: E402

NAME = "kwaai.TensorExchange.rpc_push"
STREAM_NAME = "kwaai.TensorExchange.rpc_push_stream"
STREAM_THRESHOLD = 2 << 20
CHUNK = 4 << 20
received = []


def densify(tensors, metadata: bytes):
    if not metadata:
        if len(tensors) != 1:
            raise ValueError(f"expected one tensor, got {len(tensors)}")
        return tensors[0]
    meta = MSGPackSerializer.loads(metadata)
    if meta.get("sparse") != "topk":
        raise ValueError(f"unknown push metadata {meta}")
    values, indices = tensors
    dense = torch.zeros(int(torch.tensor(meta["shape"]).prod()) if meta["shape"] else 1, dtype=values.dtype)
    dense[indices] = values
    return dense.reshape(meta["shape"])


def record(peer: PeerID, name: str, tensor: torch.Tensor, streamed: bool) -> None:
    entry = {
        "peer": peer.to_base58(),
        "name": name,
        "dtype": str(tensor.dtype).replace("torch.", ""),
        "shape": list(tensor.shape),
        "sha256": hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest(),
        "streamed": streamed,
    }
    if tensor.numel() <= 4096:
        entry["values"] = tensor.float().flatten().tolist()
    received.append(entry)


async def on_push(request: ExpertRequest, context) -> ExpertResponse:
    tensors = [deserialize_torch_tensor(t) for t in request.tensors]
    record(context.remote_id, request.uid, densify(tensors, request.metadata), False)
    return ExpertResponse()


async def on_push_stream(requests, context):
    first = {}

    async def parts():
        async for request in requests:
            if not first:
                first.update(uid=request.uid, metadata=request.metadata)
            elif request.uid != first["uid"]:
                raise ValueError("parts name different tensors")
            yield request.tensors

    tensors = await deserialize_tensor_stream(parts())
    record(context.remote_id, first["uid"], densify(tensors, first["metadata"]), True)
    yield ExpertResponse()


def make_tensor(command: dict) -> torch.Tensor:
    shape = command["shape"]
    if command.get("pattern"):
        numel = 1
        for d in shape:
            numel *= d
        return torch.arange(numel, dtype=torch.int32).view(torch.float32).reshape(shape)
    return torch.tensor(command["values"], dtype=getattr(torch, command["dtype"])).reshape(shape)


async def push(p2p: P2P, command: dict) -> dict:
    serialized = serialize_torch_tensor(make_tensor(command))
    peer = PeerID.from_base58(command["peer"])
    if len(serialized.buffer) <= STREAM_THRESHOLD:
        request = ExpertRequest(uid=command["name"], tensors=[serialized])
        await asyncio.wait_for(p2p.call_protobuf_handler(peer, NAME, request, ExpertResponse), 60)
        return {"ok": True, "streamed": False}

    async def requests():
        for part in split_for_streaming(serialized, CHUNK):
            yield ExpertRequest(uid=command["name"], tensors=[part])

    async def call():
        replies = await p2p.iterate_protobuf_handler(peer, STREAM_NAME, requests(), ExpertResponse)
        return [reply async for reply in replies]

    replies = await asyncio.wait_for(call(), 120)
    if len(replies) != 1:
        raise ValueError(f"expected one reply, got {len(replies)}")
    return {"ok": True, "streamed": True}


async def run_command(p2p: P2P, command: dict) -> dict:
    if command["op"] == "received":
        return {"ok": True, "tensors": received}
    try:
        return await push(p2p, command)
    except Exception as e:  # reported to the test, which asserts on it
        return {"ok": False, "type": type(e).__name__, "error": str(e)}


async def main():
    p2p = await P2P.create(initial_peers=sys.argv[1:], host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False)
    try:
        await p2p.add_protobuf_handler(NAME, on_push, ExpertRequest)
        await p2p.add_protobuf_handler(
            STREAM_NAME, on_push_stream, ExpertRequest, stream_input=True, stream_output=True
        )
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
