"""launch/: the pod script's command sequence (dry run) and the ahead-of-time TPU compile check of
the real train step."""

import contextlib
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from ahn_jax.config import ConfigError, make_config
from ahn_jax.training import compile_check, tpu_topologies

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
    (spot,) = dry_run("create", CREATE_FLAGS="--spot --labels=team=ahn")
    assert spot[4] == "create" and {"--spot", "--labels=team=ahn"} <= set(spot)
    for command in commands[2:]:
        assert "--worker=all" in command and "--zone=us-east5-a" in command
    train = next(a for a in commands[-1] if a.startswith("--command=")).split(" ")
    assert "ahn_jax.train" in train and "--config.train.distributed=True" in train
    assert "--config.train.output_dir=/gcs/bucket/run" in train
    assert "--config.train.mesh=fsdp=8" in train and "launch/env.sh" in train


@pytest.mark.parametrize(
    "accelerator, hosts",
    [("v5p-8", 1), ("v5p-16", 2), ("v5p-32", 4), ("v4-64", 8), ("v6e-8", 1), ("v6e-16", 4),
     ("v5litepod-16", 4), ("v5litepod-4", 1)],
)  # fmt: skip
def test_pod_script_fetches_each_workers_log_and_deletes(accelerator, hosts):
    """v4/v5p: 4 chips (8 TensorCores) per host; v5e/v6e: up to 8 chips on one host, 4 per host
    in larger slices."""
    logs = dry_run("logs", ACCELERATOR=accelerator)
    workers = [c[-2] for c in logs if c[0] == "gcloud"]
    assert workers == [f"--worker={w}" for w in range(hosts)]
    assert dry_run("delete")[0][4:6] == ["delete", "ahn-test"]


def test_pod_script_mounts_the_bucket_and_starts_one_run_per_worker():
    commands = dry_run("all", ACCELERATOR="v5p-32", BUCKET="my-bucket")
    remote = [next(a for a in c if a.startswith("--command=")) for c in commands if "ssh" in c]
    setup, mount, train = remote[1:]
    assert "python3.11 -m venv ~/venv" in setup and "~/venv/bin/pip install" in setup
    # directory renames allowed: the export and convert publish a finished directory by renaming
    assert "gcsfuse --implicit-dirs --rename-dir-limit=200000 my-bucket /gcs/my-bucket" in mount
    # a worker still training keeps its run; the log is appended to
    assert train.startswith("--command=if kill -0 $(cat ~/train.pid")
    assert "~/venv/bin/python -m ahn_jax.train" in train and ">> ~/train.log" in train
    without = [c for c in dry_run("all", ACCELERATOR="v5p-32") if "ssh" in c]
    assert len(without) == 3  # no BUCKET: nothing to mount
    (stop,) = dry_run("stop")
    # the pid file goes once the run has saved and exited: a `run` right after starts no twin
    stop = " ".join(stop)
    assert "--worker=all" in stop and "kill $pid" in stop
    assert stop.index("while kill -0 $pid") < stop.index("rm -f ~/train.pid")


def test_several_processes_need_rows_every_process_and_mesh_shard_can_hold():
    from ahn_jax.config import TrainConfig
    from ahn_jax.model.sharding import make_mesh
    from ahn_jax.training.distributed import check_batch_layout

    mesh = make_mesh({"fsdp": 8})
    check_batch_layout(TrainConfig(batch_size=2, mesh="fsdp=8"), mesh, processes=1)
    check_batch_layout(TrainConfig(batch_size=8, micro_batches=2, mesh="fsdp=8"), mesh, 2)
    with pytest.raises(ConfigError, match=r"\(2\) must be a multiple of the mesh's data x fsdp"):
        check_batch_layout(TrainConfig(batch_size=2, mesh="fsdp=8"), mesh, processes=2)
    with pytest.raises(ConfigError, match=r"\(3\) must be a multiple of the process count \(2\)"):
        check_batch_layout(TrainConfig(batch_size=3), None, processes=2)


def test_a_mesh_naming_an_axis_twice_is_refused():
    from ahn_jax.training.distributed import parse_mesh

    assert parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4}
    with pytest.raises(ConfigError, match="names axis 'data' twice"):  # data=8 won silently
        parse_mesh("data=2,data=8")


