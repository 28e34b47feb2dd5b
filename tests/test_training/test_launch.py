"""launch/: the pod script's command sequence (dry run) and the ahead-of-time TPU compile check of
the real train step."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from ahn_jax.config import ConfigError, make_config
from ahn_jax.training import compile_check

ROOT = Path(__file__).parents[2]
MODEL = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=1, num_heads=2,
             num_kv_heads=1, head_dim=128)  # fmt: skip


def dry_run(step: str, **env) -> list[list[str]]:
    settings = {**os.environ, "DRY_RUN": "1", "NAME": "ahn-test", "ZONE": "us-east5-a",
                "OUTPUT_DIR": "/gcs/bucket/run", **env}  # fmt: skip
    done = subprocess.run([str(ROOT / "launch" / "tpu_vm_pod.sh"), step], env=settings, cwd=ROOT,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return [shlex.split(line) for line in done.stdout.splitlines()]


def test_pod_script_creates_copies_sets_up_and_runs_on_every_worker():
    commands = dry_run("all", ACCELERATOR="v6e-8", EXTRA_FLAGS="--config.train.mesh=fsdp=8")
    verbs = [c[4] if c[0] == "gcloud" else c[0] for c in commands]
    assert verbs == ["create", "tar", "scp", "ssh", "ssh", "ssh"]
    assert "--accelerator-type=v6e-8" in commands[0] and "--version=v2-alpha-tpuv6e" in commands[0]
    for command in commands[2:]:
        assert "--worker=all" in command and "--zone=us-east5-a" in command
    train = next(a for a in commands[-1] if a.startswith("--command=")).split(" ")
    assert "ahn_jax.train" in train and "--config.train.distributed=True" in train
    assert "--config.train.output_dir=/gcs/bucket/run" in train
    assert "--config.train.mesh=fsdp=8" in train and "launch/env.sh" in train


def test_pod_script_fetches_each_workers_log_and_deletes():
    logs = dry_run("logs", ACCELERATOR="v5p-16")  # 8 chips: 2 hosts
    assert [c[-2] for c in logs if c[0] == "gcloud"] == ["--worker=0", "--worker=1"]
    assert dry_run("delete")[0][4:6] == ["delete", "ahn-test"]


@pytest.mark.timeout(600)
def test_train_step_compiles_for_a_tpu_topology_and_reports_its_memory():
    config = make_config(MODEL, ahn_type="gdn", train=dict(seq_len=256, batch_size=4),
                         data=dict(cutoff_len=256))  # fmt: skip
    report = compile_check.check(config, "v5e-4", seq_len=256, batch_size=4)
    assert report["chips"] == 4 and report["mesh"] == {"fsdp": 4}
    assert report["device_kind"].startswith("TPU v5")
    assert report["fits"] and 0 < report["peak_bytes_per_chip"] < report["hbm_bytes_per_chip"]
    assert report["temp_bytes"] > 0 and report["flops_per_chip"] > 0


def test_train_step_compiles_with_the_pallas_kernels_through_mosaic():
    # GQA through the attention kernel; two layers, so that the first layer's AHN gradient
    # passes back through the second layer's attention
    model = {**MODEL, "num_heads": 4, "num_kv_heads": 2, "num_layers": 2}
    config = make_config(model, ahn_type="gdn", train=dict(seq_len=256, batch_size=4),
                         data=dict(cutoff_len=256))  # fmt: skip
    report = compile_check.check(config, "v5e-4", seq_len=256, batch_size=4, kernels="pallas")
    assert (report["kernels"], report["recurrence"], report["attention"]) == (
        "pallas", "pallas", "pallas"
    )  # fmt: skip
    assert report["fits"] and report["flops_per_chip"] > 0 and report["compile_seconds"] > 0
    # in the compiled program: the attention's forward (teacher and student), dq and dk/dv
    # kernels and the recurrence scan's forward and backward
    assert report["pallas_calls"] == 6
    xla = compile_check.check(config, "v5e-4", seq_len=256, batch_size=4, kernels="xla")
    # on a TPU "xla" means the accelerator-shaped chunked form
    assert (xla["recurrence"], xla["attention"]) == ("batched", "blocked") and xla["fits"]
    assert xla["pallas_calls"] == 0
    with pytest.raises(ConfigError, match="--kernels must be one of"):
        compile_check.check(config, "v5e-4", kernels="cuda")


def test_decode_step_compiles_for_a_tpu_topology_with_the_cache_split_by_rows():
    config = make_config(MODEL, ahn_type="gdn")
    report = compile_check.check_decode(config, "v5e-4", batch_size=8, window=256, sinks=32)
    assert report["step"] == "decode" and report["fits"]
    # k and v of S + W slots, the gates and the state: split over the 4 chips by rows, and the
    # donated cache comes back in place (aliased)
    assert report["argument_bytes"] < report["cache_bytes"] / 2
    assert report["alias_bytes"] > 0 and report["bytes_accessed_per_chip"] > 0
    assert "decode step on v5e-4" in compile_check.format_report(report)


def test_unknown_topology_is_named():
    config = make_config(MODEL, ahn_type="gdn")
    with pytest.raises(ConfigError, match="'v9z-8' is not a TPU topology"):
        compile_check.check(config, "v9z-8")
