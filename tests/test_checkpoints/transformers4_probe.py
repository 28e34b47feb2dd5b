"""Runs under transformers 4.51.3, the version the reference (ByteDance-Seed/AHN) pins, in a
subprocess of test_transformers4.py: PYTHONPATH puts the copy `make test` installs in
.venv/transformers4 before the venv's transformers 5, then tests/ for the helpers of
tests/shared.py, which import transformers only when called. Imports nothing of ahn_jax.

  python transformers4_probe.py REQUEST.json RESULT.json

REQUEST maps a name to a task; RESULT maps the same name to what the task returns, plus
"version" (transformers.__version__). Tasks (`kind`):
  save      shared.save_tiny_qwen2 with `config` over its defaults (`seed`, `dtype`: "float32" or
            "bfloat16") into `dir`; returns the model's fp32 logits
  load      AutoModelForCausalLM.from_pretrained(`dir`) in fp32; returns logits, the config's
            rope_theta and sliding_window and, with `generate` (generate's keyword
            arguments; shared.hf_generate), the new tokens up to the first eos
  config    AutoConfig.from_pretrained(`dir`); returns the attributes named in `keys`
  processors  the logits processors 4.51's `generate` builds for `settings` (GenerationConfig
            keywords; `_get_logits_processor`, in its order) applied to `logits` [B, V] after
            `ids` [B, T]; returns the scores (-inf as None)
  decay     the names of `names` (parameter names, as "model.layers.0.ahn.fn.A_log") that 4.51's
            `Trainer.get_decay_parameter_names` decays, on a module tree of those names (plain
            modules: fla's norms are not `nn.LayerNorm`s, so only the names decide)
Logits are of `ids` [B, T] (at `position_ids` when given).
"""

from __future__ import annotations

import json
import sys

import torch
import transformers
from shared import hf_generate, save_tiny_qwen2
from transformers import AutoConfig, AutoModelForCausalLM


def _logits(model, task) -> list:
    kwargs = {}
    if task.get("position_ids") is not None:
        kwargs["position_ids"] = torch.tensor(task["position_ids"])
    with torch.no_grad():
        return model(torch.tensor(task["ids"]), **kwargs).logits.float().tolist()


def save(task) -> dict:
    model = save_tiny_qwen2(task["dir"], seed=task["seed"], dtype=getattr(torch, task["dtype"]),
                            **task["config"])  # fmt: skip
    return {"logits": _logits(model.float(), task)}


def load(task) -> dict:
    model = AutoModelForCausalLM.from_pretrained(task["dir"], torch_dtype=torch.float32).eval()
    out = {"logits": _logits(model, task)}
    out.update(rope_theta=model.config.rope_theta, sliding_window=model.config.sliding_window)
    if "generate" in task:
        out["tokens"] = hf_generate(model, task["ids"], **task["generate"])
    return out


def config(task) -> dict:
    loaded = AutoConfig.from_pretrained(task["dir"])
    return {key: getattr(loaded, key, None) for key in task["keys"]}


def processors(task) -> dict:
    from transformers import GenerationConfig, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

    logits = torch.tensor(task["logits"])
    sizes = dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
    tiny = Qwen2Config(vocab_size=logits.shape[-1], num_key_value_heads=1, **sizes)
    ids = torch.tensor(task["ids"])
    generation = GenerationConfig(**task["settings"])
    generation._eos_token_tensor = None  # generate sets it (`_prepare_special_tokens`) first
    built = Qwen2ForCausalLM(tiny)._get_logits_processor(
        generation, input_ids_seq_length=ids.shape[1],
        encoder_input_ids=ids, prefix_allowed_tokens_fn=None,
        logits_processor=LogitsProcessorList(), device="cpu",
    )  # fmt: skip
    scores = built(ids, logits)
    return {"scores": [[None if s == float("-inf") else s for s in row] for row in scores.tolist()]}


def decay(task) -> dict:
    from transformers import Trainer

    root = torch.nn.Module()
    for name in task["names"]:
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(torch.zeros(1)))
    # the method reads nothing of the Trainer: called unbound, no Trainer (or its arguments) built
    return {"decayed": Trainer.get_decay_parameter_names(None, root)}


TASKS = {"save": save, "load": load, "config": config, "processors": processors, "decay": decay}


def main(request_path: str, result_path: str) -> None:
    with open(request_path) as f:
        request = json.load(f)
    result = {"version": transformers.__version__}
    for name, task in request.items():
        result[name] = TASKS[task["kind"]](task)
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:])
