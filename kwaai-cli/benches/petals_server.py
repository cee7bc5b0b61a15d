"""Petals client tokens/s through a kwaai server against through a Python Petals server, same run.

Usage (the reference venv's python; a release kwaainet):
    cargo build --release -p kwaai-cli
    ~/.cache/kwaai/reference-venv/bin/python kwaai-cli/benches/petals_server.py target/release/kwaainet \
        [--layers 8] [--hidden 1024] [--tokens 32] [--runs 3] [--dtype float32]

Both servers hold every block of the same random Llama-shaped model (make_tiny_model.py) in --dtype; the
same unmodified Petals 2.2 client generates --tokens tokens greedily through each, --runs times after one
warm-up, and the median tokens/s and first-token latency are reported. The servers run one at a time, so
they never share the 2 cores. Last stdout line: one JSON object.
"""
import argparse
import gc
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from petals import AutoDistributedModelForCausalLM  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("KWAAI_SHARED", os.path.join(HERE, "../../../shared"))


def log(*msg):
    print("[bench]", *msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(model_dir, initial_peers, prefix, tokens, runs):
    """Median tokens/s and first-token seconds of `runs` greedy generations (after one warm-up)."""
    # Petals 2.2's client sessions finalised by the cyclic GC on hivemind's event-loop thread can
    # deadlock it (see ../shared/reference/generate_check.py): collect only here, between runs.
    gc.disable()
    model = AutoDistributedModelForCausalLM.from_pretrained(
        model_dir, initial_peers=initial_peers, dht_prefix=prefix, torch_dtype=torch.float32
    )
    prompt = torch.tensor([[1, 70, 80, 90, 100, 110, 120, 130]])
    speeds, firsts = [], []
    for run in range(runs + 1):
        with model.inference_session(max_length=prompt.shape[1] + tokens) as session:
            start = time.perf_counter()
            model.generate(prompt, max_new_tokens=1, session=session)
            first = time.perf_counter() - start
            model.generate(None, max_new_tokens=tokens - 1, session=session)
            total = time.perf_counter() - start
        gc.collect()
        if run > 0:
            speeds.append(tokens / total)
            firsts.append(first)
        log(f"run {run}: {tokens / total:.1f} tokens/s, first token {first * 1e3:.0f} ms")
    return statistics.median(speeds), statistics.median(firsts)


def wait_for_line(proc, prefix, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the process exited before printing {prefix!r}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise RuntimeError(f"no {prefix!r} within {timeout}s")


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kwaainet")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args()

    work = tempfile.mkdtemp(prefix="kwaai-bench-server-")
    model_dir = os.path.join(work, "bench-llama")
    prefix = re.sub(r"[. ]", "-", os.path.basename(model_dir))
    subprocess.run([sys.executable, os.path.join(SHARED, "reference/make_tiny_model.py"), model_dir, "--family", "llama",
                    "--layers", str(a.layers), "--hidden", str(a.hidden), "--dtype", a.dtype], check=True)
    result = {"model": {"layers": a.layers, "hidden": a.hidden, "dtype": a.dtype}, "tokens": a.tokens}

    # The Python Petals server (and its bootstrap node).
    swarm = subprocess.Popen(
        [sys.executable, os.path.join(SHARED, "reference/swarm.py"), model_dir, "--servers", f"0:{a.layers}",
         "--torch-dtype", a.dtype, "--dht-prefix", prefix, "--workdir", os.path.join(work, "swarm")],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        ready = json.loads(swarm.stdout.readline())
        speed, first = measure(model_dir, ready["initial_peers"], prefix, a.tokens, a.runs)
        result["python_server"] = {"tokens_per_s": speed, "first_token_s": first}
    finally:
        stop(swarm)

    # The kwaai server: its own node is the client's initial peer.
    home = os.path.join(work, "kwaainet-home")
    server = subprocess.Popen(
        [a.kwaainet, "start", "--model", model_dir, "--block-indices", f"0:{a.layers}", "--dht-prefix", prefix,
         "--throughput", "1", "--torch-dtype", a.dtype, "--host-maddrs", f"/ip4/127.0.0.1/tcp/{free_port()}"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "KWAAINET_HOME": home, "RUST_LOG": "warn"},
    )
    try:
        addr = wait_for_line(server, "listening on: ", 600)
        speed, first = measure(model_dir, [addr], prefix, a.tokens, a.runs)
        result["kwaai_server"] = {"tokens_per_s": speed, "first_token_s": first}
    finally:
        stop(server)

    result["ratio_tokens_per_s"] = result["kwaai_server"]["tokens_per_s"] / result["python_server"]["tokens_per_s"]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
