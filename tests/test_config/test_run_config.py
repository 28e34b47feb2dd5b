"""The typed `train` and `data` sections: defaults, errors naming the field, overrides."""

import dataclasses
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from ahn_jax.config import (
    DATA_DEFAULTS,
    TRAIN_DEFAULTS,
    ConfigError,
    DataConfig,
    TrainConfig,
    load_config_file,
    make_config,
    run_configs,
    validate_config,
)

CONFIGS = Path(__file__).parents[2] / "configs"
MODEL = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
             num_kv_heads=1, head_dim=16)  # fmt: skip


def test_defaults_are_the_papers_recipe():
    train, data = TrainConfig(), DataConfig()
    assert (train.steps, train.batch_size, train.seq_len, train.learning_rate) == (
        740, 128, 24576, 1e-4)  # fmt: skip
    assert (train.objective, train.loss, train.window_sampling) == ("distill", "kl", "random")
    assert (data.format, data.filter_len, data.cutoff_len) == ("chat", 288, 24576)
    assert TRAIN_DEFAULTS == train.to_dict() and DATA_DEFAULTS == data.to_dict()


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("[!_]*.py")))
def test_every_config_file_gives_typed_sections(name):
    config = load_config_file(CONFIGS / f"{name}.py")
    for typed, section in ((TrainConfig, config.train), (DataConfig, config.data)):
        settings = section.to_dict()
        fields = typed.from_dict(settings).to_dict()
        for key, value in settings.items():
            assert fields[key] == (tuple(value) if isinstance(value, list) else value), key


@pytest.mark.parametrize(
    "section, changes, message",
    [
        ("train", {"stepz": 10}, r"unknown setting\(s\) train\.stepz"),
        ("data", {"held_outt": ("hamlet",)}, r"unknown setting\(s\) data\.held_outt"),
        ("train", {"steps": "10"}, r"train\.steps must be a positive integer, got '10'"),
        ("train", {"seed": 1.5}, r"train\.seed must be an integer, got 1\.5"),
        ("train", {"learning_rate": "fast"}, r"train\.learning_rate must be a number"),
        # values a run would accept and then fail or train on nothing with
        ("train", {"seq_tile": 0}, r"train\.seq_tile must be a positive integer, got 0"),
        ("train", {"keep_checkpoints": 0}, r"train\.keep_checkpoints must be a positive integer"),
        ("train", {"max_grad_norm": 0.0}, r"train\.max_grad_norm must be > 0, got 0\.0"),
        ("train", {"warmup_fraction": 2.0}, r"train\.warmup_fraction must be in \[0, 1\], got 2"),
        ("train", {"weight_decay": -1.0}, r"train\.weight_decay must be >= 0, got -1\.0"),
        ("train", {"learning_rate": float("nan")}, r"train\.learning_rate must be > 0, got nan"),
        ("train", {"mesh": 8}, r"train\.mesh must be a string, got 8"),
        ("train", {"tensorboard": "yes"}, r"train\.tensorboard must be True or False"),
        ("train", {"window_choices": (64, "128")}, r"train\.window_choices must be a sequence"),
        ("data", {"cutoff_len": "512"}, r"data\.cutoff_len must be a positive integer"),
        ("data", {"paths": "a.jsonl"}, r"data\.paths must be a sequence of strings"),
        ("data", {"recall": 3}, r"data\.recall must be a mapping, got 3"),
        ("data", {"format": "csv"}, r"data\.format must be one of"),
        ("data", {"tokenizer": "words"}, r"data\.tokenizer must be one of"),
        ("data", {"format": "shakespeare", "paths": ("a.jsonl",)}, r"data\.paths is not read"),
        # a URL would be a relative directory "gs:" (outputs) or not found (inputs): mount it
        ("train", {"output_dir": "gs://b/run"}, r"train\.output_dir = 'gs://b/run': URLs are not"),
        ("train", {"base_checkpoint": "gs://b/q"}, r"train\.base_checkpoint = 'gs://b/q': URLs"),
        ("data", {"paths": ("/d/a.jsonl", "gs://b/c.jsonl")}, r"data\.paths = 'gs://b/c\.jsonl'"),
        ("data", {"tokenizer_dir": "s3://b/t"}, r"data\.tokenizer_dir = 's3://b/t': URLs"),
    ],
)
def test_unknown_and_mistyped_fields_are_named(section, changes, message):
    with pytest.raises(ConfigError, match=message):  # when the config file is made
        make_config(MODEL, ahn_type="gdn", **{section: changes})
    typed = {"train": TrainConfig, "data": DataConfig}[section]
    with pytest.raises(ConfigError, match=message):
        typed.from_dict(changes)


