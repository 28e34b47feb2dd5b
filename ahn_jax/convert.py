"""`python -m ahn_jax.convert`: HF safetensors <-> converted weights, AHN-only exports, and the
merged layout (base + AHN in one directory) both ways (ahn_jax/checkpoints/convert.py, layouts.py).

  python -m ahn_jax.convert --hf_dir DIR --out CKPT [--dtype bfloat16|float32]
  python -m ahn_jax.convert --to_hf --ckpt CKPT --out DIR [--max_shard_gb 5]
  python -m ahn_jax.convert --ahn_only --ckpt CKPT --out DIR [--window 32640 --sinks 128]
  python -m ahn_jax.convert --merge --hf_dir BASE --ahn_dir AHN --out MERGED [--max_shard_gb 5]
  python -m ahn_jax.convert --split --hf_dir MERGED --out BASE --ahn_out AHN [--max_shard_gb 5]
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags

from ahn_jax import xla_cpu
from ahn_jax.checkpoints import ahn_weights, converted
from ahn_jax.checkpoints import convert as convert_lib

PROGRAM = "python -m ahn_jax.convert"


def define_flags(fv: flags.FlagValues) -> None:
    """The CLI's flags, on `fv` (a private FlagValues: `main` may be called as a function)."""
    flags.DEFINE_string("hf_dir", None, "HF checkpoint directory to read (HF -> Orbax, --merge's "
                        "base, --split's merged source)", flag_values=fv)  # fmt: skip
    flags.DEFINE_string("out", None, "output directory (must be new or empty); required",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_enum("dtype", None, list(convert_lib.DTYPE_CHOICES),
                      "stored dtype (default: as source)", flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("to_hf", False, "export an Orbax checkpoint to HF", flag_values=fv)
    flags.DEFINE_string("ckpt", None, "Orbax checkpoint written by ahn_jax (--to_hf, --ahn_only)",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("ahn_only", False, "export only the AHN weights, reference layout",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("window", None,
                         "--ahn_only: the inference W (without the sinks) config.json records "
                         f"(default: the checkpoint's, else {ahn_weights.DEFAULT_WINDOW})",
                         flag_values=fv, lower_bound=1)  # fmt: skip
    flags.DEFINE_integer("sinks", None,
                         "--ahn_only: the inference S config.json records (default: the "
                         f"checkpoint's, else {ahn_weights.DEFAULT_SINKS})",
                         flag_values=fv, lower_bound=0)  # fmt: skip
    flags.DEFINE_bool("merge", False, "write --hf_dir (base) + --ahn_dir (AHN-only) as one merged "
                      "directory, tensors copied byte for byte", flag_values=fv)  # fmt: skip
    flags.DEFINE_string("ahn_dir", None, "AHN-only directory to merge (with --merge)",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("split", False, "part a merged --hf_dir into the base (--out) and the "
                      "AHN-only weights (--ahn_out), byte for byte", flag_values=fv)  # fmt: skip
    flags.DEFINE_string("ahn_out", None, "where --split writes the AHN-only weights",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_float("max_shard_gb", 5.0, "HF shard size limit in GB (--to_hf, --merge, --split)",
                       flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("help", False, "show this help and exit", short_name="h", flag_values=fv)


def _usage_error(message: str) -> NoReturn:
    print(f"usage: {PROGRAM} --out DIR (--hf_dir DIR | --to_hf --ckpt CKPT | --ahn_only --ckpt "
          f"CKPT | --merge --hf_dir BASE --ahn_dir AHN | --split --hf_dir MERGED --ahn_out AHN) "
          f"[--help]\n{PROGRAM}: error: {message}", file=sys.stderr)  # fmt: skip
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    """Convert as the arguments (default: the command line's) say. The flags are parsed on a
    private absl FlagValues, so that this can be called with an argument list: it returns 0 when
    written and 2 when a checkpoint or the output directory is wrong; a usage error exits with
    status 2."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    try:
        extra = flag_values([PROGRAM, *(sys.argv[1:] if argv is None else argv)])[1:]
    except flags.Error as e:
        _usage_error(str(e))
    if flag_values.help:
        print(f"{__doc__}\n{flag_values.get_help()}")
        return 0
    if extra:
        _usage_error(f"unrecognized arguments: {' '.join(extra)}")
    if flag_values.out is None:
        _usage_error("the following arguments are required: --out")
    try:
        out = convert_lib.run(
            out=flag_values.out,
            hf_dir=flag_values.hf_dir,
            ckpt=flag_values.ckpt,
            dtype=flag_values.dtype,
            to_hf=flag_values.to_hf,
            ahn_only=flag_values.ahn_only,
            merge=flag_values.merge,
            split=flag_values.split,
            ahn_dir=flag_values.ahn_dir,
            ahn_out=flag_values.ahn_out,
            window=flag_values.window,
            sinks=flag_values.sinks,
            max_shard_gb=flag_values.max_shard_gb if flag_values["max_shard_gb"].present else None,
        )
    except convert_lib.ArgumentError as e:
        _usage_error(str(e))
    except convert_lib.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    if flag_values.to_hf:
        _note_ahn_left_out(flag_values.ckpt)
    return 0


def _note_ahn_left_out(ckpt: str) -> None:
    """--to_hf writes the base layout: say so when the checkpoint also holds AHN weights."""
    ahn = converted.read_marker(ckpt).get("ahn")
    if ahn:
        print(
            f"note: the {ahn['ahn_type']} AHN weights of {ckpt} are not in this base layout; "
            f"write them with: python -m ahn_jax.convert --ahn_only --ckpt {ckpt} --out DIR "
            "(and --merge them with it for one directory)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    xla_cpu.configure_platform()  # before JAX makes a backend
    sys.exit(main())
