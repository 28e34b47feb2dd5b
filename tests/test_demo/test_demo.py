"""`make demo QUICK=1`'s job: base, distillation through the real entry point, recall scoring."""

import json
import os
import subprocess
import sys
from pathlib import Path

from shared import COMPILE_FAST_FLAGS

ROOT = Path(__file__).parents[2]


def _users_environment() -> dict:
    """The environment without the tests' compile-speed XLA flags: the demo compiles and runs as
    `make demo` does on a user's machine (XLA:CPU's default code generation)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f not in COMPILE_FAST_FLAGS]
    return {**os.environ, "XLA_FLAGS": " ".join(flags)}


def _demo(*args):
    return subprocess.run(
        [sys.executable, "-m", "ahn_jax.demo", *args],
        cwd=ROOT,
        env=_users_environment(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_quick_demo_pretrains_distils_and_scores_held_out_plays(tmp_path):
    out = tmp_path / "demo"
    result = _demo("--quick", f"--out={out}", "--base=pretrain", "--config.train.batch_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrained here" in result.stdout
    assert (out / "gdn" / "ahn" / "model.safetensors").is_file()
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"full", "swa", "ahn-gdn"}
    assert results["plays"] == ["hamlet", "macbeth", "tempest", "twelfth_night"]
    for row in results["rows"].values():
        assert 0 < row["recall"]["mean"] < 10 and row["recall"]["stderr"] >= 0
    rows = results["rows"]  # the cache of sinks + window does not grow; full attention's does
    assert rows["swa"]["cache_bytes_1024"] == rows["swa"]["cache_bytes_8192"]
    assert rows["full"]["cache_bytes_8192"] > 7 * rows["full"]["cache_bytes_1024"]
    assert rows["ahn-gdn"]["cache_bytes_1024"] > rows["swa"]["cache_bytes_1024"]
    assert "| ahn-gdn |" in (out / "results.md").read_text()
    assert (out / "loss_by_position.png").stat().st_size > 0


def test_demo_rejects_unknown_types():
    result = _demo("--types=gdn,lstm")
    assert result.returncode != 0 and "unknown ['lstm']" in result.stderr


def test_the_claim_needs_the_gap_closed_beyond_its_error_and_reports_recall_below_chance():
    """summarize on hand-made per-play losses: gap (4 - 2.5) / (4 - 1) = 0.5 closed, 0.5 nats
    below the keys' loss; a model that only stops being worse than chance closes 1/6 and is not
    below it."""
    from types import SimpleNamespace

    from ahn_jax.config import ModelConfig
    from ahn_jax.demo import pipeline
    from configs.tiny_base import MODEL

    def losses(recall):
        return {"recall": recall, "key": 3.0, "text": 1.5}

    per_play = {
        play: {
            "full": losses(1.0 + d),
            "swa": losses(4.0 + d),
            "ahn-gdn": losses(2.5 + d),
            "ahn-dn": losses(3.5 + d),
        }  # fmt: skip
        for play, d in (("a", 0.0), ("b", 0.01), ("c", -0.01), ("d", 0.02))
    }
    model = SimpleNamespace(config=ModelConfig(**MODEL, ahn_type="gdn"))
    models = {"full": (model, "full"), "swa": (model, "swa"), "ahn-gdn": (model, "ahn"),
              "ahn-dn": (model, "ahn")}  # fmt: skip
    claims = pipeline.summarize(per_play, models, window=32, sinks=4)["claims"]
    gdn, dn = claims["ahn-gdn"], claims["ahn-dn"]
    assert gdn["holds"] and abs(gdn["gap_closed"]["mean"] - 0.5) < 0.01
    assert abs(gdn["below_keys_baseline"] - (3.0 - 2.5 - 0.005)) < 1e-9
    assert not dn["holds"] and dn["between_full_and_swa"] and dn["below_keys_baseline"] < 0
    assert abs(gdn["full_below_keys_baseline"] - (3.0 - 1.005)) < 1e-9
    # per play about (3 - 2.5) / (3 - 1) = 0.25 of full's margin; equal keys: the baselines agree
    own, full = (gdn[f"share_of_full_margin_{b}"] for b in ("own", "full"))
    assert abs(own["mean"] - 0.25) < 0.005 and 0 < own["stderr"] < 0.005 and own == full


def test_the_margin_share_from_full_attentions_keys_is_the_stricter_one():
    from ahn_jax.demo.scoring import margin_share

    per_play = {p: {"full": {"recall": 0.0, "key": 3.0}, "ahn": {"recall": 1.5, "key": 3.3}}
                for p in "ab"}  # fmt: skip
    assert abs(margin_share(per_play, "ahn", "own").mean - 0.6) < 1e-9  # (3.3 - 1.5) / 3
    assert abs(margin_share(per_play, "ahn", "full").mean - 0.5) < 1e-9  # (3.0 - 1.5) / 3


# the demo's entry point with pipeline.run replaced: it prints the output directory it is given,
# then stands for a Ctrl-C in the middle of the work
_INTERRUPTED_DEMO = """
import sys
from absl import app
from ahn_jax.demo import __main__ as demo, pipeline

def interrupted(*args, out, **kwargs):
    print(f"out={out}", flush=True)
    raise KeyboardInterrupt

pipeline.run = interrupted
demo.define_flags()
app.run(demo.main, argv=["demo", *sys.argv[1:]])
"""


def test_quick_runs_default_apart_and_ctrl_c_exits_130_without_a_traceback():
    """A full demo must not resume a quick one's 20-step training (runs/demo vs runs/demo_quick),
    and Ctrl-C tells how to resume instead of printing a traceback."""
    for args, out in ((["--quick"], "runs/demo_quick"), ([], "runs/demo")):
        result = subprocess.run([sys.executable, "-c", _INTERRUPTED_DEMO, *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 130, result.stderr[-2000:]
        assert f"out={out}\n" in result.stdout
        assert "the same command resumes" in result.stderr
        assert "Traceback" not in result.stderr