def test_fields_get_their_types():
    train = TrainConfig.from_dict({"learning_rate": 1, "length_buckets": [128, 256]})
    assert train.learning_rate == 1.0 and isinstance(train.learning_rate, float)
    assert train.length_buckets == (128, 256)
    data = DataConfig.from_dict({"paths": [Path("a.jsonl")], "held_out": ["hamlet"]})
    assert data.paths == ("a.jsonl",) and data.held_out == ("hamlet",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.steps = 3  # type: ignore[misc]
    assert train.replace(steps=3).steps == 3
    with pytest.raises(ConfigError, match=r"train\.steps must be a positive integer, got 0"):
        train.replace(steps=0)


def test_overrides_of_the_config_dict_apply():
    config = load_config_file(CONFIGS / "tiny_gdn.py")
    config.train.steps = 7
    config.train.update(window_sampling="fixed", window=32, sinks=4)
    config.data.cutoff_len = 256
    train, data = run_configs(config)
    assert (train.steps, train.window_sampling, train.window, train.sinks) == (7, "fixed", 32, 4)
    assert data.cutoff_len == 256 and data.held_out == config.data.held_out
    config.train.stepz = 3  # an unlocked ConfigDict takes a new key; the run does not
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        run_configs(config)


def _parse_command_line(*overrides):
    """`--config` as the tools define it (ahn_jax/cli.py), on a private FlagValues."""
    argv = ["prog", f"--config={CONFIGS / 'tiny_gdn.py'}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values,
                                    lock_config=False, sys_argv=argv)  # fmt: skip
    flag_values(argv)
    return flag_values.config


def test_command_line_overrides_apply_before_the_typed_sections_are_made():
    config = _parse_command_line("--config.train.steps=3", "--config.data.held_out=('hamlet',)",
                                 "--config.train.mesh=fsdp=2")  # fmt: skip
    train, data = run_configs(config)
    assert (train.steps, train.mesh, data.held_out) == (3, "fsdp=2", ("hamlet",))
    # a model field the config file leaves at its default is there to override too
    model = validate_config(
        _parse_command_line("--config.model.rms_norm_eps=1e-5", "--config.model.dtype=bfloat16")
    )
    assert (model.rms_norm_eps, model.dtype) == (1e-5, "bfloat16")
    with pytest.raises(AttributeError, match="stepz"):  # ml_collections names the unknown field
        _parse_command_line("--config.train.stepz=3")
    # no AHN, as the pretraining error asks: the command line gives the string "None"
    for value in ("None", "none", ""):
        assert validate_config(_parse_command_line(f"--config.ahn.type={value}")).ahn_type is None


def test_a_run_checks_the_sections_against_each_other_and_the_file_system(tmp_path):
    def config(**changes):
        return make_config(MODEL, ahn_type="gdn", train=dict(seq_len=256),
                           data={"cutoff_len": 256, **changes})  # fmt: skip

    with pytest.raises(ConfigError, match=r"data\.cutoff_len \(512\) must not exceed"):
        run_configs(config(cutoff_len=512))
    with pytest.raises(ConfigError, match=r"data\.paths has '.*nowhere\.jsonl'"):
        run_configs(config(paths=[str(tmp_path / "nowhere.jsonl")]))
    missing = make_config(MODEL, ahn_type="gdn", train=dict(base_checkpoint="/nowhere/qwen"))
    with pytest.raises(ConfigError, match=r"train\.base_checkpoint = '/nowhere/qwen'"):
        run_configs(missing)
    del missing["data"]
    with pytest.raises(ConfigError, match="no 'data' section"):
        run_configs(missing)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"format": "text", "paths": ("a.jsonl", "b.txt")}, r"mixes \.txt documents \[.*b\.txt"),
        ({"format": "shakespeare", "max_samples": 5}, r"data\.max_samples applies to JSONL"),
        ({"format": "chat", "recall": {"span": 8}}, r"data\.recall .* got 'chat' and 'checkpoint'"),
        ({"format": "shakespeare", "cutoff_len": 256},
         r"data\.filter_len \(288\) must be below data\.cutoff_len \(256\) for whole documents"),
        ({"format": "text", "paths": ("a.txt",), "cutoff_len": 288}, r"must be below data\.cutoff"),
    ],
)  # fmt: skip
def test_data_settings_that_would_be_ignored_or_misapplied_are_refused(tmp_path, data, message):
    """Each ran: a .txt read as JSONL (its document skipped as invalid), a traceback from the
    data pipeline, recall pairs that relabelled chat prompts (and inserted byte values as token
    ids under a checkpoint's tokenizer), or documents whose every piece was dropped (found only
    once the base had loaded)."""
    paths = tuple(str(tmp_path / p) for p in data.get("paths", ()))
    for path in paths:
        Path(path).write_text("{}\n")
    with pytest.raises(ConfigError, match=message):
        DataConfig(**{**data, **({"paths": paths} if paths else {})})


