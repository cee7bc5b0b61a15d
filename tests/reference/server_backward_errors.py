"""Sends the same bad rpc_backward requests, unary and streamed, to a Python Petals server and to
the kwaai server argv[5] (multiaddr with /p2p/), both serving blocks 0 and 1 of the model in
argv[3] under DHT prefix argv[4]. The Petals server runs in a swarm started with swarm.py
(argv[1]) in the work directory argv[2]. Prints one JSON line: a list of {case, stream, python,
kwaai} holding the error text each server's reply raised in the Petals client, with the peer id
replaced by "PEER". The swarm stops before the script exits.
Used by kwaai-core/tests/server_backward_python.rs."""
import asyncio
import json
import signal
import subprocess
import sys

import hivemind
import torch
from hivemind import MSGPackSerializer, PeerID, serialize_torch_tensor
from petals.client.config import ClientConfig
from petals.client.remote_forward_backward import _backward_stream, _backward_unary
from petals.server.handler import TransformerConnectionHandler


def cases(prefix, hidden_size):
    hidden = torch.randn(2, 4, hidden_size)
    served = f"{prefix}.0 {prefix}.1"
    no_prompts = torch.empty(0)
    return [
        ("unserved block", f"{prefix}.1 {prefix}.3", [hidden, hidden, no_prompts], {}),
        ("unknown adapter", served, [hidden, hidden, no_prompts], {"active_adapter": "lora"}),
        ("points not a number", served, [hidden, hidden, no_prompts], {"points": "many"}),
        ("too few tensors", served, [hidden, hidden], {}),
        ("prompts for 3 blocks", served, [hidden, hidden, torch.randn(3, 2, 2, hidden_size)], {}),
        ("prompts for 1 block", served, [hidden, hidden, torch.randn(1, 2, 2, hidden_size)], {}),
        ("grad_outputs shorter", served, [hidden, hidden[:, :3], no_prompts], {}),
    ]


async def error_text(stub, peer_id, uid, tensors, metadata, stream):
    call = _backward_stream if stream else _backward_unary
    serialized = [serialize_torch_tensor(t) for t in tensors]
    try:
        await call(uid, serialized, stub, ClientConfig(), metadata=MSGPackSerializer.dumps(metadata))
    except Exception as e:
        return str(e).replace(peer_id.to_base58(), "PEER")
    return None


async def run(dht, peers, prefix, hidden_size):
    p2p = await dht.replicate_p2p()
    stubs = {name: TransformerConnectionHandler.get_stub(p2p, peer) for name, peer in peers.items()}
    results = []
    for case, uid, tensors, metadata in cases(prefix, hidden_size):
        for stream in (False, True):
            result = {"case": case, "stream": stream}
            for name, stub in stubs.items():
                result[name] = await error_text(stub, peers[name], uid, tensors, metadata, stream)
            results.append(result)
    return results


def main():
    swarm_script, workdir, model_dir, prefix, kwaai_maddr = sys.argv[1:6]
    with open(f"{model_dir}/config.json") as f:
        hidden_size = json.load(f)["hidden_size"]
    torch.manual_seed(0)
    swarm = subprocess.Popen(
        [sys.executable, swarm_script, model_dir, "--workdir", workdir, "--dht-prefix", prefix, "--servers", "0:2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    dht = None
    try:
        line = swarm.stdout.readline()
        if not line:
            sys.exit(f"swarm.py exited with code {swarm.wait()} before it was ready")
        ready = json.loads(line)
        peers = {
            "python": PeerID.from_base58(ready["servers"][0]["peer_id"]),
            "kwaai": PeerID.from_base58(kwaai_maddr.rsplit("/p2p/", 1)[1]),
        }
        dht = hivemind.DHT(
            initial_peers=ready["initial_peers"] + [kwaai_maddr], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True
        )
        results = asyncio.run(run(dht, peers, prefix, hidden_size))
    finally:
        if dht is not None:
            dht.shutdown()
        swarm.send_signal(signal.SIGTERM)
        try:
            swarm.wait(60)
        except subprocess.TimeoutExpired:
            swarm.kill()
            swarm.wait()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
