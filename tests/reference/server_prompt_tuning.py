"""One deep prompt-tuning step of a Petals client through the swarm joined at argv[1] (model in
argv[2], DHT prefix argv[3]) against the same step computed locally with transformers.

For each mode in argv[4:] ("unary" or "stream": the latter forces rpc_forward_stream and
rpc_backward_stream with 256-byte parts), the client's AutoDistributedModelForCausalLM with
tuning_mode="deep_ptune" runs a forward pass on embeddings that require grad, then
loss.backward(): the server's rpc_backward returns the gradients of the span inputs and of the deep
prompts, from which the client's autograd gets the gradients of the prompt embeddings, the
intermediate prompt embeddings and the input embeddings. The local reference adds each layer's
prompt to the first positions of its input with forward pre-hooks on transformers' decoder layers.
Prints one JSON line: a list with, per mode, the loss, each gradient's max abs error against its
reference scale (the deep prompts' also layer by layer), and how many unary and streamed backward
calls the client made.
Used by kwaai-core/tests/server_backward_python.rs."""
import faulthandler
import gc
import json
import sys

# A crash prints every thread's stack. Petals 2.2's client objects finalised by the cyclic GC on
# hivemind's event-loop thread can deadlock or crash it (see ../shared/reference/generate_check.py):
# the cyclic GC stays off in this short-lived script.
faulthandler.enable()
gc.disable()

import torch  # noqa: E402
import petals.client.remote_forward_backward as remote_fb  # noqa: E402
from petals import AutoDistributedModelForCausalLM  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

PRE_SEQ_LEN = 3
CALLS = {"unary": 0, "stream": 0}


def counting(name, original):
    async def wrapper(*args, **kwargs):
        CALLS[name] += 1
        return await original(*args, **kwargs)

    return wrapper


remote_fb._backward_unary = counting("unary", remote_fb._backward_unary)
remote_fb._backward_stream = counting("stream", remote_fb._backward_stream)


def local_step(model, prompts, deep_prompts, embeds, labels):
    """The loss of the deep-prompted model, computed in one process; returns it and its grads."""
    prompts = prompts.detach().clone().requires_grad_(True)
    deep_prompts = deep_prompts.detach().clone().requires_grad_(True)
    embeds = embeds.detach().clone().requires_grad_(True)
    batch = embeds.shape[0]
    layer_prompts = deep_prompts.view(PRE_SEQ_LEN, model.config.num_hidden_layers, -1).permute(1, 0, 2)

    def hook_for(i):
        def add_prompt(_module, args):
            hidden = args[0]
            head = hidden[:, :PRE_SEQ_LEN] + layer_prompts[i].unsqueeze(0)
            return (torch.cat([head, hidden[:, PRE_SEQ_LEN:]], dim=1),) + tuple(args[1:])

        return add_prompt

    handles = [layer.register_forward_pre_hook(hook_for(i)) for i, layer in enumerate(model.model.layers)]
    try:
        inputs = torch.cat([prompts.unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)
        hidden = model.model(inputs_embeds=inputs).last_hidden_state[:, PRE_SEQ_LEN:]
        logits = model.lm_head(hidden)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
    finally:
        for handle in handles:
            handle.remove()
    loss.backward()
    return loss.item(), prompts.grad, deep_prompts.grad, embeds.grad


def compare(got, expected):
    return {"max_abs_err": float((got - expected).abs().max()), "ref_scale": float(expected.abs().max())}


def main():
    initial_peer, model_dir, prefix = sys.argv[1:4]
    modes = sys.argv[4:]
    torch.manual_seed(0)
    local = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    local.requires_grad_(False)
    remote = AutoDistributedModelForCausalLM.from_pretrained(
        model_dir,
        initial_peers=[initial_peer],
        dht_prefix=prefix,
        torch_dtype=torch.float32,
        tuning_mode="deep_ptune",
        pre_seq_len=PRE_SEQ_LEN,
        max_retries=1,
        daemon_startup_timeout=30,
    )
    hidden_size = local.config.hidden_size
    with torch.no_grad():
        remote.transformer.prompt_embeddings.weight.normal_(0, 0.5)
        remote.transformer.intermediate_prompt_embeddings.weight.normal_(0, 0.5)
    prompts = remote.transformer.prompt_embeddings.weight
    deep_prompts = remote.transformer.intermediate_prompt_embeddings.weight
    assert deep_prompts.shape == (PRE_SEQ_LEN, local.config.num_hidden_layers * hidden_size)

    input_ids = torch.randint(4, local.config.vocab_size, (2, 6))
    base_embeds = local.model.embed_tokens(input_ids)
    expected = local_step(local, prompts, deep_prompts, base_embeds, input_ids)

    unary_limit, part_size = remote_fb.MAX_UNARY_PAYLOAD_SIZE, remote_fb.DEFAULT_MAX_MSG_SIZE
    results = []
    try:
        for mode in modes:
            stream = mode == "stream"
            remote_fb.MAX_UNARY_PAYLOAD_SIZE, remote_fb.DEFAULT_MAX_MSG_SIZE = (
                (0, 256) if stream else (unary_limit, part_size)
            )
            CALLS.update(unary=0, stream=0)
            remote.zero_grad(set_to_none=True)
            embeds = base_embeds.detach().clone().requires_grad_(True)
            loss = remote(inputs_embeds=embeds, labels=input_ids).loss
            loss.backward()
            results.append(
                {
                    "mode": mode,
                    "loss": loss.item(),
                    "expected_loss": expected[0],
                    "prompts": compare(prompts.grad, expected[1]),
                    "deep_prompts": compare(deep_prompts.grad, expected[2]),
                    "deep_prompts_per_layer": [
                        compare(got, want)
                        for got, want in zip(
                            deep_prompts.grad.view(PRE_SEQ_LEN, -1, hidden_size).unbind(1),
                            expected[2].view(PRE_SEQ_LEN, -1, hidden_size).unbind(1),
                        )
                    ],
                    "inputs": compare(embeds.grad, expected[3]),
                    "unary_calls": CALLS["unary"],
                    "stream_calls": CALLS["stream"],
                }
            )
    finally:
        remote.transformer.h.sequence_manager.shutdown()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