def test_length_buckets_must_hold_the_longest_row_within_seq_len():
    def config(buckets):
        return make_config(MODEL, ahn_type="gdn",
                           data={"cutoff_len": 128, "filter_len": 64, "format": "shakespeare",
                                 "tokenizer": "bytes"},
                           train=dict(seq_len=128, length_buckets=buckets,
                                      allow_random_base=True))  # fmt: skip

    run_configs(config((64, 128)))
    for buckets in ((64, 96), (64, 256)):  # grain failed on a row of 128; seq_len capped nothing
        with pytest.raises(ConfigError, match=r"train\.length_buckets .* data\.cutoff_len \(128\)"):
            run_configs(config(buckets))


def test_a_run_needs_a_base_and_data_unless_it_says_otherwise(tmp_path):
    """The Qwen configs carry the model's shape only: a run names what it lacks before anything
    is built. A random base is for benchmarks (allow_random_base) and pretraining; the Shakespeare
    plays need no paths."""
    qwen = load_config_file(CONFIGS / "qwen3b_gdn.py")
    with pytest.raises(ConfigError, match=r"needs train\.base_checkpoint .* and data\.paths") as e:
        run_configs(qwen)
    assert "--config.train.base_checkpoint=/path/" in str(e.value)
    assert "--config.data.paths=/path/" in str(e.value) and "allow_random_base" in str(e.value)
    qwen.train.base_checkpoint = str(tmp_path)
    with pytest.raises(ConfigError, match=r"needs data\.paths") as e:
        run_configs(qwen)
    assert "base_checkpoint" not in str(e.value) and "allow_random_base" not in str(e.value)
    (tmp_path / "chat.jsonl").write_text("")
    qwen.data.paths = (str(tmp_path / "chat.jsonl"),)
    run_configs(qwen)

    def tiny(**data):
        return make_config(MODEL, ahn_type="gdn", train=dict(seq_len=256),
                           data={"cutoff_len": 256, "filter_len": 64, "format": "shakespeare",
                                 **data})  # fmt: skip

    with pytest.raises(ConfigError, match=r"needs train\.base_checkpoint \(") as e:
        run_configs(tiny(tokenizer="bytes"))
    assert "data.paths" not in str(e.value)
    random_base = tiny(tokenizer="bytes")
    random_base.train.allow_random_base = True
    run_configs(random_base)
    random_base.data.tokenizer = "checkpoint"  # whose tokenizer.json?
    with pytest.raises(ConfigError, match=r"data\.tokenizer = 'checkpoint' needs"):
        run_configs(random_base)
    pretrain = load_config_file(CONFIGS / "tiny_base.py")  # from the random init, by definition
    assert not pretrain.train.base_checkpoint and not pretrain.train.allow_random_base
    run_configs(pretrain)


