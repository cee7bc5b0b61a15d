"""Starts one hivemind.P2P per identity file given, one after the other, and reports their peer IDs.

Usage: p2p_identity.py PATH [PATH ...]

hivemind creates a missing file itself (RSA-2048 in a libp2p PrivateKey protobuf); an existing one
is handed to p2pd as its key. Prints {"peer_ids": [B58, ...]} (in argument order) as one JSON
line, then exits when stdin closes.
"""
import asyncio
import json
import os
import sys

os.chdir("/")  # see p2p_peer.py

from hivemind.p2p import P2P  # noqa: E402


async def main():
    peer_ids = []
    for path in sys.argv[1:]:
        p2p = await P2P.create(identity_path=path, host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False)
        peer_ids.append(p2p.peer_id.to_base58())
        await p2p.shutdown()
    print(json.dumps({"peer_ids": peer_ids}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    asyncio.run(main())
