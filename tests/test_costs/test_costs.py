"""Costs from shapes: parameter counts (docs/method.md §Costs), cache memory and FLOPs (Table 9)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ahn_jax.config import MODES, load_config_file, validate_config
from ahn_jax.costs import table
from ahn_jax.costs.table import parameter_counts

CONFIGS = Path(__file__).parents[2] / "configs"
AHN_PARAMS = {  # docs/method.md §Costs
    "qwen3b": {"mamba2": 11_872_512, "dn": 11_801_088, "gdn": 12_982_464},
    "qwen7b": {"mamba2": 18_568_256, "dn": 18_468_352, "gdn": 21_280_560},
    "qwen14b": {"mamba2": 51_371_520, "dn": 51_124_224, "gdn": 60_960_384},
}
BASE_PARAMS = {"qwen3b": 3_085_938_688, "qwen7b": 7_615_616_512, "qwen14b": 14_770_033_664}


@pytest.mark.parametrize("base", sorted(AHN_PARAMS))
def test_parameter_counts_match_the_reference(base):
    config = validate_config(load_config_file(CONFIGS / f"{base}_gdn.py"))
    for ahn_type, expected in AHN_PARAMS[base].items():
        counts = parameter_counts(config.replace(ahn_type=ahn_type))
        assert counts == {"base_params": BASE_PARAMS[base], "ahn_params": expected}, ahn_type


def test_costs_cli_prints_json():
    out = subprocess.run(
        [sys.executable, "-m", "ahn_jax.costs", f"--config={CONFIGS / 'qwen7b_gdn.py'}",
         "--ahn_type", "dn", "--json"],
        capture_output=True, text=True, check=True, cwd=CONFIGS.parent,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["base_params"] == BASE_PARAMS["qwen7b"]
    assert result["ahn_params"] == 18_468_352
    assert result["ahn_type"] == "dn"


def test_every_cost_has_each_mode_in_the_json_and_the_table_in_readable_units():
    """The tiny demo base at 1k tokens: caches of kilobytes and a megabyte, not "0.00 GB"."""
    tiny = validate_config(load_config_file(CONFIGS / "tiny_base.py"))
    result = table.report(tiny, length=1024, window=32, sinks=4)
    text = table.format_report(result)
    for key in ("cache_bytes", "mixing_flops", "model_flops", "forward_flops"):
        assert set(result[key]) == set(MODES), key
    line = next(x for x in text.splitlines() if x.startswith("model FLOPs:"))
    assert all(f"{mode} {result['model_flops'][mode]:.3e}" in line for mode in MODES), line
    cache = result["cache_bytes"]
    assert (cache["full"], cache["swa"], result["gate_cache_bytes"]) == (1_048_576, 36_864, 0)
    assert "cache:          full 1.05 MB, swa 36.86 KB, ahn 53.25 KB" in text, text
    assert "gate cache:     0 B" in text and "GB" not in text
    # no AHN, no mode "ahn" to allocate a cache for
    assert result["allocated_cache_bytes"]["ahn"] is None and "ahn -" in text


def _config(base):
    return validate_config(load_config_file(CONFIGS / f"{base}_gdn.py"))


def test_table_9_cache_and_mixing_flops_at_128k():
    """The paper's Table 9 at L = 128,000, W + S = 32,768, 4 bytes per value, to its precision."""
    three_b = table.report(_config("qwen3b"))  # the CLI's defaults: W 32640, S 128
    cache = three_b["cache_bytes"]
    assert [round(cache[m] / 1e9, 2) for m in ("full", "swa", "ahn")] == [9.44, 2.42, 2.45]
    assert round(100 * (1 - cache["ahn"] / cache["full"]), 1) == 74.0
    for base, printed in (("qwen7b", [14.7, 3.76, 3.81]), ("qwen14b", [50.33, 12.88, 13.01])):
        cache = table.report(_config(base))["cache_bytes"]
        digits = 1 if base == "qwen7b" else 2  # the paper prints 7B's full cache as 14.7
        got = [round(cache["full"] / 1e9, digits)] + [
            round(cache[m] / 1e9, 2) for m in ("swa", "ahn")
        ]
        assert got == printed, base
    mixing_ratios = {b: table.report(_config(b))["ratios"]["mixing_ahn_over_full"]
                     for b in ("qwen3b", "qwen7b", "qwen14b")}  # fmt: skip
    assert {b: round(100 * r, 1) for b, r in mixing_ratios.items()} == {
        "qwen3b": 46.7, "qwen7b": 48.2, "qwen14b": 49.7
    }  # fmt: skip
    mixing = three_b["mixing_flops"]
    assert (round(mixing["full"] / 1e15, 2), round(mixing["ahn"] / 1e15, 2)) == (2.50, 1.17)
    fourteen = table.report(_config("qwen14b"))["mixing_flops"]
    # the paper prints 8.83 -> 4.38; the formula gives 8.826 -> 4.386 (its last digit truncated)
    assert fourteen["full"] / 1e15 == pytest.approx(8.83, abs=0.005)
    assert fourteen["ahn"] / 1e15 == pytest.approx(4.38, abs=0.01)
    # the gate cache the paper leaves out: (beta, log alpha) in fp32 per head and cached slot
    # (S + W + 1: the slot a decode step writes before it evicts)
    assert three_b["gate_cache_bytes"] == 36 * 32769 * 16 * 2 * 4


