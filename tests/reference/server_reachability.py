"""Petals' reachability check against a kwaai node, with Petals' own ReachabilityProtocol.

Usage: server_reachability.py KWAAI_MADDR KWAAI_PEER_ID
Starts a hivemind P2P listening on 127.0.0.1 (reachable, serving rpc_check for itself) that joins
through the kwaai node, then asks the kwaai node, as a joining Petals server does, whether it can
reach: the Python peer itself,
the kwaai node, and a peer ID that nobody holds. Prints one JSON line:
  {"python": bool|null, "kwaai": bool|null, "nobody": bool|null}
"""
import asyncio
import json
import os
import sys

# p2pd dials the stream-handler socket by a path that this venv's multiaddr makes relative:
# running it from "/" makes that path right (see ../shared/reference/bench/_common.py).
os.chdir("/")

from hivemind.p2p import P2P, PeerID  # noqa: E402
from petals.server.reachability import ReachabilityProtocol  # noqa: E402


async def main():
    maddr, kwaai_id = sys.argv[1], PeerID.from_base58(sys.argv[2])
    p2p = await P2P.create(initial_peers=[maddr], host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False)
    nobody = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False)
    nobody_id = nobody.peer_id
    await nobody.shutdown()
    try:
        protocol = ReachabilityProtocol(probe=p2p)
        # As check_direct_reachability does: the peer under test serves rpc_check for itself.
        async with protocol.serve(p2p):
            result = {
                "python": await protocol.call_check(remote_peer=kwaai_id, check_peer=p2p.peer_id),
                "kwaai": await protocol.call_check(remote_peer=kwaai_id, check_peer=kwaai_id),
                "nobody": await protocol.call_check(remote_peer=kwaai_id, check_peer=nobody_id),
            }
        print(json.dumps(result), flush=True)
    finally:
        await p2p.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
