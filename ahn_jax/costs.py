"""What a config costs, from shapes alone (nothing is allocated).

  python -m ahn_jax.costs --config=configs/qwen3b_gdn.py [--ahn_type gdn|dn|mamba2] [--json]

Prints the base model's and the AHN's parameter counts (ahn_spec §1.3); `jax.eval_shape` builds
the model abstractly, so a 14B config costs milliseconds and no memory.
"""

from __future__ import annotations

import json

from absl import app, flags
from flax import nnx

from ahn_jax import cli
from ahn_jax.ahn import AhnParam
from ahn_jax.config import AHN_TYPES, ModelConfig, validate_config
from ahn_jax.model import abstract_model

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags, defined only when this module is the entry point (training imports it)."""
    cli.define_config_flag()
    flags.DEFINE_enum("ahn_type", None, AHN_TYPES, "AHN type (default: the config's)")
    flags.DEFINE_bool("json", False, "print one JSON object")


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Base and AHN parameter counts of a config (AHN counted in every layer, as the reference
    builds it even for layers kept as full attention)."""
    _, ahn_state, base_state = nnx.split(abstract_model(config), AhnParam, ...)

    def count(state):
        return sum(leaf.size for leaf in nnx.to_flat_state(state).leaves)

    return {"base_params": count(base_state), "ahn_params": count(ahn_state)}


def report(config: ModelConfig) -> dict:
    counts = parameter_counts(config)
    return {
        "ahn_type": config.ahn_type,
        **counts,
        "ahn_fraction": counts["ahn_params"] / counts["base_params"],
        "ahn_params_per_layer": counts["ahn_params"] // config.num_layers,
    }


def main(argv) -> None:
    del argv
    if cli.config() is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    config = validate_config(cli.config())
    if FLAGS.ahn_type is not None:
        config = config.replace(ahn_type=FLAGS.ahn_type)
    result = report(config)
    if FLAGS.json:
        print(json.dumps(result))
        return
    print(f"AHN type:       {result['ahn_type']}")
    print(f"base params:    {result['base_params']:,}")
    print(
        f"AHN params:     {result['ahn_params']:,} ({100 * result['ahn_fraction']:.2f}% of the "
        f"base; {result['ahn_params_per_layer']:,} per layer)"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
