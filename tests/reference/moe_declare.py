"""A hivemind.DHT peer for kwaai's expert-declaration interop test.

Usage: moe_declare.py INITIAL_PEER. Prints {"peer_id"} once joined, then answers one JSON command
per stdin line with one JSON line:
  {"op": "declare", "uids": [...], "expiration": T} -> {"ok": [store flags]} (hivemind's declare_experts)
  {"op": "get", "key": K} -> {"value": V} where a dictionary becomes {"dict": [[subkey, V], ...]},
      a tuple {"tuple": [...]}, anything else itself (null when absent)
  {"op": "get_experts", "uids": [...]} -> {"experts": [[uid, peer_b58] or null, ...]}
  {"op": "beam", "prefix": P, "grid": [...], "scores": [[...], ...], "beam": K} -> {"uids": [...]}
      (MoEBeamSearcher.find_best_experts)
Exits when stdin closes. Used by kwaai-core/tests/moe_declare_python.rs."""
import faulthandler
import gc
import json
import sys

import hivemind
from hivemind.moe.client.beam_search import MoEBeamSearcher
from hivemind.moe.server.dht_handler import declare_experts, get_experts


def plain(value):
    if isinstance(value, hivemind.utils.ValueWithExpiration):
        value = value.value
    if isinstance(value, dict):
        return {"dict": sorted([key, plain(item)] for key, item in value.items())}
    if isinstance(value, tuple):
        return {"tuple": [plain(item) for item in value]}
    return value


def main():
    gc.disable()
    faulthandler.enable()
    dht = hivemind.DHT(initial_peers=sys.argv[1:], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        print(json.dumps({"peer_id": dht.peer_id.to_base58()}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "declare":
                flags = declare_experts(dht, command["uids"], command["expiration"])
                reply = {"ok": list(flags.values()) if isinstance(flags, dict) else flags}
            elif op == "get":
                reply = {"value": plain(dht.get(command["key"], latest=True))}
            elif op == "get_experts":
                found = get_experts(dht, command["uids"])
                reply = {"experts": [[e.uid, e.peer_id.to_base58()] if e else None for e in found]}
            elif op == "beam":
                searcher = MoEBeamSearcher(dht, command["prefix"], command["grid"], negative_caching=False)
                best = searcher.find_best_experts(command["scores"], beam_size=command["beam"])
                reply = {"uids": [e.uid for e in best]}
            else:
                reply = {"error": f"unknown op {op}"}
            print(json.dumps(reply), flush=True)
    finally:
        dht.shutdown()


if __name__ == "__main__":
    main()