def test_bytes_are_refused_for_a_base_with_its_own_tokenizer(tmp_path, qwen25_tokenizer_dir):
    """A base that ships tokenizer.json (an HF checkpoint) would read UTF-8 bytes as its token
    ids 0-255: the run stops at start naming both fields; a base without one (the demo's byte
    model, an ahn_jax checkpoint) takes bytes."""
    train = dict(seq_len=256, base_checkpoint=str(tmp_path))
    data = dict(cutoff_len=256, filter_len=64, format="shakespeare", tokenizer="bytes")
    config = make_config(MODEL, ahn_type="gdn", train=train, data=data)
    run_configs(config)
    (tmp_path / "tokenizer.json").write_bytes(
        (qwen25_tokenizer_dir / "tokenizer.json").read_bytes()
    )
    with pytest.raises(
        ConfigError, match=r"data\.tokenizer = 'bytes' with a base that has its own tokenizer"
    ):
        run_configs(config)
    config.data.tokenizer = "checkpoint"
    run_configs(config)


def test_a_tokenizer_past_the_models_vocabulary_is_refused(qwen25_tokenizer_dir, tmp_path):
    """Ids past the embedding table would be clamped or filled by JAX's gathers without an error:
    training's and inference's tokenizers are checked against model.vocab_size."""
    from ahn_jax.inference.generate import load_tokenizer
    from ahn_jax.training.run import tokenizer_for

    train = TrainConfig(base_checkpoint=str(qwen25_tokenizer_dir))
    qwen_vocab = tokenizer_for(DataConfig(), train, 151_936).vocab_size
    assert qwen_vocab == 151_665  # Qwen2.5's tokenizer.json, added tokens included
    with pytest.raises(
        ConfigError, match=r"has 151,665 tokens but the model's vocabulary has 8,192"
    ):
        tokenizer_for(DataConfig(), train, 8192)
    with pytest.raises(ConfigError, match=r"data\.tokenizer = 'bytes' has 256 tokens .* has 128"):
        tokenizer_for(DataConfig(tokenizer="bytes"), train, 128)
    assert load_tokenizer(str(qwen25_tokenizer_dir), 151_936).vocab_size == qwen_vocab
    with pytest.raises(ConfigError, match=r"tokenizer\.json has 151,665 tokens"):
        load_tokenizer(str(qwen25_tokenizer_dir), 1000)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path), 1000)


@pytest.mark.parametrize("name", ["qwen3b_gdn", "qwen3b_dn", "qwen3b_mamba2", "qwen7b_gdn",
                                  "qwen14b_gdn"])  # fmt: skip
def test_qwen_configs_carry_the_references_recipe(name):
    """The reference's train script (examples/scripts/train_qwen2.5_3b_ahn_gdn.sh): lr 1e-4,
    warmup 0.1 + cosine, weight decay 0.1, max_samples 100000, cutoff 24576, filter 288, random
    windows and sinks; its clipping of 1.0 fell on the sum of 4 accumulation steps, 0.25 of our
    mean gradient (docs/method.md §Training)."""
    config = load_config_file(CONFIGS / f"{name}.py")
    train, data = config.train, config.data
    assert (train.learning_rate, train.warmup_fraction, train.weight_decay) == (1e-4, 0.1, 0.1)
    assert train.max_grad_norm == 0.25 and train.loss == "kl"
    assert (train.window_sampling, train.seq_len) == ("random", 24576)
    assert (data.max_samples, data.cutoff_len, data.filter_len) == (100_000, 24576, 288)
