"""A Python Petals swarm for block selection: runs swarm.py (argv[1]) in the work directory argv[2]
for the model in argv[3] with DHT prefix argv[4] and Petals servers on the spans in argv[5:]
("a:b"), then adds records of
servers that exist only in the DHT, each with its own state, throughput and span (a JOINING one
counts, an OFFLINE one does not), stored as Petals' declare_active_modules stores them.

Prints one JSON line when ready: {"initial_peers": [...], "num_blocks": N}. Then, for each line
{"num_blocks": n} on stdin, prints the blocks a Petals server of n blocks would choose
(petals.server.block_selection.choose_best_blocks over get_remote_module_infos, after clamping n
to the model's blocks as petals.server.Server does) and the per-block throughputs behind the
choice. Closing stdin stops the swarm. Used by kwaai-core/tests/server_selection_python.rs."""
import hashlib
import json
import signal
import subprocess
import sys

from hivemind import DHT, PeerID, get_dht_time
from petals.data_structures import ServerInfo, ServerState
from petals.server.block_selection import choose_best_blocks, compute_throughputs
from petals.utils.dht import compute_spans, get_remote_module_infos

# (name, state, throughput, first block, end block)
DHT_ONLY_SERVERS = [
    ("online-3-5", ServerState.ONLINE, 2.5, 3, 5),
    ("joining-4-6", ServerState.JOINING, 0.75, 4, 6),
    ("offline-0-6", ServerState.OFFLINE, 100.0, 0, 6),
]


def fake_peer_id(name: str) -> PeerID:
    return PeerID(b"\x12\x20" + hashlib.sha256(name.encode()).digest())


def main():
    swarm_script, workdir, model_dir, prefix, *spans = sys.argv[1:]
    swarm = subprocess.Popen(
        [sys.executable, swarm_script, model_dir, "--workdir", workdir, "--dht-prefix", prefix, "--servers", *spans],
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
        num_blocks = ready["num_blocks"]
        uids = [f"{prefix}.{i}" for i in range(num_blocks)]
        dht = DHT(initial_peers=ready["initial_peers"], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
        expiration = get_dht_time() + 600
        for name, state, throughput, start, end in DHT_ONLY_SERVERS:
            info = ServerInfo(state=state, throughput=throughput, start_block=start, end_block=end)
            peer = fake_peer_id(name).to_base58()
            for uid in uids[start:end]:
                assert dht.store(uid, subkey=peer, value=info.to_tuple(), expiration_time=expiration), uid
        print(json.dumps({"initial_peers": ready["initial_peers"], "num_blocks": num_blocks}), flush=True)

        for request in sys.stdin:
            n = min(json.loads(request)["num_blocks"], num_blocks)
            infos = get_remote_module_infos(dht, uids, latest=True)
            spans = compute_spans(infos, min_state=ServerState.JOINING)
            throughputs = compute_throughputs(spans, total_blocks=len(infos))
            blocks = choose_best_blocks(n, infos)
            print(json.dumps({"blocks": blocks, "throughputs": throughputs.tolist()}), flush=True)
    finally:
        if dht is not None:
            dht.shutdown()
        swarm.send_signal(signal.SIGTERM)
        try:
            swarm.wait(60)
        except subprocess.TimeoutExpired:
            swarm.kill()
            swarm.wait()


if __name__ == "__main__":
    main()
