"""Calls TransformerConnectionHandler.rpc_info on the server argv[2] (joined through argv[1]) with
hivemind's P2P stub, as a Petals client does, for each uid in argv[3:] (an empty string asks the
server-wide info), and prints one JSON line with what each reply decodes to, or its error.
Used by kwaai-core/tests/server_rpc_info_python.rs."""
import asyncio
import json
import sys

import hivemind
from hivemind import MSGPackSerializer, PeerID
from hivemind.proto import runtime_pb2
from petals.server.handler import TransformerConnectionHandler


def describe(descr):
    return {"size": list(descr.size), "dtype": str(descr.dtype), "compression": int(descr.compression)}


async def call(p2p, peer_id, uid):
    stub = TransformerConnectionHandler.get_stub(p2p, peer_id)
    try:
        response = await stub.rpc_info(runtime_pb2.ExpertUID(uid=uid))
    except Exception as e:
        return {"error": repr(e)}
    info = MSGPackSerializer.loads(response.serialized_info)
    result = {k: info[k] for k in ("version", "dht_client_mode", "cache_tokens_available")}
    result["keys"] = sorted(info)
    if "forward_schema" in info:
        args, kwargs = info["forward_schema"]
        result["forward_args"] = [describe(d) for d in args]
        result["forward_kwargs"] = dict(kwargs)
        result["outputs"] = [describe(d) for d in info["outputs_schema"]]
        result["keyword_names"] = list(info["keyword_names"])
        inference_args, _ = info["inference_schema"]
        result["inference_args"] = [describe(d) for d in inference_args]
    return result


def main():
    initial_peer, peer_id, uids = sys.argv[1], PeerID.from_base58(sys.argv[2]), sys.argv[3:]
    dht = hivemind.DHT(initial_peers=[initial_peer], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        replies = asyncio.run(run_all(dht, peer_id, uids))
        print(json.dumps(replies), flush=True)
    finally:
        dht.shutdown()


async def run_all(dht, peer_id, uids):
    p2p = await dht.replicate_p2p()
    return [await call(p2p, peer_id, uid) for uid in uids]


if __name__ == "__main__":
    main()
