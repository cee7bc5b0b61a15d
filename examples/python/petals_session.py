"""Generation through a swarm, then a chat-style inference session, written in the style of Petals'
README. It runs under Petals as it is, and under kwaai with one change: `from kwaai import ...`.

Usage: python petals_session.py MODEL_DIR DHT_PREFIX INITIAL_PEER [INITIAL_PEER ...]
"""
import sys

import torch
from transformers import AutoTokenizer

from petals import AutoDistributedModelForCausalLM

model_name, dht_prefix, initial_peers = sys.argv[1], sys.argv[2], sys.argv[3:]

# Connect to a distributed network hosting model layers
tokenizer = AutoTokenizer.from_pretrained(model_name)
model = AutoDistributedModelForCausalLM.from_pretrained(
    model_name, initial_peers=initial_peers, dht_prefix=dht_prefix, torch_dtype=torch.float32
)

# Run the model as if it were on your computer
inputs = tokenizer("A cat sat", return_tensors="pt")["input_ids"]
outputs = model.generate(inputs, max_new_tokens=5)
print(tokenizer.decode(outputs[0]))

# Keep the servers' attention caches between calls: each turn sends only its new tokens
with model.inference_session(max_length=128) as sess:
    for turn in ["Human: Hi!\nAI:", "\nHuman: Tell me more.\nAI:"]:
        prefix = tokenizer(turn, return_tensors="pt", add_special_tokens=False)["input_ids"]
        outputs = model.generate(prefix, max_new_tokens=8, min_new_tokens=8, session=sess, do_sample=False)
        print(repr(tokenizer.decode(outputs[0])))
    # Continue the last turn without new input
    outputs = model.generate(None, max_new_tokens=4, min_new_tokens=4, session=sess)
    print(outputs.tolist(), sess.position)
