"""`make demo`'s job runs on real text and prints an honest loss."""

import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_demo_prints_loss_on_real_text():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ahn_jax.demo",
            "--config.demo.seq_len=64",
            "--config.demo.batch_size=2",
            "--play=macbeth",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "of 'macbeth'" in result.stdout
    loss = float(re.search(r"next-byte loss: ([0-9.]+) nats/byte", result.stdout).group(1))
    # an untrained model is close to, but not exactly, the uniform guess
    assert abs(loss - math.log(256)) < 0.5 and loss != round(math.log(256), 4)


def test_demo_rejects_unknown_play():
    result = subprocess.run(
        [sys.executable, "-m", "ahn_jax.demo", "--play=hamlet2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0 and "is not one of" in result.stderr
