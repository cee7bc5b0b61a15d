"""A set of Python hivemind.DHT nodes driven by JSON commands, one per stdin line, each answered
with one JSON line on stdout. Used by kwaai-core/tests/dht_python_swarm.rs.

Commands:
  {"op": "spawn", "initial_peers": [maddr, ...]}                  -> {"index": i, "maddrs": [...]}
  {"op": "store", "node": i, "key": k, "value": v, "expiration": t, "subkey": s?} -> {"ok": bool}
  {"op": "owner_marker"} -> {"marker": "[owner:ssh-rsa ...]"}  (with --rsa)
  {"op": "get", "node": i, "key": k, "latest": bool}
      -> {"found": false} | {"found": true, "value": v, "expiration": t}
       | {"found": true, "dictionary": {subkey: [v, t]}, "expiration": t}
With --rsa every node validates records with hivemind's RSASignatureValidator (one key for the
whole process, as hivemind uses). Exits (shutting every node down) when stdin closes.
"""
import json
import sys

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils.timed_storage import ValueWithExpiration


def main():
    validators = [RSASignatureValidator()] if "--rsa" in sys.argv else []
    nodes = []
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request["op"]
            if op == "spawn":
                dht = hivemind.DHT(
                    initial_peers=request.get("initial_peers") or None,
                    host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                    record_validators=validators,
                    start=True,
                )
                nodes.append(dht)
                reply = {"index": len(nodes) - 1, "maddrs": [str(m) for m in dht.get_visible_maddrs()]}
            elif op == "store":
                dht = nodes[request["node"]]
                ok = dht.store(
                    request["key"], request["value"], request["expiration"], subkey=request.get("subkey")
                )
                reply = {"ok": bool(ok)}
            elif op == "owner_marker":
                reply = {"marker": validators[0].local_public_key.decode()}
            elif op == "get":
                found = nodes[request["node"]].get(request["key"], latest=request.get("latest", False))
                if found is None:
                    reply = {"found": False}
                elif isinstance(found.value, dict):
                    entries = {str(k): [v.value, v.expiration_time] for k, v in found.value.items()}
                    reply = {"found": True, "dictionary": entries, "expiration": found.expiration_time}
                else:
                    assert isinstance(found, ValueWithExpiration)
                    reply = {"found": True, "value": found.value, "expiration": found.expiration_time}
            else:
                reply = {"error": f"unknown op {op}"}
            print(json.dumps(reply), flush=True)
    finally:
        for dht in nodes:
            dht.shutdown()


if __name__ == "__main__":
    main()
