#!/usr/bin/env python3
"""transformers' local greedy continuation, the reference for the client tests.

Usage: client_greedy.py MODEL_DIR PROMPT N
Prints {"prompt_ids": [...], "tokens": [...], "eos_token_id": ...}: exactly N new tokens
(min_new_tokens=N keeps EOS from ending it early), computed in float32.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main():
    model_dir, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id)
    print(json.dumps(dict(prompt_ids=ids[0].tolist(), tokens=out[0, ids.shape[1]:].tolist(),
                          eos_token_id=model.generation_config.eos_token_id)))


if __name__ == "__main__":
    main()
