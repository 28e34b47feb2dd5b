"""A checkpoint's `generation_config.json` (transformers' format), read and merged with
command-line overrides: built-in defaults < the file < flags, as transformers' `generate` ranks
its global defaults < the model's generation config < the caller's arguments.

Qwen2.5-Instruct ships {"do_sample": true, "eos_token_id": [151645, 151643],
"repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20, ...}. Keys that do not
change which token is chosen (bos/pad ids, output_* switches, ...) are ignored; keys of processors
and stopping rules this package does not implement are an error where transformers would apply
them (`UNSUPPORTED`), so that a checkpoint is never decoded otherwise than transformers would
without saying so.

Lengths follow transformers: `max_new_tokens` wins; else `max_length` counts the prompt (new
tokens = max_length - prompt length, an error when nothing is left); else DEFAULT_MAX_NEW_TOKENS
(transformers' own default is max_length 20).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

from ahn_jax.inference.sampling import Sampling

FILE_NAME = "generation_config.json"
DEFAULT_MAX_NEW_TOKENS = 128
# file key -> field; the other keys of the file are read by none of our code
FIELDS = {
    "do_sample": "do_sample",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_new_tokens",
    "max_length": "max_length",
    "eos_token_id": "eos_token_ids",
}


def _positive(value) -> bool:
    return value > 0


def _below_one(value) -> bool:
    return value < 1.0


def _inside_zero_one(value) -> bool:
    return 0.0 < value < 1.0


def _anything(value) -> bool:
    return True


# Keys of processors and stopping rules not implemented here -> the test by which transformers'
# `generate` uses them (generation/utils.py `_get_logits_processor`, `_get_stopping_criteria`;
# null always means unset). A file whose value passes is refused rather than decoded otherwise
# than transformers would; the sampling-only ones (SAMPLING_ONLY) only where the run samples:
# transformers adds their warpers under do_sample alone, so a greedy run ignores them as it does.
UNSUPPORTED = {
    "num_beams": lambda value: value != 1,
    "num_beam_groups": lambda value: value != 1,
    "num_return_sequences": lambda value: value != 1,
    "guidance_scale": lambda value: value != 1,
    "encoder_repetition_penalty": lambda value: value != 1.0,
    "min_length": _positive,
    "min_new_tokens": _positive,
    "no_repeat_ngram_size": _positive,
    "encoder_no_repeat_ngram_size": _positive,
    "min_p": _positive,
    "typical_p": _below_one,
    "epsilon_cutoff": _inside_zero_one,
    "eta_cutoff": _inside_zero_one,
    "top_h": _anything,
    "bad_words_ids": _anything,
    "force_words_ids": _anything,
    "sequence_bias": _anything,
    "suppress_tokens": bool,  # an empty list suppresses nothing
    "begin_suppress_tokens": bool,
    "forced_bos_token_id": _anything,
    "forced_eos_token_id": _anything,
    "forced_decoder_ids": _anything,  # transformers 4
    "exponential_decay_length_penalty": _anything,
    "penalty_alpha": _anything,
    "dola_layers": _anything,
    "watermarking_config": _anything,
    "token_healing": bool,
    "stop_strings": _anything,
    "max_time": _anything,
}


SAMPLING_ONLY = frozenset({"min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h"})


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """The generation settings; the defaults are transformers' global ones (but for the length).
    None means "not set": `eos_token_ids` None leaves the stop ids to the caller."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int | None = None
    max_length: int | None = None
    eos_token_ids: tuple[int, ...] | None = None
    # the file's sampling-only keys this package does not implement ("<file>: key 'min_p' =
    # 0.05"): refused by `sampling()` when sampling, ignored when greedy (as transformers does)
    unsupported_when_sampling: tuple[str, ...] = ()

    def merged(self, overrides: Mapping, describe: str = "--{key}") -> GenerationSettings:
        """These settings with `overrides` ({field: value}) replacing them where not None (a flag
        not given). `describe` names a bad value's source in the error."""
        changes = {}
        for key, value in overrides.items():
            if key not in FIELD_NAMES:
                raise ValueError(f"{describe.format(key=key)}: not a generation setting")
            if value is not None:
                changes[key] = _checked(key, value, describe.format(key=key))
        return dataclasses.replace(self, **changes)

    def new_tokens(self, prompt_length: int) -> int:
        """How many tokens to generate after a prompt of `prompt_length` tokens."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is None:
            return DEFAULT_MAX_NEW_TOKENS
        if prompt_length >= self.max_length:
            raise ValueError(
                f"max_length = {self.max_length} (generation_config.json) counts the prompt, and "
                f"a prompt has {prompt_length} tokens: nothing is left to generate; give "
                "--max_new_tokens"
            )
        return self.max_length - prompt_length

    def sampling(self) -> Sampling:
        """The token choice (checks the settings it uses: temperature > 0 when sampling, ...)."""
        if self.do_sample and self.unsupported_when_sampling:
            raise ValueError(
                f"{self.unsupported_when_sampling[0]} is not supported by ahn_jax's sampling "
                "(transformers would apply it when sampling); remove it, or for greedy decoding "
                "set do_sample false"
            )
        return Sampling(
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
        )

    def sampling_kwargs(self) -> dict:
        """`generate()`'s keywords for the token choice."""
        return dataclasses.asdict(self.sampling())

    def stop_ids(self, fallback) -> list[int]:
        """The eos ids of the settings, else `fallback` (the tokenizer's end tokens)."""
        return list(self.eos_token_ids) if self.eos_token_ids is not None else list(fallback)


