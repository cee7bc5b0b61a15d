"""A hivemind.P2P peer (with its Go p2pd) for kwaai's RPC and peer-routing interop tests.

Usage: p2p_peer.py [--dht-client] [--quic] [INITIAL_PEER_MULTIADDR ...]
(--dht-client runs p2pd's Kademlia in client mode, as a hivemind DHT in client mode does; --quic
also listens on QUIC draft-29, /udp/0/quic: this venv's Python multiaddr cannot parse /quic-v1.)

Listens on 127.0.0.1 (TCP; p2pd offers Noise and TLS) and serves (ExpertRequest -> ExpertResponse, hivemind's runtime.proto):
  "Py.echo"   unary: metadata reversed; uid "fail" raises ValueError("python says no"); uid "whoami"
              returns the caller's peer ID bytes; uid "big:N" returns N bytes.
  "Py.stream" stream in, stream out: each request's metadata reversed; uid "fail" raises
              ValueError("python stream says no").
  "Py.source" one request in, stream out: uid "COUNT,SIZE" yields COUNT messages of SIZE bytes
              (message i is SIZE copies of byte i % 256).
Prints {"peer_id", "maddrs"} as one JSON line, then runs one command per stdin line (JSON) and
answers each with one JSON line:
  {"op": "unary", "peer": B58, "name": N, "uid": U, "metadata": HEX, ["timeout": SECONDS]}
      -> {"ok": true, "metadata": HEX} | {"ok": false, "type": EXC_CLASS, "error": TEXT}
  {"op": "stream", "peer": B58, "name": N, "requests": [{"uid": U, "metadata": HEX}, ...]}
      -> {"ok": true, "replies": [HEX, ...]} | {"ok": false, ...}
Exits when stdin closes.
"""
import asyncio
import json
import os
import sys

# p2pd dials the stream-handler socket by a path that this venv's multiaddr makes relative:
# running it from "/" makes that path right (see ../shared/reference/bench/_common.py).
os.chdir("/")

from hivemind.p2p import P2P, PeerID  # noqa: E402
from hivemind.proto.runtime_pb2 import ExpertRequest, ExpertResponse  # noqa: E402

CALL_TIMEOUT = 20


async def echo(request: ExpertRequest, context) -> ExpertResponse:
    if request.uid == "fail":
        raise ValueError("python says no")
    if request.uid == "whoami":
        return ExpertResponse(metadata=context.remote_id.to_bytes())
    if request.uid.startswith("big:"):
        return ExpertResponse(metadata=b"\x07" * int(request.uid[4:]))
    return ExpertResponse(metadata=request.metadata[::-1])


async def stream(requests, _context):
    async for request in requests:
        if request.uid == "fail":
            raise ValueError("python stream says no")
        yield ExpertResponse(metadata=request.metadata[::-1])


async def source(request: ExpertRequest, _context):
    count, size = map(int, request.uid.split(","))
    for i in range(count):
        yield ExpertResponse(metadata=bytes([i % 256]) * size)


async def run_command(p2p: P2P, command: dict) -> dict:
    peer = PeerID.from_base58(command["peer"])
    timeout = command.get("timeout", CALL_TIMEOUT)
    try:
        if command["op"] == "unary":
            request = ExpertRequest(uid=command["uid"], metadata=bytes.fromhex(command["metadata"]))
            reply = await asyncio.wait_for(
                p2p.call_protobuf_handler(peer, command["name"], request, ExpertResponse), timeout
            )
            return {"ok": True, "metadata": reply.metadata.hex()}

        async def requests():
            for r in command["requests"]:
                yield ExpertRequest(uid=r["uid"], metadata=bytes.fromhex(r["metadata"]))

        async def collect():
            replies = await p2p.iterate_protobuf_handler(peer, command["name"], requests(), ExpertResponse)
            return [reply.metadata.hex() async for reply in replies]

        return {"ok": True, "replies": await asyncio.wait_for(collect(), timeout)}
    except Exception as e:  # reported to the test, which asserts on it
        return {"ok": False, "type": type(e).__name__, "error": str(e)}


async def main():
    args = sys.argv[1:]
    dht_mode = "client" if "--dht-client" in args else "server"
    host_maddrs = ["/ip4/127.0.0.1/tcp/0"] + (["/ip4/127.0.0.1/udp/0/quic"] if "--quic" in args else [])
    initial_peers = [a for a in args if not a.startswith("--")]
    p2p = await P2P.create(
        initial_peers=initial_peers, host_maddrs=host_maddrs, nat_port_map=False, dht_mode=dht_mode
    )
    try:
        await p2p.add_protobuf_handler("Py.echo", echo, ExpertRequest)
        await p2p.add_protobuf_handler("Py.stream", stream, ExpertRequest, stream_input=True, stream_output=True)
        await p2p.add_protobuf_handler("Py.source", source, ExpertRequest, stream_output=True)
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
