"""A set of Python hivemind.DHT nodes driven by JSON commands, one per stdin line, each answered
with one JSON line on stdout. Used by kwaai-core/tests/dht_python_swarm.rs.

Commands:
  {"op": "spawn", "initial_peers": [maddr, ...]}     -> {"index": i, "peer_id": id, "maddrs": [...]}
  {"op": "store", "node": i, "key": k, "value": v, "expiration": t, "subkey": s?} -> {"ok": bool}
      ("value_hex" and "subkey_hex" instead of "value" and "subkey": msgpack bytes, for values
      that JSON cannot carry)
  {"op": "owner_marker"} -> {"marker": "[owner:ssh-rsa ...]"}  (with --rsa)
  {"op": "get", "node": i, "key": k, "latest": bool}
      -> {"found": false} | {"found": true, "value": v, "expiration": t}
       | {"found": true, "dictionary": {subkey: [v, t]}, "expiration": t}
      (with "hex": true, "value_hex" and "dictionary_hex": {subkey_hex: [value_hex, t]} instead)
  {"op": "inspect", "node": i, "key": k}
      -> {"node_id": hex, "storage": [value_hex, t] | null, "cache": [value_hex, t] | null}
      (what that node holds itself, without searching; a dictionary shows as its msgpack ext)
  {"op": "store_local", "node": i, "key": k, "value": v, "expiration": t} -> {"ok": bool}
      (into that node's own storage only, as if a peer had sent it there)
With --rsa every node validates records with hivemind's RSASignatureValidator (one key for the
whole process, as hivemind uses); with --schema, with dht_schemas.merged_validators() (RSA and
two merged SchemaValidators). Exits (shutting every node down) when stdin closes.
"""
import functools
import json
import sys

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import ValueWithExpiration

from dht_schemas import merged_validators


async def inspect(key, _dht, node):
    key_id = DHTID.generate(key)

    def entry(found):
        if found is None:
            return None
        value = found.value if isinstance(found.value, bytes) else MSGPackSerializer.dumps(found.value)
        return [value.hex(), found.expiration_time]

    return {
        "node_id": node.node_id.to_bytes().hex(),
        "storage": entry(node.protocol.storage.get(key_id)),
        "cache": entry(node.protocol.cache.get(key_id)),
    }


async def store_local(key, value, expiration, _dht, node):
    return node.protocol.storage.store(DHTID.generate(key), node.protocol.serializer.dumps(value), expiration)


def unhex(text):
    return MSGPackSerializer.loads(bytes.fromhex(text))


def to_hex(value):
    return MSGPackSerializer.dumps(value).hex()


def main():
    validators = [RSASignatureValidator()] if "--rsa" in sys.argv else []
    if "--schema" in sys.argv:
        validators = merged_validators()
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
                maddrs = [str(m) for m in dht.get_visible_maddrs()]
                reply = {"index": len(nodes) - 1, "peer_id": dht.peer_id.to_base58(), "maddrs": maddrs}
            elif op == "store":
                dht = nodes[request["node"]]
                value = request["value"] if "value" in request else unhex(request["value_hex"])
                subkey = unhex(request["subkey_hex"]) if "subkey_hex" in request else request.get("subkey")
                ok = dht.store(request["key"], value, request["expiration"], subkey=subkey)
                reply = {"ok": bool(ok)}
            elif op == "inspect":
                reply = nodes[request["node"]].run_coroutine(functools.partial(inspect, request["key"]))
            elif op == "store_local":
                coroutine = functools.partial(store_local, request["key"], request["value"], request["expiration"])
                reply = {"ok": bool(nodes[request["node"]].run_coroutine(coroutine))}
            elif op == "owner_marker":
                reply = {"marker": validators[0].local_public_key.decode()}
            elif op == "get":
                found = nodes[request["node"]].get(request["key"], latest=request.get("latest", False))
                if found is None:
                    reply = {"found": False}
                elif request.get("hex") and isinstance(found.value, dict):
                    entries = {to_hex(k): [to_hex(v.value), v.expiration_time] for k, v in found.value.items()}
                    reply = {"found": True, "dictionary_hex": entries, "expiration": found.expiration_time}
                elif request.get("hex"):
                    reply = {"found": True, "value_hex": to_hex(found.value), "expiration": found.expiration_time}
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
