"""A Petals client generates through a swarm and compares with transformers run locally.

Usage: server_generate.py MODEL_DIR INITIAL_PEER[,INITIAL_PEER...] PREFIX [--tokens N] [--no-push] [--beams K]

Three greedy runs through the swarm (the model in float32), each compared by the caller with the
local tokens printed alongside:
  generate  AutoDistributedModelForCausalLM.generate() with min_new_tokens = max_new_tokens = N;
  session   the same N tokens one generate() call at a time inside model.inference_session();
  beam      beam search (K beams, N // 4 tokens), which sends hypo_ids to the servers.
--no-push sets the client's use_server_to_server=False. Prints one JSON line; exits at once after it
(a Petals session left open must not block the exit). Used by kwaai-core/tests/server_inference_python.rs.
"""
import argparse
import json
import multiprocessing
import os
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its fork warning goes to stdout

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from petals import AutoDistributedModelForCausalLM  # noqa: E402


def run(a):
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    ids = tok("A small swarm on loopback says:", return_tensors="pt").input_ids
    n = a.tokens
    greedy = dict(do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)
    beam = dict(do_sample=False, num_beams=a.beams, max_new_tokens=n // 4, min_new_tokens=n // 4,
                pad_token_id=tok.pad_token_id)

    local = AutoModelForCausalLM.from_pretrained(a.model_dir, torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        local_tokens = local.generate(ids, max_new_tokens=n, min_new_tokens=n, **greedy)[0, ids.shape[1]:].tolist()
        local_beam = local.generate(ids, **beam)[0, ids.shape[1]:].tolist()

    remote = AutoDistributedModelForCausalLM.from_pretrained(
        a.model_dir, initial_peers=a.initial_peer.split(","), dht_prefix=a.prefix, torch_dtype=torch.float32,
        use_server_to_server=not a.no_push, max_retries=2)
    remote.eval()
    with torch.inference_mode():
        generated = remote.generate(ids, max_new_tokens=n, min_new_tokens=n, **greedy)[0, ids.shape[1]:].tolist()
        stepped = []
        with remote.inference_session(max_length=ids.shape[1] + n) as session:
            inputs = ids
            for _ in range(n):
                out = remote.generate(inputs, max_new_tokens=1, min_new_tokens=1, session=session, **greedy)
                stepped.append(int(out[0, -1]))
                inputs = None
            position = session.position
        remote_beam = remote.generate(ids, **beam)[0, ids.shape[1]:].tolist()
    return dict(local=local_tokens, generate=generated, session=stepped, session_position=position,
                prompt_len=ids.shape[1], local_beam=local_beam, beam=remote_beam)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("initial_peer")
    p.add_argument("prefix")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--beams", type=int, default=2)
    p.add_argument("--no-push", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    code = 0
    try:
        result = run(a)
    except Exception as e:
        traceback.print_exc()
        result, code = dict(error=repr(e)), 1
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    # Stop hivemind's DHT process (and its p2pd) without running Petals' finalizers.
    for child in multiprocessing.active_children():
        child.terminate()
        child.join(5)
    os._exit(code)


if __name__ == "__main__":
    main()
