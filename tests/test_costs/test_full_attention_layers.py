"""Layers kept as full attention (the reference's fa_layer_ids) in the cost model: each costs as
full attention at L, the others as window + AHN; with none, nothing changes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ahn_jax.config import load_config_file, validate_config
from ahn_jax.costs import formulas, table

CONFIGS = Path(__file__).parents[2] / "configs"
L, W, S = 128_000, 32_640, 128


@pytest.fixture(scope="module")
def qwen3b():
    return validate_config(load_config_file(CONFIGS / "qwen3b_gdn.py"))  # 36 layers


@pytest.mark.parametrize("full_layers", [(), (0,), (0, 17, 35)])
def test_flops_and_cache_are_per_layer_sums(qwen3b, full_layers):
    config = qwen3b.replace(full_attention_layers=full_layers)
    one = qwen3b.replace(num_layers=1)  # a single layer's costs
    k, n = len(full_layers), qwen3b.num_layers
    for mode in ("swa", "ahn"):
        layer_full = formulas.mixing_flops(one, L, "full")
        layer_mode = formulas.mixing_flops(one, L, mode, W + S)
        expected = k * layer_full + (n - k) * layer_mode
        assert formulas.mixing_flops(config, L, mode, W + S) == expected, mode
    assert formulas.mixing_flops(config, L, "full") == n * formulas.mixing_flops(one, L, "full")
    cache, one_cache = table.cache_bytes(config, L, W, S), table.cache_bytes(one, L, W, S)
    assert cache["full"] == n * one_cache["full"]
    for mode in ("swa", "ahn"):
        assert cache[mode] == k * one_cache["full"] + (n - k) * one_cache[mode], mode
    # the windowed layers' gates, one row per slot padded to whole 128-lane rows (cache.py)
    per_layer = table.gate_cache_bytes(one, W, S)
    gates = table.gate_cache_bytes(config, W, S)
    assert (n - k) * per_layer <= gates < (n - k) * per_layer + (W + S + 1) * 128 * 4
    assert gates % ((W + S + 1) * 128 * 4) == 0
    base = table.parameter_counts(qwen3b)["base_params"]
    assert formulas.model_flops(config, L, "ahn", W + S, base_params=base) == pytest.approx(
        formulas.mixing_flops(config, L, "ahn", W + S) + 2 * L * base
    )


def test_no_full_layers_is_the_paper_setting(qwen3b):
    plain = table.report(qwen3b)
    assert plain["full_attention_layers"] == []
    assert table.report(qwen3b.replace(full_attention_layers=())) == plain
    assert "full attention:" not in table.format_report(plain)
    with_full = table.report(qwen3b.replace(full_attention_layers=(3, 1)))
    assert with_full["full_attention_layers"] == [1, 3]
    assert with_full["cache_bytes"]["ahn"] > plain["cache_bytes"]["ahn"]
    assert with_full["mixing_flops"]["ahn"] > plain["mixing_flops"]["ahn"]
    assert with_full["mixing_flops"]["full"] == plain["mixing_flops"]["full"]
    assert "full attention: layers [1, 3]" in table.format_report(with_full)


def test_decode_cache_bytes_with_full_layers():
    """Full layers hold K and V of `max_length` positions and their own int32 positions, and no
    gates or state; the others S + W + 1 slots. Checked against a real cache as well."""
    from shared import tiny_config

    from ahn_jax.model.transformer import init_model

    config = tiny_config(num_layers=3, ahn_type="gdn", full_attention_layers=(1,))
    # C: S + W + 1 slots per windowed layer (ahn_jax/model/cache.py)
    B, C, M, K, H, N = 2, 17, 50, config.num_kv_heads, config.head_dim, config.num_heads
    kv = 2 * B * K * H * 4  # K and V of one slot, fp32
    expected = {
        "full": 3 * C * kv + 4 * B * (C + 1),
        "swa": 2 * C * kv + M * kv + 4 * B * (C + 1 + M),
        "ahn": 2 * C * kv + M * kv + 4 * B * (C + 1 + M) + 2 * 4 * B * N * (2 * C + H * H),
    }
    model = init_model(config, seed=0)
    for mode, size in expected.items():
        W, S = (16, 0) if mode == "full" else (12, 4)  # mode "full" takes no sinks: C alike
        assert table.decode_cache_bytes(config, W, S, mode, B, max_length=M) == size, mode
        cache = model.init_cache(B, window=W, sinks=S, mode=mode, max_length=M)
        assert cache.nbytes() == size, mode
    # without full layers max_length changes nothing
    plain = config.replace(full_attention_layers=())
    assert table.decode_cache_bytes(plain, 12, 4, "ahn", B, max_length=M) == (
        table.decode_cache_bytes(plain, 12, 4, "ahn", B)
    )
    with pytest.raises(ValueError, match="max_length"):
        table.decode_cache_bytes(config, 12, 4, "ahn", B)


def _cli(*flags):
    return subprocess.run(
        [sys.executable, "-m", "ahn_jax.costs", f"--config={CONFIGS / 'qwen3b_gdn.py'}", *flags],
        capture_output=True, text=True, cwd=CONFIGS.parent,
    )  # fmt: skip


def test_costs_cli_full_attention_layers_flag(qwen3b):
    out = _cli("--full_attention_layers=0,17", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # qwen3b_gdn.py draws its windows: the CLI's default W and S, and it says so
    assert result["window_source"] == "W and S: the defaults; the config fixes none"
    expected = table.report(
        qwen3b.replace(full_attention_layers=(0, 17)), window_source=result["window_source"]
    )
    assert result == json.loads(json.dumps(expected))
    bad = _cli("--full_attention_layers=0,x")
    assert bad.returncode != 0 and "--full_attention_layers" in bad.stderr
    outside = _cli("--full_attention_layers=40")  # a usage error naming the flag, no traceback
    assert outside.returncode != 0 and "Traceback" not in outside.stderr
    assert "--full_attention_layers: ahn.full_attention_layers has layer ids [40]" in outside.stderr
