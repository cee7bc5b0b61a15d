#!/usr/bin/env python3
"""Runs a loopback Petals swarm for the client tests, one swarm.py process per server so that a
test can kill any single server without taking the others down.

Usage: client_swarm.py SWARM_PY MODEL_DIR WORKDIR DHT_PREFIX SPAN [SPAN ...]   (SPAN = a:b)

Prints one JSON line once every server answers:
  {"initial_peers": [...], "dht_prefix": ..., "servers": [{"peer_id", "pid", "blocks"}, ...]}
Then reads JSON lines on stdin: {"kill": PEER_ID} kills that server's whole process group at once
(SIGKILL, no graceful shutdown) and answers {"killed": PEER_ID}. When stdin closes, it stops every
swarm.py (servers first, then the bootstrap node) and exits.
"""
import json
import os
import signal
import subprocess
import sys


def start_swarm(swarm_py, model_dir, workdir, prefix, args):
    cmd = [sys.executable, swarm_py, model_dir, "--workdir", workdir, "--dht-prefix", prefix, *args]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)


def ready_line(proc, what):
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"{what} exited before it was ready (code {proc.wait()})")
    return json.loads(line)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    swarm_py, model_dir, workdir, prefix, *spans = sys.argv[1:]
    procs = []
    try:
        boot = start_swarm(swarm_py, model_dir, os.path.join(workdir, "bootstrap"), prefix, ["--servers"])
        procs.append(boot)
        initial_peers = ready_line(boot, "the bootstrap swarm")["initial_peers"]
        swarms = []
        for i, span in enumerate(spans):
            args = ["--servers", span, "--initial-peers", *initial_peers]
            swarms.append(start_swarm(swarm_py, model_dir, os.path.join(workdir, f"server{i}"), prefix, args))
            procs.append(swarms[-1])
        servers = []
        for i, proc in enumerate(swarms):
            ready = ready_line(proc, f"server {spans[i]}")
            srv = ready["servers"][0]
            servers.append(dict(peer_id=srv["peer_id"], pid=srv["pid"], blocks=srv["blocks"], log=srv["log"]))
        print(json.dumps(dict(initial_peers=initial_peers, dht_prefix=prefix, servers=servers)), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if "kill" in command:
                srv = next(s for s in servers if s["peer_id"] == command["kill"])
                os.killpg(srv["pid"], signal.SIGKILL)
                print(json.dumps(dict(killed=srv["peer_id"])), flush=True)
    finally:
        for proc in reversed(procs):
            stop(proc)


if __name__ == "__main__":
    main()
