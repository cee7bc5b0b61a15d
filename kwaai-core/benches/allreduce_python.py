"""The Python side of kwaai's all-reduce benchmark: a group of hivemind DecentralizedAveragers (each
with its own DHT and p2pd) on 127.0.0.1 averages one float32 tensor per peer, round after round.

Usage: allreduce_python.py --params N --peers P --rounds R [--min-matchmaking-time S]
Prints one JSON line: {"seconds_per_round": [...], "max_error": E}, where a round counts from the
moment every peer calls step() until every peer has the average, and max_error is the largest
difference, over a sample of coordinates, between a peer's result and the exact mean.
"""
import argparse
import faulthandler
import gc
import json
import os
import time

# p2pd dials the stream-handler socket by a path that this venv's multiaddr makes relative:
# running from "/" makes that path right (see ../shared/reference/bench/_common.py).
os.chdir("/")
gc.disable()
faulthandler.enable()

import torch  # noqa: E402
import hivemind  # noqa: E402

SAMPLE = 4096


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--params", type=int, required=True)
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-matchmaking-time", type=float, default=5.0)
    a = p.parse_args()

    dhts, averagers, initial_peers = [], [], []
    for i in range(a.peers):
        dht = hivemind.DHT(initial_peers=initial_peers, host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
        dhts.append(dht)
        initial_peers += [str(m) for m in dht.get_visible_maddrs()]
        tensor = torch.randn(a.params, generator=torch.Generator().manual_seed(i))
        averagers.append(hivemind.DecentralizedAverager(
            [tensor], dht, start=True, prefix="allreduce_bench", target_group_size=a.peers,
            min_group_size=a.peers, min_matchmaking_time=a.min_matchmaking_time, request_timeout=3.0,
        ))
    index = torch.randint(0, a.params, (SAMPLE,), generator=torch.Generator().manual_seed(99))
    times, max_error = [], 0.0
    for _ in range(a.rounds):
        expected = torch.stack([av._averaged_tensors[0][index] for av in averagers]).mean(0)
        start = time.perf_counter()
        controls = [av.step(wait=False, timeout=600) for av in averagers]
        groups = [c.result() for c in controls]
        times.append(time.perf_counter() - start)
        assert all(g is not None and len(g) == a.peers for g in groups), groups
        for av in averagers:
            with av.get_tensors() as tensors:
                max_error = max(max_error, float((tensors[0][index] - expected).abs().max()))
    print(json.dumps({"seconds_per_round": times, "max_error": max_error}), flush=True)
    for av in averagers:
        av.shutdown()
    for dht in dhts:
        dht.shutdown()


if __name__ == "__main__":
    main()