def test_rows_that_do_not_divide_the_mesh_s_batch_axes_are_warned_of():
    from ahn_jax.config import TrainConfig
    from ahn_jax.model.sharding import make_mesh
    from ahn_jax.training.distributed import row_split_warning

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert row_split_warning(TrainConfig(batch_size=8, micro_batches=2), mesh) is None
    assert row_split_warning(TrainConfig(batch_size=6), None) is None
    assert row_split_warning(TrainConfig(batch_size=6), mesh) == (
        "warning: 6 rows per micro-batch (train.batch_size 6 / train.micro_batches 1) do not "
        "divide the mesh's data x fsdp (4): devices repeat each other's rows; a multiple of 4 rows "
        "per micro-batch gives each device its own"
    )
    assert "2 rows per micro-batch" in row_split_warning(
        TrainConfig(batch_size=8, micro_batches=4), mesh
    )


@pytest.mark.parametrize("name, chips", [("v5p-32", 16), ("v6e-16", 16), ("v5litepod-8", 8)])
def test_compile_check_knows_pod_slice_names(name, chips):
    description, devices = tpu_topologies.topology_devices(name)
    assert len(devices) == chips, description


# GQA through the attention kernel; two layers, so that the first layer's AHN gradient passes
# back through the second layer's attention
TWO_LAYERS = {**MODEL, "num_heads": 4, "num_kv_heads": 2, "num_layers": 2}


@pytest.mark.timeout(600)
def test_train_step_compiles_for_a_tpu_topology_and_reports_its_memory():
    config = make_config(TWO_LAYERS, ahn_type="gdn", train=dict(seq_len=256, batch_size=4),
                         data=dict(cutoff_len=256))  # fmt: skip
    report = compile_check.check(config, "v5e-4", seq_len=256, batch_size=4, kernels="xla")
    assert report["chips"] == 4 and report["mesh"] == {"fsdp": 4}
    assert report["device_kind"].startswith("TPU v5")
    assert report["fits"] and 0 < report["peak_bytes_per_chip"] < report["hbm_bytes_per_chip"]
    assert report["temp_bytes"] > 0 and report["flops_per_chip"] > 0 and "warning" not in report
    # on a TPU "xla" means the accelerator-shaped chunked form, and no Mosaic call is made
    assert (report["recurrence"], report["attention"]) == ("batched", "blocked")
    assert report["pallas_calls"] == 0


@pytest.mark.timeout(600)
def test_the_full_attention_baseline_compiles_with_its_moments_split_over_the_chips():
    """Pretraining (every weight trained): the Adam moments enter the step placed like their
    weights, a quarter per chip on 4 chips; they were replicated, 8 bytes per weight per chip."""
    import jax
    from flax import nnx

    from ahn_jax.config import validate_config
    from ahn_jax.model.transformer import abstract_model

    config = make_config(TWO_LAYERS, ahn_type="gdn", data=dict(cutoff_len=256),
                         train=dict(seq_len=256, batch_size=4, objective="pretrain"))  # fmt: skip
    report = compile_check.check(config, "v5e-4", seq_len=256, batch_size=2, kernels="xla")
    assert report["fits"] and report["recurrence"] == "none (no AHN)"
    # 2 rows on 4 chips: said, as train says it (it "fit" silently)
    assert report["warning"].startswith("warning: 2 rows per micro-batch")
    assert report["warning"] in compile_check.format_report(report)
    model_config = validate_config(config).replace(ahn_type=None)
    weights = sum(x.size for x in jax.tree.leaves(nnx.state(abstract_model(model_config))))
    # arguments per chip: the weights and two fp32 moments, split 4 ways (+ the batch, scalars)
    assert report["argument_bytes"] < 0.5 * 8 * weights
    # bf16 weights are refused as train refuses them (a baseline train could not run)
    config.model.param_dtype = "bfloat16"
    with pytest.raises(ConfigError, match=r"kept in float32 \(model.param_dtype = 'bfloat16'\)"):
        compile_check.check(config, "v5e-4", seq_len=256, batch_size=2, kernels="xla")


def test_train_step_compiles_with_the_pallas_kernels_through_mosaic():
    config = make_config(TWO_LAYERS, ahn_type="gdn", train=dict(seq_len=256, batch_size=4),
                         data=dict(cutoff_len=256))  # fmt: skip
    report = compile_check.check(config, "v5e-4", seq_len=256, batch_size=4, kernels="pallas")
    assert (report["kernels"], report["recurrence"], report["attention"]) == (
        "pallas", "pallas", "pallas"
    )  # fmt: skip
    assert report["fits"] and report["flops_per_chip"] > 0 and report["compile_seconds"] > 0
    # in the compiled program: the attention's forward (teacher and student), dq and dk/dv
    # kernels and the recurrence scan's forward and backward
    assert report["pallas_calls"] == 6
    with pytest.raises(ConfigError, match="--kernels must be one of"):
        compile_check.check(config, "v5e-4", kernels="cuda")


