"""Parameter counts from shapes alone, against ahn_spec §1.3 (which reproduces the reference)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ahn_jax.config import load_config_file, validate_config
from ahn_jax.costs import parameter_counts

CONFIGS = Path(__file__).parent.parent / "configs"
AHN_PARAMS = {  # ahn_spec §1.3
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
