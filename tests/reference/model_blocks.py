#!/usr/bin/env python3
"""Reference outputs for kwaai's model tests, computed with transformers on a model directory.

Usage: model_blocks.py MODEL_DIR OUT.safetensors [--start S] [--end E] [--batch B] [--seq T] [--prompt-len P]
                       [--generate N] [--seed 0] [--config-override JSON] [--make-tiny-model SCRIPT [ARGS...]]

--config-override merges a JSON object into MODEL_DIR/config.json before anything is loaded (e.g. rope_scaling).

With --make-tiny-model, MODEL_DIR is first written by SCRIPT (../shared/reference/make_tiny_model.py) with the
ARGS that follow, in this same process (one interpreter start instead of two).

Writes one safetensors file with:
  hidden_in (B, T, H), hidden_out: blocks [S, E) of the model run over hidden_in (full sequence, causal), in the
      checkpoint's dtype;
  with --prompt-len P > 0 (float32 only): prompts (E-S, B, P, H), added Petals-style to the first P positions
      before each block; grad_out (B, T, H); out_prompted; grad_hidden, grad_prompts: gradients of
      sum(out_prompted * grad_out);
  with --generate N: gen_input (1, L) token ids of a fixed prompt and gen_output (1, L + N), greedy generate().
"""
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def span_model(model, start, end):
    """The base model with only blocks [start, end) and no final norm / embedding norm: maps hidden -> hidden."""
    mt = model.config.model_type
    if mt in ("llama", "mixtral"):
        base = model.model
        base.layers = torch.nn.ModuleList(list(base.layers)[start:end])
        base.norm = torch.nn.Identity()
        return base, base.layers
    base = model.transformer
    base.h = torch.nn.ModuleList(list(base.h)[start:end])
    base.ln_f = torch.nn.Identity()
    if mt == "bloom":
        base.word_embeddings_layernorm = torch.nn.Identity()
    return base, base.h


def make_tiny_model(script, model_dir, args):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("make_tiny_model", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = sys.argv
    sys.argv = [script, model_dir] + args
    try:
        module.main()
    finally:
        sys.argv = saved


def main():
    import sys

    make = None
    if "--make-tiny-model" in sys.argv:
        i = sys.argv.index("--make-tiny-model")
        make = sys.argv[i + 1:]
        sys.argv = sys.argv[:i]
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--end", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=0)
    p.add_argument("--generate", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config-override", default=None)
    a = p.parse_args()
    if make:
        make_tiny_model(make[0], a.model_dir, make[1:])
    if a.config_override:
        import json

        path = os.path.join(a.model_dir, "config.json")
        with open(path) as f:
            config = json.load(f)
        config.update(json.loads(a.config_override))
        with open(path, "w") as f:
            json.dump(config, f)
    torch.manual_seed(a.seed)
    out = {}

    if a.generate:
        model = transformers.AutoModelForCausalLM.from_pretrained(a.model_dir).eval()
        tok = transformers.AutoTokenizer.from_pretrained(a.model_dir)
        ids = tok("Hello, Petals! A tiny swarm on loopback.", return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=a.generate, do_sample=False, min_new_tokens=a.generate,
                                 pad_token_id=model.config.pad_token_id)
        out["gen_input"] = ids.to(torch.int64).contiguous()
        out["gen_output"] = gen.to(torch.int64).contiguous()

    model = transformers.AutoModelForCausalLM.from_pretrained(a.model_dir, torch_dtype="auto").eval()
    dtype = next(model.parameters()).dtype
    end = a.end if a.end is not None else model.config.num_hidden_layers
    base, blocks = span_model(model, a.start, end)
    hidden = model.config.hidden_size
    x = torch.randn(a.batch, a.seq, hidden).to(dtype)
    with torch.no_grad():
        out["hidden_in"] = x
        out["hidden_out"] = base(inputs_embeds=x, use_cache=False).last_hidden_state.contiguous()

    if a.prompt_len:
        prompts = torch.randn(len(blocks), a.batch, a.prompt_len, hidden).to(dtype).requires_grad_(True)
        xg = x.clone().requires_grad_(True)
        handles = []
        for i, blk in enumerate(blocks):
            def hook(module, args, kwargs, i=i):
                h = args[0] if args else kwargs["hidden_states"]
                h = torch.cat([h[:, : a.prompt_len] + prompts[i], h[:, a.prompt_len:]], dim=1)
                if args:
                    return (h,) + tuple(args[1:]), kwargs
                return args, dict(kwargs, hidden_states=h)
            handles.append(blk.register_forward_pre_hook(hook, with_kwargs=True))
        y = base(inputs_embeds=xg, use_cache=False).last_hidden_state
        g = torch.randn_like(y)
        (y * g).sum().backward()
        out.update(prompts=prompts.detach(), grad_out=g, out_prompted=y.detach().contiguous(),
                   grad_hidden=xg.grad.contiguous(), grad_prompts=prompts.grad.contiguous())
        for h in handles:
            h.remove()

    save_file({k: v.contiguous() for k, v in out.items()}, a.out)
    print("ok")


if __name__ == "__main__":
    main()
