"""The `train` and `data` sections of a config file: the typed, validated `TrainConfig` and
`DataConfig` (the paper's recipe as defaults) and the values their fields allow.

A config file's sections are ml_collections ConfigDicts (so that `--config.train.steps=...`
overrides them); a run turns them into these frozen dataclasses at start-up (`run_configs`), and
every error names the field: `train.steps must be a positive integer, got '10'`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ahn_jax.config.field_checks import check_choice, check_fields, check_local_paths, known
from ahn_jax.config.model import ConfigError

# "distill": AHN weights learn from the frozen base (the paper); "pretrain": every base weight
# learns next-token prediction under full attention (the demo's miniature base)
OBJECTIVES = ("distill", "pretrain")
# "kl": KL(teacher || student) on the logits; "ce": next-token cross-entropy; "distill": per-layer
# distance of the pre-o_proj attention outputs (docs/method.md §Training); `train.loss` is one of
# them or a "+"-joined combination ("kl+ce": each sequence's terms added), as the reference's
LOSSES = ("kl", "ce", "distill")
# how (W, S) is drawn per step: the reference's random powers of two, a fixed pair, or max(L/4, 512)
WINDOW_SAMPLINGS = ("random", "fixed", "linear")
# `data.format`: chat JSONL, text JSONL or .txt files, or the demo's Shakespeare plays
# (ahn_jax/training/data.py)
DATA_FORMATS = ("chat", "text", "shakespeare")
# `data.tokenizer`: the tokenizer.json of data.tokenizer_dir or train.base_checkpoint, or bytes
TOKENIZERS = ("checkpoint", "bytes")

# The reference's random-window candidates (docs/method.md §Training; ahn_jax/training/windows.py
# samples from them).
WINDOW_CHOICES = tuple(2**i for i in range(5, 14))  # W + S: 32 .. 8192
SINK_CHOICES = (0, 32, 64, 128, 512, 2048, 4096)


class _Section:
    """What the typed sections share: made from a config file's section (`config.train.to_dict()`),
    unknown keys refused naming them; `replace` and `to_dict` as ModelConfig has them."""

    SECTION: ClassVar[str]

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]):
        return cls(**known(cls, cls.SECTION, settings))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The clipping the reference's run applied, in our units (docs/method.md §Training): its HF Trainer
# (transformers 4.51 + DeepSpeed) does not divide a loss that takes `**loss_kwargs` by the 4
# gradient-accumulation steps, and the AHN loss ignores `num_items_in_batch`, so the clipped
# gradient (max_grad_norm 1.0) was 4x the mean over the 128 sequences, where ours is the mean.
REFERENCE_MAX_GRAD_NORM = 0.25


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    """The `train` section: the paper's recipe (docs/method.md §Training); a config file overrides
    what differs."""

    SECTION = "train"

    # "distill": AHN weights learn from the frozen base (the paper); "pretrain": every base weight
    # learns next-token prediction under full attention (the miniature base of the demo)
    objective: str = "distill"
    steps: int = 740  # optimizer steps of the whole run
    batch_size: int = 128  # global, in sequences
    micro_batches: int = 1  # gradient accumulation: the batch is split into this many
    seq_len: int = 24576  # tokens per sequence (the longest batch length)
    # pad each batch to the smallest bucket that holds it ((): seq_len): one step compile per bucket
    length_buckets: tuple[int, ...] = ()
    learning_rate: float = 1e-4  # AdamW's peak learning rate
    warmup_fraction: float = 0.1  # share of the steps in linear warmup, then cosine decay to 0
    weight_decay: float = 0.1  # AdamW's decoupled weight decay (training/optimizer.py's mask)
    max_grad_norm: float = 1.0  # global-norm clipping (the Qwen configs: REFERENCE_MAX_GRAD_NORM)
    loss: str = "kl"  # one of LOSSES, or several joined by "+" ("kl+ce")
    window_sampling: str = "random"  # one of WINDOW_SAMPLINGS
    window: int = 256  # W of "fixed" sampling (and the window of "linear" is derived from L)
    sinks: int = 0  # S of "fixed" / "linear" sampling
    window_choices: tuple[int, ...] = WINDOW_CHOICES  # "random": the candidates for W + S
    sink_choices: tuple[int, ...] = SINK_CHOICES  # "random": the candidates for S
    seq_tile: int = 512  # loss tiles: the [T, V] logits are never formed
    vocab_tile: int = 8192  # loss tiles over the vocabulary
    seed: int = 0  # fresh AHN weights, data order and window draws
    mesh: str = ""  # e.g. "data=2,fsdp=4,tensor=1" (product = device count); "" = one device
    base_checkpoint: str = ""  # HF dir or ahn_jax checkpoint; "" = the config's random init
    # distilling from a random base teaches nothing, so base_checkpoint = "" is refused at start-up
    # unless this is set: for benchmarks and tests (pretraining starts from the random init anyway)
    allow_random_base: bool = False
    output_dir: str = "runs/ahn"  # checkpoints, metrics, exports
    checkpoint_every: int = 50  # steps between checkpoints (and at the last step)
    keep_checkpoints: int = 3  # the newest checkpoints kept
    log_every: int = 1  # steps between metrics.jsonl / TensorBoard records
    # several processes (TPU pod hosts, GPU nodes): jax.distributed.initialize(); the address, count
    # and id are found on TPU pods and SLURM when left empty / -1
    distributed: bool = False
    coordinator_address: str = ""  # host:port of process 0 ("" = found by JAX)
    num_processes: int = -1  # process count (-1 = found by JAX)
    process_id: int = -1  # this process's index (-1 = found by JAX)
    tensorboard: bool = True  # event files in <output_dir>/tensorboard
    profile_steps: tuple[int, ...] = ()  # (first, last): a profiler trace in <output_dir>/profile
    peak_flops_per_device: float = 0.0  # for the MFU estimate; 0 = from the device kind when known

    def __post_init__(self):
        positive = ("steps", "batch_size", "micro_batches", "seq_len", "checkpoint_every",
                    "log_every", "seq_tile", "vocab_tile", "keep_checkpoints")  # fmt: skip
        check_fields(self, "train", positive)
        if self.batch_size % self.micro_batches:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batches "
                f"({self.micro_batches})"
            )
        for name, allowed in (("objective", OBJECTIVES),
                              ("window_sampling", WINDOW_SAMPLINGS)):  # fmt: skip
            check_choice("train", name, getattr(self, name), allowed)
        _check_loss(self.loss)
        check_local_paths("train", base_checkpoint=self.base_checkpoint, output_dir=self.output_dir)
        for name, (within, what) in _TRAIN_RANGES.items():
            if not within(getattr(self, name)):
                raise ConfigError(f"train.{name} must be {what}, got {getattr(self, name)!r}")
        if self.window_sampling == "fixed" and self.window + self.sinks >= self.seq_len:
            raise ConfigError(
                f"train.window ({self.window}) + train.sinks ({self.sinks}) must be below "
                f"train.seq_len ({self.seq_len}): no position would reach the memory"
            )
        if self.distributed and not self.mesh:
            raise ConfigError("train.distributed = True needs train.mesh (the global device mesh)")
        profile = self.profile_steps
        if profile and (len(profile) != 2 or not 1 <= profile[0] <= profile[1]):
            raise ConfigError(
                "train.profile_steps must be (first, last) with 1 <= first <= last, got "
                f"{profile!r}"
            )


# The float settings' ranges (NaN is outside each): max_grad_norm 0 would zero every gradient, a
# warmup past 1 never reaches the peak (HF refuses warmup_ratio outside [0, 1])
_TRAIN_RANGES = {
    "learning_rate": (lambda v: v > 0, "> 0"),
    "max_grad_norm": (lambda v: v > 0, "> 0"),
    "warmup_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
}


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """The `data` section: what the training batches are made of (ahn_jax/training/data.py)."""

    SECTION = "data"

    format: str = "chat"  # one of DATA_FORMATS
    paths: tuple[str, ...] = ()  # JSONL (or, for "text", .txt) files; unused by "shakespeare"
    tokenizer: str = "checkpoint"  # one of TOKENIZERS
    tokenizer_dir: str = ""  # where "checkpoint"'s tokenizer.json is ("": train.base_checkpoint)
    filter_len: int = 288  # samples of at most this many tokens are dropped
    cutoff_len: int = 24576  # longer samples are cut (text documents split) at this many tokens
    held_out: tuple[str, ...] = ()  # "shakespeare": plays kept out of training (for evaluation)
    # key/recall pairs mixed into text windows (ahn_jax/training/recall_pairs.py's RecallSpec), e.g.
    # {"span": 16, "pairs": 1, "min_gap": 64, "max_gap": 192}; empty = none
    recall: dict[str, Any] = dataclasses.field(default_factory=dict)
    # a copy warm-up before the text: for about the first `steps` optimizer steps each window's
    # text is random lowercase letters and spaces, with `pairs` key/recall pairs `min_gap`-`max_gap`
    # apart (other fields from `recall`), e.g. {"steps": 400, "pairs": 3, "min_gap": 40,
    # "max_gap": 120}: copying is then most of the signal (docs/results.md); empty = none
    copy_warmup: dict[str, Any] = dataclasses.field(default_factory=dict)
    # JSONL files drawn with these probabilities, one per path, as the reference's interleave_probs
    # (ahn_jax/training/mixing.py); () = the files concatenated
    mix: tuple[float, ...] = ()
    max_samples: int = 0  # the first this many records of each JSONL file (0 = all)
    # "chat": a top-level string field that is the system turn of records without one (e.g.
    # "system", LLaMA-Factory's mapped `system` column); "" = none read (the reference's ChatQA2)
    system_field: str = ""
    # threads reading records two batches ahead while the step runs (e.g. 16 on a TPU host; skips
    # and passes then logged that early); 0 = in the loop's thread, the fastest on a 2-core CPU
    read_threads: int = 0

    def __post_init__(self):
        check_fields(self, "data", positive=("cutoff_len",))
        if self.read_threads < 0:
            raise ConfigError(f"data.read_threads must be >= 0, got {self.read_threads}")
        if self.system_field and self.format != "chat":
            raise ConfigError(
                f"data.system_field is read by data.format 'chat' only, not {self.format!r}"
            )
        check_choice("data", "format", self.format, DATA_FORMATS)
        check_choice("data", "tokenizer", self.tokenizer, TOKENIZERS)
        if self.max_samples < 0:
            raise ConfigError(f"data.max_samples must be >= 0 (0 = all), got {self.max_samples}")
        if self.format == "shakespeare" and self.paths:
            raise ConfigError(
                "data.paths is not read with data.format = 'shakespeare' (the plays come with a "
                f"package): set data.format to 'chat' or 'text' for {list(self.paths)}, or drop "
                "data.paths"
            )
        _check_mix(self.mix, self.paths)
        check_local_paths("data", paths=self.paths, tokenizer_dir=self.tokenizer_dir)
        _check_copy_warmup(self.copy_warmup, self.recall)
        _check_documents(self)


def _check_documents(d: DataConfig) -> None:
    """What whole documents (the plays, .txt files) and recall pairs can be given with."""
    txt = [p for p in d.paths if str(p).endswith(".txt")]
    if txt and len(txt) != len(d.paths):
        raise ConfigError(
            f"data.paths mixes .txt documents {txt} with JSONL files: one kind per run (a .txt "
            "would be read as JSONL)"
        )
    documents = bool(txt) or d.format == "shakespeare"
    for name in ("mix", "max_samples"):
        if getattr(d, name) and documents:
            raise ConfigError(f"data.{name} applies to JSONL files, not to whole documents")
    if documents and d.filter_len >= d.cutoff_len:
        raise ConfigError(
            f"data.filter_len ({d.filter_len}) must be below data.cutoff_len ({d.cutoff_len}) "
            "for whole documents: they are cut into pieces of at most cutoff_len tokens and "
            "pieces of at most filter_len are dropped, so none would be left"
        )
    if d.recall and (d.format == "chat" or d.tokenizer != "bytes"):
        raise ConfigError(
            "data.recall inserts byte-level key/recall pairs into text windows: it needs "
            "data.format 'text' or 'shakespeare' and data.tokenizer 'bytes' (chat rows would be "
            f"relabelled and cut), got {d.format!r} and {d.tokenizer!r}"
        )


COPY_WARMUP_KEYS = ("steps", "pairs", "min_gap", "max_gap")


def _check_copy_warmup(warmup: dict, recall: dict) -> None:
    if not warmup:
        return
    if not recall:
        raise ConfigError("data.copy_warmup needs data.recall (the pairs it copies)")
    unknown = sorted(set(warmup) - set(COPY_WARMUP_KEYS))
    if unknown or "steps" not in warmup:
        raise ConfigError(
            f"data.copy_warmup takes {COPY_WARMUP_KEYS} ('steps' required), got {sorted(warmup)}"
        )
    if not isinstance(warmup["steps"], int) or warmup["steps"] < 1:
        steps = warmup["steps"]
        raise ConfigError(f"data.copy_warmup.steps must be an integer >= 1, got {steps!r}")


def _check_mix(mix: tuple[float, ...], paths: tuple[str, ...]) -> None:
    if not mix:
        return
    if len(mix) != len(paths):
        raise ConfigError(
            f"data.mix needs one probability per path of data.paths ({len(paths)}), got {mix!r}"
        )
    if any(p < 0 for p in mix) or abs(sum(mix) - 1) > 1e-6:
        raise ConfigError(f"data.mix must be probabilities >= 0 that sum to 1, got {mix!r}")


def run_configs(config) -> tuple[TrainConfig, DataConfig]:
    """The typed `train` and `data` sections of a config ConfigDict (command-line overrides
    included), checked against each other and the file system: what would fail later fails at
    start-up, naming the field and the value."""
    for section in ("train", "data"):
        if section not in config:
            raise ConfigError(f"config has no '{section}' section")
    train = TrainConfig.from_dict(config.train.to_dict())
    data = DataConfig.from_dict(config.data.to_dict())
    if data.cutoff_len > train.seq_len:
        raise ConfigError(
            f"data.cutoff_len ({data.cutoff_len}) must not exceed train.seq_len ({train.seq_len})"
        )
    _check_buckets(train.length_buckets, train.seq_len, data.cutoff_len)
    if train.base_checkpoint and not Path(train.base_checkpoint).exists():
        raise ConfigError(f"train.base_checkpoint = {train.base_checkpoint!r} does not exist")
    for path in data.paths:
        if not Path(path).exists():
            raise ConfigError(f"data.paths has {path!r}, which does not exist")
    _check_inputs(train, data)
    return train, data


# What a real run must be given, with an example value for the message.
_BASE = ("train.base_checkpoint", "/path/Qwen2.5-3B-Instruct",
         "the base model: an HF or ahn_jax checkpoint")  # fmt: skip
_PATHS = ("data.paths", "/path/chatqa2.jsonl", "the training data files")


def _check_buckets(buckets: tuple[int, ...], seq_len: int, cutoff_len: int) -> None:
    """Batch lengths must hold the longest row (data.cutoff_len tokens; grain failed on it after
    the set-up) and stay within train.seq_len, the longest a step is sized for."""
    if not buckets:
        return
    if any(not isinstance(b, int) or b < 1 for b in buckets):
        raise ConfigError(f"train.length_buckets must be positive token counts, got {buckets}")
    if max(buckets) < cutoff_len or max(buckets) > seq_len:
        raise ConfigError(
            f"train.length_buckets {tuple(buckets)}: the largest must hold the longest row, "
            f"data.cutoff_len ({cutoff_len}), and none may exceed train.seq_len ({seq_len})"
        )


def _check_inputs(train: TrainConfig, data: DataConfig) -> None:
    """A run without a base or data fails here, before anything is built: the Qwen configs carry
    the model's shape only (a 3B random init takes minutes and tens of GB before anything else
    would fail)."""
    missing = []
    if not (train.base_checkpoint or train.allow_random_base or train.objective == "pretrain"):
        missing.append(_BASE)
    if not data.paths and data.format != "shakespeare":  # the plays come with a package
        missing.append(_PATHS)
    if missing:
        fields = " and ".join(f"{name} ({what})" for name, _, what in missing)
        overrides = " ".join(f"--config.{name}={example}" for name, example, _ in missing)
        random = "\n(benchmarks: train.allow_random_base=True distils from the random init)"
        random = random if _BASE in missing else ""
        raise ConfigError(
            f"this run needs {fields}, e.g.\n  python -m ahn_jax.train "
            f"--config=configs/<name>.py {overrides}{random}"
        )
    if data.tokenizer == "checkpoint" and not (data.tokenizer_dir or train.base_checkpoint):
        raise ConfigError(
            "data.tokenizer = 'checkpoint' needs data.tokenizer_dir or train.base_checkpoint "
            "(or data.tokenizer = 'bytes')"
        )
    shipped = Path(train.base_checkpoint, "tokenizer.json")
    if data.tokenizer == "bytes" and train.base_checkpoint and shipped.is_file():
        raise ConfigError(
            f"data.tokenizer = 'bytes' with a base that has its own tokenizer ({shipped}): it "
            "would read UTF-8 bytes as its token ids 0-255. Set data.tokenizer = 'checkpoint'"
        )


def _check_loss(value: str) -> None:
    terms = value.split("+")
    if any(t not in LOSSES for t in terms) or len(set(terms)) != len(terms):
        raise ConfigError(
            f"train.loss must be one of {LOSSES} or a '+'-joined combination of them without "
            f"repeats (e.g. 'kl+ce'), got {value!r}"
        )


# The defaults as the plain dicts a config file's ConfigDict starts from (config/files.py).
TRAIN_DEFAULTS = TrainConfig().to_dict()
DATA_DEFAULTS = DataConfig().to_dict()
