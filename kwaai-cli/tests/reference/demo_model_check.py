#!/usr/bin/env python3
"""Load kwaainet's demo model with transformers and print what the Rust side must match.

Usage: demo_model_check.py MODEL_DIR TEXT
Prints one JSON line: the token ids AutoTokenizer gives TEXT, their decoding, and the float32
logits of AutoModelForCausalLM for those ids (a list per position).
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main():
    model_dir, text = sys.argv[1], sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    ids = tokenizer(text).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    print(json.dumps({
        "class": type(model).__name__,
        "tokenizer_class": type(tokenizer).__name__,
        "ids": ids,
        "decoded": tokenizer.decode(ids, skip_special_tokens=True),
        "logits": logits.tolist(),
    }))


if __name__ == "__main__":
    main()
