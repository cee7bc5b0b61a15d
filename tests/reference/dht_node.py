"""Starts a hivemind.DHT on 127.0.0.1, prints {"peer_id", "maddrs"} as one JSON line, and runs
until its stdin closes. Used by kwaai-core/tests/reference_smoke.rs."""
import json
import sys

import hivemind


def main():
    dht = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        maddrs = [str(m) for m in dht.get_visible_maddrs()]
        print(json.dumps({"peer_id": dht.peer_id.to_base58(), "maddrs": maddrs}), flush=True)
        sys.stdin.read()  # until the test closes our stdin
    finally:
        dht.shutdown()


if __name__ == "__main__":
    main()
