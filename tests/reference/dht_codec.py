"""hivemind's side of the DHT codec checks (kwaai-core/tests/dht_codec_python.rs).

stdin: JSON {"seed": int, "count": int, "rust_packed": [hex, ...], "dictionaries": [hex, ...]}
stdout: JSON {
  "python_values": [{"packed": hex, "dhtid": hex}, ...],  # random values packed by MSGPackSerializer
  "rust_repacked": [hex, ...],                               # our bytes, loaded and dumped again by Python
  "rust_dhtids": [hex, ...],                                 # DHTID.generate of our values
  "dictionaries": [hex, ...],                                # our dictionary values, loaded and dumped again
  "python_dictionary": {"packed": hex, "subkeys": [...]}     # a DictionaryDHTValue built here
}
"""
import json
import random
import sys
import time

from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DictionaryDHTValue
from hivemind.utils.serializer import MSGPackSerializer


def random_value(rng, depth=0):
    kinds = ["int", "negint", "bigint", "float", "str", "bytes", "none", "bool"]
    if depth < 3:
        kinds += ["list", "tuple", "dict"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1])
    if kind == "negint":
        return rng.choice([-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)])
    if kind == "bigint":
        return rng.randrange(-(2**63), 2**64)
    if kind == "float":
        return rng.choice([0.0, -1.5, 1e300, float("inf"), rng.random() * 1e6])
    if kind == "str":
        return "".join(rng.choice("abcdefghé漢字 ") for _ in range(rng.choice([0, 1, 31, 32, 300])))
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 255, 256, 70000])))
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    n = rng.choice([0, 1, 2, 15, 16, 20])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(n)]
    if kind == "tuple":
        return tuple(random_value(rng, depth + 1) for _ in range(n))
    return {f"k{i}": random_value(rng, depth + 1) for i in range(n)}


def main():
    request = json.load(sys.stdin)
    rng = random.Random(request["seed"])
    python_values = []
    for _ in range(request["count"]):
        value = random_value(rng)
        python_values.append(
            {"packed": MSGPackSerializer.dumps(value).hex(), "dhtid": DHTID.generate(value).to_bytes().hex()}
        )
    ours = [MSGPackSerializer.loads(bytes.fromhex(h)) for h in request["rust_packed"]]
    now = time.time()
    dictionary = DictionaryDHTValue()
    subkeys = []
    for i in range(5):
        subkey = rng.choice([f"peer{i}", i, (i, "x")])
        subkeys.append(MSGPackSerializer.dumps(subkey).hex())
        dictionary.store(subkey, MSGPackSerializer.dumps(["value", i]), now + 100 + i)
    result = {
        "python_values": python_values,
        "rust_repacked": [MSGPackSerializer.dumps(v).hex() for v in ours],
        "rust_dhtids": [DHTID.generate(v).to_bytes().hex() for v in ours],
        "dictionaries": [
            MSGPackSerializer.dumps(MSGPackSerializer.loads(bytes.fromhex(h))).hex() for h in request["dictionaries"]
        ],
        "python_dictionary": {"packed": MSGPackSerializer.dumps(dictionary).hex(), "subkeys": subkeys},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
