"""The window and sinks of `python -m ahn_jax.generate`: the flags, else what the AHN weights'
config.json records (the reference builds its inference model from that config), else 32640 and
128."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ahn_jax.checkpoints import recorded
from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.inference import generate as generate_lib
from ahn_jax.tokenizer import ByteTokenizer

ROOT = Path(__file__).parents[2]
DEMO_BASE = ROOT / "ahn_jax" / "assets" / "demo_base"
DEFAULTS = {"window": 32640, "sinks": 128}
PROMPT = "To be, or not to be, that is the question: whether"  # 51 bytes > S + W = 18


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """AHN weights for the demo base recording W = 16, S = 2; the same trained on random windows
    (`sliding_window_type` "random", as the reference's training script writes it), also
    without num_attn_sinks (as the released configs); and a merged directory's config (AHN fields
    beside the base's)."""
    root = tmp_path_factory.mktemp("ahn")
    model = from_pretrained(DEMO_BASE, ahn_type="gdn", ahn_output_init="normal")
    ahn = model.save_ahn(root / "ahn", window=16, sinks=2)
    hf = json.loads((ahn / "config.json").read_text())
    random = {**hf, "sliding_window_type": "random", "ahn_position": "random"}
    released = {k: v for k, v in random.items() if k != "num_attn_sinks"}
    dirs = {"random": random, "released": released, "merged": {**hf, "save_ahn_only": False}}
    for name, config in dirs.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        if name != "merged":
            (root / name / "model.safetensors").write_bytes(
                (ahn / "model.safetensors").read_bytes()
            )
    return {"model": model, "ahn": ahn, **{name: root / name for name in dirs}}


def test_recorded_window_and_sinks_of_ahn_only_merged_and_plain_directories(exports):
    ahn, released, merged = exports["ahn"], exports["released"], exports["merged"]
    assert recorded.recorded_attention(DEMO_BASE, ahn) == recorded.Recorded(
        {"window": 16, "sinks": 2}, ahn / "config.json"
    )
    assert recorded.recorded_attention(DEMO_BASE, released) == recorded.Recorded(
        {"window": 16}, released / "config.json", window_sampling="random"
    )
    assert recorded.recorded_attention(merged, None).values == {"window": 16, "sinks": 2}
    assert recorded.recorded_attention(DEMO_BASE, None) == recorded.NOTHING  # Orbax, no AHN


def test_flags_come_first_then_the_file_then_the_defaults(exports):
    found = recorded.recorded_attention(DEMO_BASE, exports["released"])
    source = exports["released"] / "config.json"
    none = {"window": None, "sinks": None}
    assert recorded.window_and_sinks(none, found, DEFAULTS) == (
        {"window": 16, "sinks": 128},
        f"window 16 ({source}, which records weights trained on random windows), sinks 128 "
        "(default)",
    )  # fmt: skip
    assert recorded.window_and_sinks({"window": 8, "sinks": 0}, found, DEFAULTS) == (
        {"window": 8, "sinks": 0}, "window 8 (--window), sinks 0 (--sinks)"
    )  # fmt: skip
    assert recorded.window_and_sinks(none, recorded.NOTHING, DEFAULTS)[1] == (
        "window 32640, sinks 128 (default)"
    )


def _generate_cli(tmp_path, *flags) -> tuple[str, str]:
    """(the completion of PROMPT, stderr) of `python -m ahn_jax.generate` on the demo base."""
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n")
    done = subprocess.run([sys.executable, "-m", "ahn_jax.generate", f"--model={DEMO_BASE}",
                           f"--jsonl={prompts}", f"--out={out}", "--max_new_tokens=6", *flags],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())["completion"], done.stderr


def _completion(model, window: int, sinks: int) -> str:
    tokenizer = ByteTokenizer()
    new = generate_lib.generate(model, [tokenizer.encode(PROMPT)], max_new_tokens=6, mode="ahn",
                                window=window, sinks=sinks)  # fmt: skip
    return tokenizer.decode(new[0])


def test_generate_decodes_with_the_recorded_window_and_sinks_unless_flags_say_otherwise(
    exports, tmp_path
):
    ahn, model = exports["ahn"], exports["model"]
    recorded_run, stderr = _generate_cli(tmp_path, f"--ahn={ahn}")
    assert f"mode ahn: window 16, sinks 2 ({ahn / 'config.json'})" in stderr
    assert recorded_run == _completion(model, 16, 2) != _completion(model, 32640, 128)
    flagged, stderr = _generate_cli(tmp_path, f"--ahn={ahn}", "--window=24")
    assert f"mode ahn: window 24 (--window), sinks 2 ({ahn / 'config.json'})" in stderr
    assert flagged == _completion(model, 24, 2)


def test_an_orbax_checkpoint_of_a_merged_directory_keeps_its_window_and_sinks(exports, tmp_path):
    """HF merged (W = 16, S = 2 recorded, trained on random windows) -> Orbax: the marker keeps
    them, so generate and `convert --ahn_only` use them (they fell back to 32640 / 128, and
    "fixed"); a flag still wins."""
    from ahn_jax.checkpoints import convert, layouts

    base_hf = convert.orbax_to_hf(DEMO_BASE, tmp_path / "base_hf")
    merged = layouts.merge(base_hf, exports["random"], tmp_path / "merged")
    orbax = convert.hf_to_orbax(merged, tmp_path / "orbax")
    assert recorded.recorded_attention(orbax, None).values == {"window": 16, "sinks": 2}
    exported = json.loads(
        (convert.orbax_to_ahn(orbax, tmp_path / "ahn") / "config.json").read_text()
    )
    assert (exported["sliding_window"], exported["num_attn_sinks"]) == (16, 2)
    assert (exported["sliding_window_type"], exported["ahn_position"]) == ("random", "random")
    chosen = convert.orbax_to_ahn(orbax, tmp_path / "ahn8", window=8)
    assert json.loads((chosen / "config.json").read_text())["sliding_window"] == 8
    assert from_pretrained(orbax).config.ahn_type == "gdn"  # the marker's extra keys are not read
