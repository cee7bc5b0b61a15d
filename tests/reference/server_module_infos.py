"""Joins the swarm through argv[1] with a hivemind.DHT on 127.0.0.1 and prints, as one JSON line,
what petals.utils.dht.get_remote_module_infos sees for blocks 0..argv[3] of prefix argv[2], and the
spans compute_spans builds from it, and the `_petals.models` registry. Used by kwaai-core/tests/server_announce_python.rs."""
import dataclasses
import json
import sys

import hivemind
from petals.data_structures import ModelInfo, ServerState
from petals.utils.dht import compute_spans, get_remote_module_infos


def main():
    initial_peer, prefix, num_blocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dht = hivemind.DHT(initial_peers=[initial_peer], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        uids = [f"{prefix}.{i}" for i in range(num_blocks)]
        infos = get_remote_module_infos(dht, uids, latest=True)
        blocks = []
        for info in infos:
            servers = {}
            for peer_id, server_info in info.servers.items():
                fields = dataclasses.asdict(server_info)
                fields["state"] = server_info.state.name
                fields["adapters"] = list(server_info.adapters)
                servers[peer_id.to_base58()] = fields
            blocks.append({"uid": info.uid, "servers": servers})
        spans = {
            peer_id.to_base58(): [span.start, span.end]
            for peer_id, span in compute_spans(infos, min_state=ServerState.ONLINE).items()
        }
        registry = dht.get("_petals.models", latest=True)
        models = {} if registry is None else {k: ModelInfo.from_dict(v.value).to_dict() for k, v in registry.value.items()}
        print(json.dumps({"blocks": blocks, "online_spans": spans, "models": models}), flush=True)
    finally:
        dht.shutdown()


if __name__ == "__main__":
    main()
