"""A Petals client generates greedily, one token per step inside an inference session, through a
swarm where the server it starts with dies mid-generation; another server holds the same blocks.

Usage: server_failover.py MODEL_DIR INITIAL_PEER PREFIX [--tokens N] [--before-kill K]

After K steps it prints {"steps": K, "first_route": [peer ids]} and waits for a stdin line (the
caller kills that first server meanwhile), then finishes the N tokens and prints
{"local": [...], "remote": [...], "last_route": [...]} with transformers' tokens for comparison.

Petals 2.2's client cannot replay a session onto a new server after the first step (petals#587:
the replacement starts at position 0 with the whole history, and its "Broken input cache"
assertion fails), so the replacement is given the failed session's position, which makes it send
the history and continue. A failed server stays in the client's routes until its next refresh
of the swarm view (which drops banned servers), so that refresh runs every 2 s. Used by kwaai-core/tests/server_inference_python.rs.
"""
import argparse
import json
import math
import multiprocessing
import os
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its fork warning goes to stdout

import torch  # noqa: E402
from petals import AutoDistributedModelForCausalLM  # noqa: E402
from petals.client.inference_session import InferenceSession  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

_update_sequence = InferenceSession._update_sequence


def update_sequence_keeping_position(self, server_idx, block_idx, attempt_no):
    failed = self._server_sessions[server_idx] if server_idx < len(self._server_sessions) else None
    position = failed._position if failed is not None else 0
    _update_sequence(self, server_idx, block_idx, attempt_no)
    if failed is not None:
        self._server_sessions[server_idx]._position = position


InferenceSession._update_sequence = update_sequence_keeping_position


def known_servers(remote):
    """The servers the client's routing knows, by block."""
    info = remote.transformer.h.sequence_manager.state.sequence_info
    return [sorted(p.to_base58() for p in block.servers) for block in info.block_infos]


def wait_for_pings(remote, timeout=60.0):
    """Refreshes the client's view of the swarm until it has a finite round-trip time for every server of the
    first block: it routes an unpinged or unanswered server as 5 s away, and the test wants the route chosen by
    announced speed."""
    manager = remote.transformer.h.sequence_manager
    with manager._thread_start_lock:  # as make_sequence starts it
        if not manager.is_alive():
            manager._thread.start()
    deadline = time.monotonic() + timeout
    while True:
        manager.update(wait=True)  # fetches the servers and pings them
        first = set(manager.state.sequence_info.block_infos[0].servers)
        rtts = manager.ping_aggregator.to_dict()
        if first and all(math.isfinite(rtts.get(peer, math.inf)) for peer in first):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"no ping answer within {timeout} s: {rtts}")
        time.sleep(0.5)


def route(session):
    return [s.span.peer_id.to_base58() for s in session._server_sessions]


def run(a):
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    ids = tok("A server dies, the swarm goes on:", return_tensors="pt").input_ids
    n = a.tokens
    greedy = dict(do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)
    local = AutoModelForCausalLM.from_pretrained(a.model_dir, torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        local_tokens = local.generate(ids, max_new_tokens=n, min_new_tokens=n, **greedy)[0, ids.shape[1]:].tolist()

    remote = AutoDistributedModelForCausalLM.from_pretrained(
        a.model_dir, initial_peers=[a.initial_peer], dht_prefix=a.prefix, torch_dtype=torch.float32, max_retries=8,
        update_period=2)
    remote.eval()
    wait_for_pings(remote)
    tokens = []
    with torch.inference_mode(), remote.inference_session(max_length=ids.shape[1] + n) as session:
        inputs = ids
        for step in range(n):
            if step == a.before_kill:
                print(json.dumps(dict(steps=step, first_route=route(session), known=known_servers(remote))), flush=True)
                sys.stdin.readline()
            out = remote.generate(inputs, max_new_tokens=1, min_new_tokens=1, session=session, **greedy)
            tokens.append(int(out[0, -1]))
            inputs = None
        last_route = route(session)
    return dict(local=local_tokens, remote=tokens, last_route=last_route)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("initial_peer")
    p.add_argument("prefix")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--before-kill", type=int, default=8)
    a = p.parse_args()
    code = 0
    try:
        result = run(a)
    except Exception as e:
        traceback.print_exc()
        result, code = dict(error=repr(e)), 1
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    for child in multiprocessing.active_children():
        child.terminate()
        child.join(5)
    os._exit(code)


if __name__ == "__main__":
    main()
