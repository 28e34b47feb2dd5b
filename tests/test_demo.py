"""`make demo QUICK=1`'s job: base, distillation through the real entry point, recall scoring."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _demo(*args):
    return subprocess.run(
        [sys.executable, "-m", "ahn_jax.demo", *args],
        cwd=ROOT,
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
