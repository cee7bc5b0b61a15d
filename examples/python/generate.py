"""Start a node, join a swarm, stream a generation.

Usage: python generate.py MODEL_DIR INITIAL_PEER  (a multiaddr ending in /p2p/<peer id> of a swarm serving
MODEL_DIR; examples/with_swarm.sh runs one on 127.0.0.1)
"""
import sys

import kwaai

model_dir, initial_peer = sys.argv[1:]
# The model starts its own node, which joins the swarm; embeddings and head load here, blocks are found there.
model = kwaai.AutoDistributedModelForCausalLM.from_pretrained(model_dir, initial_peers=[initial_peer])
print("the old river", end=" ", flush=True)
tokens = 0
for token in model.stream("the old river", max_new_tokens=12):
    print(token.text, end="", flush=True)
    tokens += 1
print(f"\n{tokens} tokens streamed")
model.shutdown()
sys.exit(0 if tokens else 1)
