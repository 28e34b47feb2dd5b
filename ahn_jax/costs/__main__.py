"""`python -m ahn_jax.costs`: what a config costs, from shapes alone (parameters, cache memory,
FLOPs); the work is ahn_jax/costs/table.py's."""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from ahn_jax import cli, xla_cpu
from ahn_jax.config import AHN_TYPES, ConfigError, TrainConfig, validate_config
from ahn_jax.config.windows import fixed_window
from ahn_jax.costs import table

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags, defined only when this module is the entry point."""
    cli.define_config_flag()
    flags.DEFINE_enum("ahn_type", None, AHN_TYPES, "AHN type (default: the config's)")
    flags.DEFINE_list(
        "full_attention_layers",
        None,
        "comma list of layer ids kept as full attention (default: the config's; empty: none)",
    )
    flags.DEFINE_integer("length", 128_000, "context length L in tokens", lower_bound=1)
    flags.DEFINE_integer(
        "window",
        32_640,
        "sliding window W (tokens, sinks excluded); default: the config's where its training "
        "fixes one, else 32640",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "sinks",
        128,
        "attention sinks S; default: the config's where fixed, else 128",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "bytes_per_element", 4, "bytes per cached value (the paper: 4)", lower_bound=1
    )
    flags.DEFINE_string("plot", None, "write a PNG of cache and FLOPs against length here")
    flags.DEFINE_bool("json", False, "print one JSON object")


def _layer_ids(values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError as e:
        raise app.UsageError(
            f"--full_attention_layers must be a comma list of layer ids, got {values}"
        ) from e


def _window_and_sinks(config) -> tuple[int, int, str]:
    """(W, S, where they came from): each flag given wins; else the config's where its training
    fixes them (`config.windows.fixed_window`: e.g. the demo's W = 32, S = 4), else the flags'
    defaults (W + S = 32,768, the paper's Table 9)."""
    fixed = None
    if "train" in config:
        fixed = fixed_window(TrainConfig.from_dict(config.train.to_dict()))
    name = config_flags.get_config_filename(FLAGS["config"])
    chosen, sources = {}, {}
    for flag, at in (("window", 0), ("sinks", 1)):
        if FLAGS[flag].present:
            chosen[flag], sources[flag] = FLAGS[flag].value, f"--{flag}"
        elif fixed:
            chosen[flag], sources[flag] = fixed[at], f"{name}'s {fixed[2]}"
        else:
            chosen[flag], sources[flag] = FLAGS[flag].value, "the defaults; the config fixes none"
    if sources["window"] == sources["sinks"]:
        return chosen["window"], chosen["sinks"], f"W and S: {sources['window']}"
    return chosen["window"], chosen["sinks"], f"W: {sources['window']}; S: {sources['sinks']}"


def main(argv) -> None:
    del argv
    if cli.config() is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    config = validate_config(cli.config())
    try:  # a bad value names its field (ConfigError) and the flag that set it
        if FLAGS.ahn_type is not None:
            config = config.replace(ahn_type=FLAGS.ahn_type)
        if FLAGS.full_attention_layers is not None:
            config = config.replace(full_attention_layers=_layer_ids(FLAGS.full_attention_layers))
    except ConfigError as error:
        raise app.UsageError(f"--ahn_type / --full_attention_layers: {error}") from error
    if config.ahn_type is None:  # the AHN's parameters, gates and cache would be reported as 0
        raise app.UsageError(
            f"{config_flags.get_config_filename(FLAGS['config'])} sets no AHN type (ahn.type = "
            "None): give --ahn_type "
            "gdn|dn|mamba2 for the costs with that AHN"
        )
    window, sinks, source = _window_and_sinks(cli.config())
    args = (FLAGS.length, window, sinks, FLAGS.bytes_per_element)
    result = table.report(config, *args, window_source=source)
    name = Path(config_flags.get_config_filename(FLAGS["config"])).name
    plot = table.plot(config, FLAGS.plot, *args, title=f"{name} ({source})") if FLAGS.plot else None
    if FLAGS.json:
        print(json.dumps(result))
        return
    print(table.format_report(result))
    if plot:
        print(f"plot:           {plot}")


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    define_flags()
    cli.run(main, user_errors=(ConfigError, OSError))  # OSError: --plot's path