def test_cache_held_by_decode_equals_the_model_at_every_length():
    """Bytes really held by the decode cache, at lengths before and far beyond S + W, equal
    what `costs` predicts, and stay constant."""
    import jax.numpy as jnp
    from shared import tiny_config

    from ahn_jax.model.transformer import init_model

    config = tiny_config(num_layers=2, ahn_type="gdn")
    model = init_model(config, seed=0)
    window, sinks = 12, 4
    for mode in ("ahn", "swa"):
        predicted = table.decode_cache_bytes(config, window, sinks, mode, batch_size=2)
        cache = model.init_cache(2, window=window, sinks=sinks, mode=mode)
        held = []
        ids = jnp.ones((2, 5), jnp.int32)
        for _ in range(8):  # 40 tokens: the window fills at 16, then evicts
            _, cache = model.prefill(ids, cache)
            held.append(cache.nbytes())
        assert held == [predicted] * 8, mode
    # the paper's formula is the KV + state part of it (fp32 here: 4 bytes per value), less the
    # one slot more than S + W that each layer keeps
    paper = table.cache_bytes(config, 40, window, sinks, bytes_per_element=4)["ahn"]
    one_slot = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4
    gates = table.gate_cache_bytes(config, window, sinks)
    assert table.decode_cache_bytes(config, window, sinks, "ahn") == (
        paper + one_slot + gates + 4 * (17 + 1)
    )


@pytest.mark.parametrize("ahn_type", ["gdn", "dn", "mamba2"])
def test_cost_model_counts_the_gate_rows_padding_lanes(ahn_type):
    """Qwen2.5-3B's heads and layers: the gate rows of 1,152 (GDN) or 576 (DN, Mamba2) values per
    slot, the latter padded to 640 lanes (cache.gate_width); the cost model counts what
    init_cache allocates."""
    import jax

    from ahn_jax.model.cache import gate_width
    from ahn_jax.model.transformer import abstract_model

    config = validate_config(load_config_file(CONFIGS / "qwen3b_gdn.py")).replace(ahn_type=ahn_type)
    cache = jax.eval_shape(lambda: abstract_model(config).init_cache(2, window=4064, sinks=32))
    held = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    assert held == table.decode_cache_bytes(config, 4064, 32, "ahn", batch_size=2)
    assert cache.gates.shape == (2, 4097, 1152 if ahn_type == "gdn" else 640)
    assert gate_width(2, 2, 2) == 8  # narrower than a lane row: as it is


def test_costs_cli_writes_the_plot(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ahn_jax.costs", f"--config={CONFIGS / 'qwen3b_gdn.py'}",
         "--length", "65536", "--window", "8064", "--sinks", "128", f"--plot={tmp_path / 'c'}"],
        capture_output=True, text=True, check=True, cwd=CONFIGS.parent,
    )  # fmt: skip
    assert "cache:" in out.stdout and "mixing FLOPs:" in out.stdout
    # no extension: matplotlib writes a PNG under c.png, and the line names that file
    assert f"plot:           {tmp_path / 'c.png'}" in out.stdout
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("tied", [False, True])
def test_forward_flops_equal_xlas_count_and_the_papers_exceed_it(tied):
    """XLA's cost analysis of a real forward pass (one layer: XLA counts a scanned body once; T
    within one attention block, so every query-key pair is computed, causal or not) against
    `forward_flops` with the dense pairs: equal up to the elementwise work (norms, softmax, RoPE,
    SiLU: a few %). The paper's `model_flops` counts the q, k, v, o projections twice (and,
    untied, the embedding lookup as a matmul): well above what runs."""
    import jax.numpy as jnp
    from flax import nnx
    from shared import tiny_config

    from ahn_jax.costs import formulas
    from ahn_jax.model import transformer as model_lib

    config = tiny_config(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=1,
                         head_dim=32, tie_word_embeddings=tied)  # fmt: skip
    graphdef, state = nnx.split(model_lib.init_model(config, seed=0))
    L = 256
    ids, positions = jnp.zeros((1, L), jnp.int32), jnp.arange(L)[None]
    compiled = model_lib.forward.lower(graphdef, state, ids, positions, L, 0, mode="full").compile()
    analysis = compiled.cost_analysis()
    xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    dense = formulas.forward_flops(config, L, "full") + formulas.attention_flops(config, L, "full")
    assert 1.0 <= xla / dense < 1.04
    paper = formulas.model_flops(
        config, L, "full", base_params=parameter_counts(config)["base_params"]
    )
    assert paper + formulas.attention_flops(config, L, "full") > 1.1 * xla


