"""`make demo`'s job: trains through the real entry point, then scores held-out text."""

import re
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
        timeout=600,
        check=False,
    )


def test_demo_trains_then_scores_a_held_out_play(tmp_path):
    result = _demo(
        f"--config.train.output_dir={tmp_path / 'run'}",
        "--config.train.steps=3",
        "--config.train.batch_size=2",
        "--config.train.seq_len=128",
        "--config.data.cutoff_len=128",
        "--config.train.window_choices=(32, 64)",
        "--config.demo.seq_len=128",
        "--config.demo.batch_size=2",
        "--config.demo.window=32",
        "--play=macbeth",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out 'macbeth'" in result.stdout
    rows = dict(
        re.findall(
            r"\| (full attention|sinks \+ window(?: \+ AHN)?) \| ([0-9.]+) \|", result.stdout
        )
    )
    assert set(rows) == {"full attention", "sinks + window", "sinks + window + AHN"}
    assert all(0 < float(v) < 10 for v in rows.values())
    assert (tmp_path / "run" / "ahn" / "model.safetensors").is_file()


def test_demo_rejects_unknown_play():
    result = _demo("--play=hamlet2")
    assert result.returncode != 0 and "is not one of" in result.stderr