# the settings an override may set (not the record of the file's unsupported sampling keys)
FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(GenerationSettings)) - {
    "unsupported_when_sampling"
}
DEFAULTS = GenerationSettings()


def read_generation_config(model_dir: str | Path) -> GenerationSettings:
    """The defaults updated by `model_dir`'s generation_config.json. Without that file, as
    transformers builds the generation config from the model's config.json, the defaults with
    config.json's `eos_token_id` (if it names one). Errors name the file and the key."""
    path = Path(model_dir) / FILE_NAME
    if not path.is_file():
        return _from_model_config(Path(model_dir) / "config.json")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: holds {type(raw).__name__}, not a JSON object")
    when_sampling = []
    for key, used in UNSUPPORTED.items():
        if raw.get(key) is None or not _used(used, raw[key]):
            continue
        if key in SAMPLING_ONLY:
            when_sampling.append(f"{path}: key {key!r} = {raw[key]!r}")
            continue
        raise ValueError(
            f"{path}: key {key!r} = {raw[key]!r} is not supported by ahn_jax's generation "
            "(transformers would apply it); remove it to decode without it"
        )
    changes = {
        field: _checked(field, raw[key], f"{path}: key {key!r}")
        for key, field in FIELDS.items()
        if raw.get(key) is not None  # null: not set, as transformers reads it
    }
    return dataclasses.replace(DEFAULTS, **changes, unsupported_when_sampling=tuple(when_sampling))


def _from_model_config(path: Path) -> GenerationSettings:
    """The defaults with the stop ids of a model's config.json; unreadable files are left to the
    model loader, which names them."""
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return DEFAULTS
    if eos is None:
        return DEFAULTS
    eos_ids = _checked("eos_token_ids", eos, f"{path}: key 'eos_token_id'")
    return dataclasses.replace(DEFAULTS, eos_token_ids=eos_ids)


def _used(used, value) -> bool:
    """Whether transformers would apply a key's `value`; a value of a type its test cannot take
    (a string for a number, ...) counts as used, so that it is refused."""
    try:
        return bool(used(value))
    except TypeError:
        return True


def _checked(field: str, value, where: str):
    """`value` of `field`, type- and range-checked; errors begin with `where`."""
    if field == "do_sample":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false, got {value!r}")
        return value
    if field == "eos_token_ids":
        ids = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
            raise ValueError(f"{where}: must be a token id or a list of them, got {value!r}")
        return tuple(ids)
    if field in ("top_k", "max_new_tokens", "max_length"):
        least = 0 if field == "top_k" else 1
        if not _is_int(value) or value < least:
            raise ValueError(f"{where}: must be an integer >= {least}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: must be a number, got {value!r}")
    value = float(value)
    if field == "top_p" and not 0 <= value <= 1:
        raise ValueError(f"{where}: must be in [0, 1], got {value}")
    if field == "temperature" and value < 0:
        raise ValueError(f"{where}: must be >= 0, got {value}")
    if field == "repetition_penalty" and not value > 0:
        raise ValueError(f"{where}: must be > 0, got {value}")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