# Qwen2.5-3B's heads (16 query, 2 K/V of 128) and dtype in a few narrow layers: XLA:TPU picks the
# cache's layouts by these shapes
LIKE_3B = dict(vocab_size=256, hidden_size=256, intermediate_size=256, num_layers=4, num_heads=16,
               num_kv_heads=2, head_dim=128, param_dtype="bfloat16", dtype="bfloat16")  # fmt: skip


# gate rows (cache.gate_width) of 16 x 4 x 2 = 128 values a slot, and 16 x 9 = 144 padded to 256
@pytest.mark.parametrize("ahn_type, num_layers", [("gdn", 4), ("dn", 9)])
def test_decode_step_compiles_for_a_tpu_topology_with_the_cache_split_by_rows(ahn_type, num_layers):
    config = make_config({**LIKE_3B, "num_layers": num_layers}, ahn_type=ahn_type)
    report = compile_check.check_decode(config, "v5e-4", batch_size=8, window=1024, sinks=32)
    assert report["step"] == "decode" and report["fits"]
    # k and v of S + W slots, the gates and the state: split over the 4 chips by rows, and the
    # donated cache comes back in place (aliased)
    assert report["argument_bytes"] < report["cache_bytes"] / 2
    assert report["alias_bytes"] > 0 and report["bytes_accessed_per_chip"] > 0
    # no layer's k, v or gates copied whole: written where they lie (per-layer gate arrays, N
    # fp32 per slot, were copied into a padded layout and back every step: 16 copies for gdn; an
    # unpadded gate row of 144 was copied twice)
    assert report["cache_copies"] == 0
    assert "decode step on v5e-4" in compile_check.format_report(report)
    assert "cache buffer copies    0" in compile_check.format_report(report)


def test_decode_step_on_a_tensor_axis_returns_the_whole_cache_in_place():
    """The step's cache comes back with the shardings it came in with: left to XLA, the gates
    (replicated over `tensor`) came back split over it and were not aliased (3B on v5e-8,
    fsdp=2 x tensor=4: 0.3 GB a chip written anew every step)."""
    config = make_config(LIKE_3B, ahn_type="gdn")
    report = compile_check.check_decode(
        config, "v5e-4", mesh_spec="fsdp=2,tensor=2", batch_size=8, window=1024, sinks=32
    )
    # what is not aliased is the logits (a few KiB a chip); the gates alone were 7% of the cache
    assert report["output_bytes"] - report["alias_bytes"] < report["alias_bytes"] / 100


def test_decode_with_kv_heads_replicated_over_the_tensor_axis_writes_the_cache_in_place():
    """2 K/V heads on tensor=4 stay replicated (sharding.partition_spec); XLA wrote each chip's
    head slice and all-gathered the layer's whole cache back every step (3B: 72 copies, 1.25e11
    bytes a chip; now 0 copies and 7.7e10), and did the same with the gates (each chip wrote its
    heads' columns, then the whole array was gathered and relayouted). What is left at these
    shapes: each chip's slice of v's head for its query heads."""
    config = make_config(LIKE_3B, ahn_type="gdn")
    report = compile_check.check_decode(
        config, "v5e-8", mesh_spec="fsdp=2,tensor=4", batch_size=8, window=1024, sinks=32
    )
    # some without the cache's own sharding after the write; 1 (the gates) without their new
    # rows made whole first
    assert report["cache_gathers"] == 0
    assert report["cache_copies"] <= 5  # 18 without the first; 6 without the second
    assert "cache buffer gathers   0" in compile_check.format_report(report)


@pytest.mark.parametrize("kernels", ["pallas", "xla"])
def test_a_prefill_chunk_compiles_for_a_tpu_topology_with_the_cache_donated(kernels):
    """One chunk of prefill against a cache of S + W + 1 = 1,057 slots (read in blocks), split by
    rows over 4 chips, the cache donated as prefill's chunks after the first are
    (test_prefill_in_place.py): aliased, so a chip holds one cache during prefill, not two (3B on
    one v5e chip: docs/benchmarks.md)."""
    config = make_config(LIKE_3B, ahn_type="gdn")
    report = compile_check.check_prefill(
        config, "v5e-4", batch_size=8, window=1024, sinks=32, chunk_size=256, kernels=kernels
    )
    assert report["step"] == "prefill" and report["fits"] and report["kernels"] == kernels
    per_chip = report["cache_bytes"] / 4
    assert per_chip <= report["alias_bytes"] < per_chip * 1.01  # the logits are not aliased
    assert report["cache_gathers"] == 0
    assert (report["pallas_calls"] > 0) == (kernels == "pallas")  # the recurrence's kernels
    text = compile_check.format_report(report)
    assert f"one prefill chunk of 256 tokens a row, kernels {kernels} (recurrence " in text
    assert "cache buffer copies" in text