def test_a_full_attention_training_step_is_three_forwards_whatever_the_window():
    """Pretraining's step: the forward, then a backward through every weight matmul twice (the
    activations' and the weights' gradients) and through attention twice; no window."""
    from shared import tiny_config

    from ahn_jax.costs import formulas

    config = tiny_config(num_layers=2)
    L = 96
    matmuls, attention = (
        2 * L * formulas.matmul_weights(config),
        2 * config.head_dim * (config.num_heads * L**2 * config.num_layers),
    )
    assert formulas.attention_flops(config, L, "full") == attention
    assert formulas.full_attention_step_flops(config, L) == 3 * matmuls + 3 * attention
    # distillation's step counts no weight gradient and adds the teacher: not the same number
    assert formulas.full_attention_step_flops(config, L) != formulas.distillation_step_flops(
        config, L, 32
    )


def _costs_json(*flags):
    command = [sys.executable, "-m", "ahn_jax.costs", "--json", *flags]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=CONFIGS.parent)
    return json.loads(out.stdout)


def test_costs_cli_takes_the_window_and_sinks_a_config_fixes_unless_flags_are_given():
    """configs/demo_gdn.py trains and scores at W = 32, S = 4: its costs are those, not the
    paper's 32,640 + 128, and the report says where W and S came from; a flag overrides one."""
    demo = _costs_json(f"--config={CONFIGS / 'demo_gdn.py'}", "--length=1024")
    assert (demo["window"], demo["sinks"]) == (32, 4)
    assert demo["window_source"] == (
        f"W and S: {CONFIGS / 'demo_gdn.py'}'s train.window / train.sinks"
    )
    assert demo["ratios"]["cache_ahn_over_full"] < 0.1  # was 101.6% at W + S = 32,768 > L
    text = table.format_report(demo)
    assert "at L = 1,024, W = 32, S = 4 (W and S: " in text
    wider = _costs_json(f"--config={CONFIGS / 'demo_gdn.py'}", "--length=1024", "--window=64")
    assert (wider["window"], wider["sinks"]) == (64, 4)
    assert wider["window_source"].startswith("W: --window; S: ")


def test_the_fixed_window_reads_fixed_and_single_choice_configs_only():
    from ahn_jax.config import TrainConfig
    from ahn_jax.config.windows import fixed_window

    def window(**train):
        return fixed_window(TrainConfig(**train))

    assert window(window_sampling="fixed", window=32, sinks=4)[:2] == (32, 4)
    assert window(window_choices=(64,), sink_choices=(4,))[:2] == (60, 4)
    # a sink above (W + S) / 2 is never drawn: S = 0, as training/windows.py draws it
    assert window(window_choices=(64,), sink_choices=(48,))[:2] == (64, 0)
    assert window(window_choices=(64, 128), sink_choices=(4,)) is None
    assert window(window_sampling="linear") is None
    assert window(objective="pretrain", window_sampling="fixed", window=32, sinks=4) is None
    # the training export's config.json records the same pair (costs and generate agree)
    from ahn_jax.training.checkpointing import export_attention

    assert export_attention(TrainConfig(window_choices=(64,), sink_choices=(4,))) == (60, 4)
    assert export_attention(TrainConfig(window_choices=(64, 128))) == (32640, 128)


def test_allocated_cache_is_what_init_cache_allocates_whatever_the_length():
    """The paper's cache counts the values held at L (min(L, S + W) tokens a windowed layer); the
    real cache allocates S + W + 1 slots up front, gates included, whatever L. The report gives
    both, each consistent: the gate cache is part of the allocated bytes, not of the paper's."""
    from shared import tiny_config

    from ahn_jax.model.transformer import init_model

    config = tiny_config(num_layers=2, ahn_type="gdn")
    model = init_model(config, seed=0)
    window, sinks = 28, 4
    for length in (10, 1000):  # below and far beyond S + W
        result = table.report(config, length, window, sinks)
        allocated = result["allocated_cache_bytes"]
        for mode in ("swa", "ahn"):
            cache = model.init_cache(1, window=window, sinks=sinks, mode=mode)
            assert allocated[mode] == cache.nbytes(), (length, mode)
        full = model.init_cache(1, window=length, sinks=0, mode="full")
        assert allocated["full"] == full.nbytes(), length
        gates = table.gate_cache_bytes(config, window, sinks)
        states = 4 * config.num_layers * config.num_heads * config.head_dim**2
        assert allocated["ahn"] - allocated["swa"] == gates + states
        held = min(length, window + sinks)
        kv = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4
        assert result["cache_bytes"]["swa"] == held * kv  # the paper's: no slot to spare, no gates
        text = table.format_report(result)
        assert f"{held:,} tokens a windowed layer" in text
        assert "allocated:      full " in text and "S + W + 1 slots whatever L" in text
