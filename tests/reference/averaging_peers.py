"""hivemind.DecentralizedAverager peers on 127.0.0.1 for kwaai's averaging interop tests.

Reads one JSON config line from stdin:
  {"initial_peers": [MADDR], "prefix": P, "target_group_size": N, "min_group_size": N,
   "min_matchmaking_time": S, "request_timeout": S, "part_size_bytes": B,
   "compression": "NONE" | "FLOAT16" | "UNIFORM_8BIT", "next_chunk_timeout": S | null,
   "allreduce_timeout": S | null (optional),
   "initial_group_bits": BITS, "state_sharing_priority": [P, ...] (optional),
   "averagers": [[{"shape": [...], "values": [...]}, ...], ...]}   (float32 tensors per averager)
starts one hivemind.DHT (joined to the initial peers and to the DHTs started before it) and one DecentralizedAverager per entry of
"averagers", and prints {"peer_ids": [B58, ...], "maddrs": [[MADDR, ...], ...]}. Then answers one JSON command per line:
  {"op": "step", "weights": [W, ...], "timeout": S, "kill": I (optional: terminate averager I
   as soon as its all-reduce begins)}
      -> {"ok": true, "results": [{"gathered": {B58: VALUE}, "tensors": [[...], ...], "group_bits": BITS}
                                  | {"error": TEXT}]}
  {"op": "load_state", "averager": I, "timeout": S}
      -> {"ok": true, "state": {"metadata": VALUE, "tensors": [[...], ...]} | null}
Exits (shutting every averager and DHT down) when stdin closes.
"""
import asyncio
import faulthandler
import gc
import json
import os
import signal
import sys
import time

# p2pd dials the stream-handler socket by a path that this venv's multiaddr makes relative:
# running from "/" makes that path right (see ../shared/reference/bench/_common.py).
os.chdir("/")
gc.disable()
faulthandler.enable()
faulthandler.register(signal.SIGUSR1, all_threads=True)

import torch  # noqa: E402
import hivemind  # noqa: E402
from hivemind.averaging.allreduce import AllReduceRunner  # noqa: E402
from hivemind.averaging.control import AveragingStage  # noqa: E402
from hivemind.averaging.partition import TensorPartReducer  # noqa: E402
from hivemind.compression import Float16Compression, NoCompression, Uniform8BitQuantization  # noqa: E402



def report_incomplete_rounds():
    """Prints (to stderr) the state of an all-reduce that ends unfinished, to tell which peer held
    it up; hivemind's own warnings give only percentages. Behaviour is unchanged."""
    finalize_runner, finalize_reducer = AllReduceRunner.finalize, TensorPartReducer.finalize

    def runner_finalize(self, *, cancel=False, exception=None):
        if (cancel or exception is not None) and not self._future.done():
            senders = [p.to_base58()[-6:] for p in self.sender_peer_ids]
            print(
                f"all-reduce of {self.peer_id.to_base58()[-6:]} ended by {exception!r} (cancel={cancel}): "
                f"senders {senders}, active {sorted(p.to_base58()[-6:] for p in self.active_senders)}, "
                f"banned {sorted(p.to_base58()[-6:] for p in self.banned_senders)}",
                file=sys.stderr,
                flush=True,
            )
        finalize_runner(self, cancel=cancel, exception=exception)

    def reducer_finalize(self):
        if not self.finished.is_set() and sum(self.num_parts_received) != self.num_parts * self.num_senders:
            print(
                f"reducer at part {self.current_part_index} of {self.num_parts}: received per sender "
                f"{self.num_parts_received}, failed after {self.sender_failed_after}, current part from "
                f"{self.current_part_accumulated_from} of {self.num_current_senders} senders, its future "
                f"{'cancelled' if self.current_part_future.cancelled() else 'pending'}",
                file=sys.stderr,
                flush=True,
            )
        finalize_reducer(self)

    AllReduceRunner.finalize, TensorPartReducer.finalize = runner_finalize, reducer_finalize


report_incomplete_rounds()


def keep_parts_alive_when_a_sender_vanishes():
    """hivemind 1.1.10's TensorPartReducer hands every sender's handler the same `current_part_future`
    and each handler awaits it bare. When a sender vanishes, hivemind's P2P cancels that sender's
    handler task (`_handle_stream` cancels `processing_task`), and cancelling a task cancels the future
    it awaits: the part in progress is cancelled for every other sender too, so the round stalls until
    `allreduce_timeout` and the survivors report an error (pure Python groups included). Running each
    `accumulate_part` shielded leaves the shared future alone; nothing else changes. The peer-loss tests
    need this to be deterministic: without it they pass or fail depending on whether the lost peer's
    handler happened to be waiting on a part when it went away."""
    accumulate = TensorPartReducer.accumulate_part

    async def accumulate_shielded(self, *args, **kwargs):
        return await asyncio.shield(accumulate(self, *args, **kwargs))

    TensorPartReducer.accumulate_part = accumulate_shielded


