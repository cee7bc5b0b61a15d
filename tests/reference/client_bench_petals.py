#!/usr/bin/env python3
"""Petals' own client on a running swarm, timed as kwaai-core/benches/client.rs times ours.

Usage: client_bench_petals.py MODEL_DIR DHT_PREFIX PROMPT NEW_TOKENS RUNS INITIAL_PEER [...]
Prints {"first_token_s": [...], "tokens_per_s": [...], "tokens": [...]}: one figure per timed run
after one warm-up generation. first_token_s is from the generate() call to the first new token
(through a transformers streamer); tokens_per_s is NEW_TOKENS over the whole generate() call.
"""
import json
import multiprocessing
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from petals import AutoDistributedModelForCausalLM  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402


class FirstToken(BaseStreamer):
    """Notes when the first generated token arrives (the first put() carries the prompt)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self):
        pass


def main():
    model_dir, prefix, prompt, n, runs, *peers = sys.argv[1:]
    n, runs = int(n), int(runs)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    model = AutoDistributedModelForCausalLM.from_pretrained(
        model_dir, initial_peers=peers, dht_prefix=prefix, torch_dtype=torch.float32)
    kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)
    first, rates, tokens = [], [], None
    with torch.inference_mode():
        model.generate(ids, **kwargs)  # warm-up: routing, rpc_info, connections
        for _ in range(runs):
            streamer = FirstToken()
            start = time.perf_counter()
            out = model.generate(ids, streamer=streamer, **kwargs)
            total = time.perf_counter() - start
            first.append(streamer.first - start)
            rates.append(n / total)
            tokens = out[0, ids.shape[1]:].tolist()
    print(json.dumps(dict(first_token_s=first, tokens_per_s=rates, tokens=tokens)), flush=True)
    # Stop the DHT child process (and its p2pd) ourselves, then skip hivemind's interpreter-exit
    # finalizers, which can wait forever; a child left running would keep our stdout open.
    for child in multiprocessing.active_children():
        child.terminate()
        child.join(5)
    os._exit(0)


if __name__ == "__main__":
    main()