def test_one_chip_slices_compile_and_rows_that_do_not_split_are_warned_about():
    """v5e-1 / v6e-1 (how generate runs) are smaller than libtpu's default host of 2x2 chips
    and were refused; a decode batch that the mesh's batch axes cannot split is replicated."""
    config = make_config(LIKE_3B, ahn_type="gdn")
    for topology in ("v5e-1", "v6e-1"):
        report = compile_check.check_decode(config, topology, batch_size=2, window=256, sinks=0)
        assert report["chips"] == 1 and report["fits"] and "warning" not in report
    report = compile_check.check_decode(config, "v5e-4", batch_size=2, window=256, sinks=0)
    assert "batch 2 does not divide the mesh's fsdp (4)" in report["warning"]
    assert report["warning"] in compile_check.format_report(report)


def test_unknown_topology_is_named():
    config = make_config(MODEL, ahn_type="gdn")
    with pytest.raises(ConfigError, match="'v9z-8' is not a TPU topology"):
        compile_check.check(config, "v9z-8")


def test_a_missing_libtpu_is_named_with_its_install(monkeypatch):
    """jax without libtpu knows no TPU topology: the error says what to install, rather than
    suggesting other topology names that would fail the same way."""

    def no_libtpu(*args, **kwargs):
        raise RuntimeError("Unable to initialize backend 'tpu': JAX TPU support not installed")

    monkeypatch.setattr(tpu_topologies.topologies, "get_topology_desc", no_libtpu)
    with pytest.raises(ConfigError, match=r"needs libtpu.*pip install -e '\.\[tpu\]'"):
        tpu_topologies.topology_devices("v5e-4")


def _xpk_command(**env) -> str:
    settings = {**os.environ, "DRY_RUN": "1", "CLUSTER": "c", "STORAGE": "s",
                "OUTPUT_DIR": "/gcs/bucket/run", **env}  # fmt: skip
    done = subprocess.run(["bash", str(ROOT / "launch" / "xpk_example.sh")], env=settings,
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    create = shlex.split(done.stdout.splitlines()[0])
    assert "--termination-grace-period-seconds=300" in create
    command = next(a for a in create if a.startswith("--command=")).removeprefix("--command=")
    # bash execs a subshell's last command by itself, so only a pipe or a command after the
    # trainer shows below; exec makes it certain
    assert " exec python3 -m ahn_jax.train " in command
    return command


def test_xpk_job_passes_the_disruptions_sigterm_to_the_training_process(tmp_path):
    """xpk's container runs the command in a subshell and, on SIGTERM, signals that subshell
    alone (AI-Hypercomputer/xpk, core/docker_container.py). Emulated here with `pip` a no-op and
    `python3` a process that, like the training loop, saves when signalled: the save happens."""
    import signal
    import sys
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text("#!/bin/sh\nexit 0\n")
    trainer = (f"import pathlib, signal, sys, time; d = pathlib.Path({str(tmp_path)!r}); "
               "signal.signal(signal.SIGTERM, lambda *_: ((d / 'saved').touch(), sys.exit(0))); "
               "(d / 'started').touch(); time.sleep(30)")  # fmt: skip
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} -c "{trainer}"\n')
    for shim in ("pip", "python3"):
        (bin_dir / shim).chmod(0o755)
    # xpk's wrapper, in our words: forward SIGTERM to the command's subshell, wait for it
    wrapper = (f"trap 'kill -TERM $! 2>/dev/null' TERM; ({_xpk_command()}) & PID=$!; "
               "while kill -0 $PID 2>/dev/null; do sleep 0.2; done; wait $PID")  # fmt: skip
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    job = subprocess.Popen(["bash", "-c", wrapper], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "started").exists()
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=20)
        time.sleep(0.5)  # a trainer the signal missed would still be sleeping, unsaved
        assert (tmp_path / "saved").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever the signal missed
            os.killpg(job.pid, signal.SIGKILL)
