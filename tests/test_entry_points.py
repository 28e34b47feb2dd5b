"""The `python -m ahn_jax.X` tools as a user runs them, outside make and pytest's environment: the
platform choice they make themselves (ahn_jax/xla_cpu.py), and a training run without its base or
data stopping at once."""

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ahn_jax import xla_cpu

ROOT = Path(__file__).parents[1]
ENTRY_POINTS = ("train.py", "evaluate.py", "generate.py", "convert.py", "compile_check.py",
                "costs/__main__.py", "demo/__main__.py")  # fmt: skip
ON_AN_ACCELERATOR = xla_cpu._has_tpu() or xla_cpu._has_gpu()


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: none of the settings tests/conftest.py makes."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    return env | {"PYTHONPATH": str(ROOT)}


def test_a_cpu_host_runs_on_the_cpu_with_the_users_xla_flags_untouched():
    assert xla_cpu.platform_environment({}, tpu=False, gpu=False) == {"JAX_PLATFORMS": "cpu"}
    given = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true --xla_dump_to=/tmp/x"}
    assert xla_cpu.platform_environment(given, tpu=False, gpu=False) == {"JAX_PLATFORMS": "cpu"}


def test_an_accelerator_or_the_users_choice_is_left_alone():
    assert xla_cpu.platform_environment({}, tpu=True, gpu=False) == {}
    assert xla_cpu.platform_environment({}, tpu=False, gpu=True) == {}
    assert xla_cpu.platform_environment({"JAX_PLATFORMS": "tpu"}, tpu=False, gpu=False) == {}
    assert xla_cpu.platform_environment({"JAX_PLATFORMS": "cpu"}, tpu=False, gpu=True) == {}


def test_libtpu_is_told_the_host_only_when_it_compiles_without_a_tpu():
    compiling = xla_cpu.platform_environment({}, tpu=False, gpu=False, compiles_for_tpu=True)
    assert compiling.items() >= xla_cpu.LIBTPU_WITHOUT_TPU.items()
    users = {"TPU_ACCELERATOR_TYPE": "v6e-8"}
    kept = xla_cpu.platform_environment(users, tpu=False, gpu=False, compiles_for_tpu=True)
    assert "TPU_ACCELERATOR_TYPE" not in kept
    assert xla_cpu.platform_environment({}, tpu=True, gpu=False, compiles_for_tpu=True) == {}


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_every_entry_point_configures_the_platform_first(path):
    """Before anything else in its `__main__` block: the flags' definitions and parsing can load
    config files, and main() makes the backend."""
    tree = ast.parse((ROOT / "ahn_jax" / path).read_text())
    main_blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n)]
    assert len(main_blocks) == 1, path
    first = ast.unparse(main_blocks[0].body[0])
    assert first.startswith("xla_cpu.configure_platform("), (path, first)


# Runs ahn_jax.train as `python -m` does and prints, at exit, the environment it ran with.
PROBE = """
import atexit, os, runpy, sys
atexit.register(lambda: print(os.environ.get("JAX_PLATFORMS"), "|", os.environ.get("XLA_FLAGS")))
sys.argv = ["ahn_jax.train", *sys.argv[1:]]
runpy.run_module("ahn_jax.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.skipif(ON_AN_ACCELERATOR, reason="a CPU host's behaviour")
def test_a_cli_on_a_cpu_host_prints_no_tpu_errors_and_runs_on_the_cpu(tmp_path):
    """jax[tpu]'s libtpu is installed here without a chip: left to itself, JAX's first backend
    would print libtpu's initialisation errors before falling back to the CPU. The run stops at
    the mesh check, right after JAX made its backend (one CPU device)."""
    command = [sys.executable, "-c", PROBE, "--config=configs/tiny_gdn.py",
               "--config.train.mesh=data=3", f"--config.train.output_dir={tmp_path}"]  # fmt: skip
    done = subprocess.run(command, env=_clean_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: train.mesh = 'data=3'" in done.stderr and "but 1" in done.stderr, done.stderr
    assert "TPU" not in done.stderr and "libtpu" not in done.stderr, done.stderr
    platforms, flags = done.stdout.strip().splitlines()[-1].split(" | ")
    # the one flag of ours: the workaround for jaxlib 0.10.2's YNN reduction crash
    assert platforms == "cpu" and flags == xla_cpu.YNN_REDUCE_WORKAROUND


def test_import_ahn_jax_avoids_the_ynn_reduction_crash():
    """jaxlib 0.10.2 crashes running this reduction on some CPUs (xla_cpu.YNN_REDUCE_WORKAROUND):
    on this project's 2-core AMD EPYC host the same program without `import ahn_jax` dies with
    SIGSEGV inside YNNPACK (checked by hand, 2026-12-06). After the import it runs."""
    code = (
        "import ahn_jax, jax, jax.numpy as jnp; x = jnp.ones((2, 2, 1, 2, 32, 2, 32)); "
        "print(float(jax.jit(lambda a, b: (a * b).sum(4))(x, x + 1).sum()))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_clean_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.split()[-1]) == 512 * 32 * 2  # 512 sums of 32 products of 2


def test_training_without_base_or_data_stops_at_once_naming_both():
    """The real configs carry the model's shape only: building a 3B model on a random init would
    take minutes and tens of GB before anything failed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ahn_jax.train", "--config=configs/qwen3b_gdn.py"],
                          env=_clean_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr[-3000:]
    assert seconds < 10, seconds
    message = done.stderr
    assert message.startswith("error: this run needs train.base_checkpoint"), message
    assert "data.paths" in message and "--config.train.base_checkpoint=/path/" in message
    assert "--config.data.paths=/path/" in message and "allow_random_base" in message
    assert "TPU" not in message and "Traceback" not in message