keep_parts_alive_when_a_sender_vanishes()

CODECS = {"NONE": NoCompression, "FLOAT16": Float16Compression, "UNIFORM_8BIT": Uniform8BitQuantization}


def start(config):
    dhts, averagers = [], []
    initial_peers = list(config["initial_peers"])
    for tensors in config["averagers"]:
        # Each DHT also dials the ones started before it: p2pd finds peers only through peers
        # it is connected to.
        dht = hivemind.DHT(initial_peers=initial_peers, host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
        dhts.append(dht)
        initial_peers += [str(m) for m in dht.get_visible_maddrs()]
        averaged = [torch.tensor(t["values"], dtype=torch.float32).reshape(t["shape"]) for t in tensors]
        averagers.append(
            hivemind.DecentralizedAverager(
                averaged,
                dht,
                start=True,
                prefix=config["prefix"],
                target_group_size=config["target_group_size"],
                min_group_size=config["min_group_size"],
                min_matchmaking_time=config["min_matchmaking_time"],
                request_timeout=config["request_timeout"],
                part_size_bytes=config["part_size_bytes"],
                compression=CODECS[config["compression"]](),
                next_chunk_timeout=config.get("next_chunk_timeout"),
                allreduce_timeout=config.get("allreduce_timeout"),
                initial_group_bits=config.get("initial_group_bits", ""),
            )
        )
    for averager, priority in zip(averagers, config.get("state_sharing_priority", [])):
        averager.state_sharing_priority = priority
    if config.get("state_sharing_priority"):
        time.sleep(1.0)  # the new priorities are declared in the background
    return dhts, averagers


def step_all(averagers, weights, timeout, kill=None):
    """Steps every averager at once; with `kill`, terminates that averager's process as soon
    as its all-reduce begins."""
    controls = [
        averager.step(gather=i, weight=weights[i], timeout=timeout, wait=False) for i, averager in enumerate(averagers)
    ]
    if kill is not None:
        deadline = time.monotonic() + timeout
        while controls[kill].stage != AveragingStage.RUNNING_ALLREDUCE and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.02)
        averagers[kill].terminate()
    results = []
    for i, (averager, control) in enumerate(zip(averagers, controls)):
        if i == kill:
            results.append({"error": "killed"})
            continue
        try:
            gathered = control.result()
            if gathered is None:
                results.append({"error": "step returned None"})
                continue
            with averager.get_tensors() as tensors:
                values = [t.flatten().tolist() for t in tensors]
            results.append(
                {
                    "gathered": {p.to_base58(): v for p, v in gathered.items()},
                    "tensors": values,
                    "group_bits": averager.get_group_bits(),
                }
            )
        except Exception as e:  # reported to the test, which asserts on it
            results.append({"error": f"{type(e).__name__}: {e}"})
    return results


def main():
    config = json.loads(sys.stdin.readline())
    dhts, averagers = start(config)
    try:
        peer_ids = [dht.peer_id.to_base58() for dht in dhts]
        maddrs = [[str(m) for m in dht.get_visible_maddrs()] for dht in dhts]
        print(json.dumps({"peer_ids": peer_ids, "maddrs": maddrs}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "step":
                results = step_all(averagers, command["weights"], command["timeout"], command.get("kill"))
                print(json.dumps({"ok": True, "results": results}), flush=True)
            elif command["op"] == "load_state":
                state = averagers[command["averager"]].load_state_from_peers(timeout=command["timeout"])
                if state is None:
                    print(json.dumps({"ok": True, "state": None}), flush=True)
                else:
                    metadata, tensors = state
                    values = [t.flatten().tolist() for t in tensors]
                    print(json.dumps({"ok": True, "state": {"metadata": metadata, "tensors": values}}), flush=True)
            else:
                print(json.dumps({"ok": False, "error": f"unknown op {command['op']}"}), flush=True)
    finally:
        for averager in averagers:
            if averager.is_alive():
                averager.shutdown()
        for dht in dhts:
            dht.shutdown()


if __name__ == "__main__":
    main()
