"""Torch tensors in and out, run by the reference venv's python (torch is not a kwaai dependency; the
abi3 module loads in any CPython >= 3.8)."""
import json

from conftest import run_reference

SCRIPT = """
import json, sys, torch
import kwaai
model = kwaai.AutoDistributedModelForCausalLM.from_pretrained(sys.argv[1], initial_peers=sys.argv[2:], max_retries=3)
ids = model.tokenizer("Torch in, torch out", return_tensors="pt")["input_ids"]
out = model.generate(ids, max_new_tokens=6, min_new_tokens=6)
hidden = model.embed(ids)
with model.inference_session(max_length=ids.shape[1]) as session:
    stepped = session.step(hidden)
logits = model.logits(stepped[:, -1:])
print(json.dumps(dict(
    out_type=type(out).__name__, out_dtype=str(out.dtype), out_shape=list(out.shape), out=out.tolist(),
    as_list=model.generate(ids[0].tolist(), max_new_tokens=6, min_new_tokens=6),
    hidden_type=type(stepped).__name__, hidden_shape=list(stepped.shape),
    first_token=int(logits[0, -1].argmax()))))
model.shutdown()
"""


def test_torch_tensors_in_and_out(tiny_model, swarm_servers):
    bootstrap, _ = swarm_servers
    result = json.loads(run_reference(["-c", SCRIPT, str(tiny_model), *bootstrap]).splitlines()[-1])
    assert result["out_type"] == "Tensor" and result["out_dtype"] == "torch.int64"
    assert result["out"] == [result["as_list"]]
    prompt_length = result["out_shape"][1] - 6
    assert result["hidden_type"] == "Tensor" and result["hidden_shape"] == [1, prompt_length, 64]
    assert result["first_token"] == result["as_list"][prompt_length]
