"""Training: the step, what trains, compile counts, accumulation, exact resume, bad settings."""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from shared import flat_state

from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.config import ConfigError, TrainConfig, make_config, validate_config
from ahn_jax.model.memory import AhnParam
from ahn_jax.model.transformer import init_model
from ahn_jax.training import loop as train_lib
from ahn_jax.training import progress
from ahn_jax.training import run as run_lib
from ahn_jax.training.optimizer import optimizer_for
from ahn_jax.training.step import make_train_step

ROOT = Path(__file__).parents[2]
MODEL = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
             num_kv_heads=1, head_dim=16)  # fmt: skip
# loss "ce": on a random tiny base the KL between full attention and the window is ~1e-5, below
# fp32 noise, so runs on different meshes could only be compared loosely; CE (~5.5) is compared to
# 1e-5. The KL path is trained by the demo test and checked against the dense KL in test_losses.
TRAIN = dict(steps=5, batch_size=4, seq_len=128, learning_rate=3e-3, window_choices=(32, 64),
             sink_choices=(0, 4), seq_tile=64, vocab_tile=128, checkpoint_every=2,
             log_every=1, loss="ce", allow_random_base=True)  # fmt: skip
DATA = dict(format="shakespeare", tokenizer="bytes", filter_len=32, cutoff_len=128,
            held_out=("hamlet",))  # fmt: skip


# the rows' (W + S) and S per step, as the loop logs them: min, median, max
WINDOW_STATS = tuple(f"{name}_{stat}" for name in ("window_total", "sinks")
                     for stat in ("min", "median", "max"))  # fmt: skip


def _windows(record) -> tuple:
    return tuple(record[key] for key in WINDOW_STATS)


def tiny(tmp_path, **train_changes):
    train = {**TRAIN, "output_dir": str(tmp_path / "run"), **train_changes}
    return make_config(MODEL, ahn_type="gdn", train=train, data=DATA)


def _records(run_dir):
    records = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = record  # a resumed run re-logs the steps after its checkpoint
    return records


OBSERVED = {"profile_steps": (2, 3), "peak_flops_per_device": 1e11}  # losses do not change


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    """One 5-step run on one device, shared by the tests that compare against it."""
    tmp_path = tmp_path_factory.mktemp("single")
    return tmp_path, train_lib.train(tiny(tmp_path, **OBSERVED))


def test_training_changes_only_ahn_weights_without_recompiling(single_device_run):
    tmp_path, run = single_device_run
    config = run.config
    _, _, frozen_before = nnx.split(init_model(validate_config(config), seed=0), AhnParam, ...)
    for path, value in flat_state(frozen_before).items():
        np.testing.assert_array_equal(np.asarray(flat_state(run.frozen)[path]), value, str(path))
    assert np.any(np.asarray(run.trainable["layers"]["ahn"]["o_proj"][...]))
    records = _records(tmp_path / "run")
    assert sorted(records) == [1, 2, 3, 4, 5]
    assert all(np.isfinite(r["loss"]) and r["valid_tokens"] > 0 for r in records.values())
    assert len({_windows(r) for r in records.values()}) > 1
    assert run.step_fn._cache_size() == 1  # new windows and sinks did not recompile
    # the export runs on top of the same base in the reference's layout
    model = from_pretrained_run(run, tmp_path)
    assert model.config.ahn_type == "gdn"


def _tensorboard_scalars(directory):
    """{tag: {step: value}} from TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in Path(directory).glob("events.out.tfevents.*"):
        raw = path.read_bytes()
        at = 0
        while at < len(raw):
            (size,) = struct.unpack("<Q", raw[at : at + 8])
            event = Event.FromString(raw[at + 12 : at + 12 + size])
            at += 12 + size + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_metrics_reach_jsonl_and_tensorboard_and_the_profiler_traces(single_device_run):
    tmp_path, run = single_device_run
    records = _records(tmp_path / "run")
    for record in records.values():
        assert record["tokens_per_s"] > 0 and record["model_tflops_per_s"] > 0
        # MFU is the model FLOP rate over the configured peak (1e11 per device, one device)
        assert record["mfu"] == pytest.approx(record["model_tflops_per_s"] * 1e12 / 1e11)
    board = _tensorboard_scalars(tmp_path / "run" / "tensorboard")
    for tag in ("loss", "ce", "grad_norm", "learning_rate", *WINDOW_STATS, "mfu"):
        got = board[f"train/{tag}"]
        assert sorted(got) == [1, 2, 3, 4, 5], tag
        for step, value in got.items():
            assert value == pytest.approx(records[step][tag], rel=1e-6), (tag, step)
    traces = list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


def from_pretrained_run(run, tmp_path):
    base = tmp_path / "base_export"
    from ahn_jax.checkpoints.pretrained import save_model

    model = nnx.merge(run.graphdef, run.trainable, run.frozen)
    save_model(model.__class__(model.config.replace(ahn_type=None), nnx.Rngs(0)), base)
    return from_pretrained(base, ahn_path=tmp_path / "run" / "ahn")


def test_micro_batches_accumulate_to_the_full_batch_gradient(tmp_path):
    config = tiny(tmp_path)
    model = init_model(validate_config(config), seed=0, ahn_output_init="normal")
    graphdef, trainable, frozen = nnx.split(model, AhnParam, ...)
    rng = np.random.default_rng(0)
    batch = {"input_ids": jnp.asarray(rng.integers(0, 256, (4, 128)), jnp.int32)}
    batch["labels"] = batch["input_ids"]
    # each row its own window and sinks, as the loop draws them
    batch["window"] = jnp.asarray([48, 20, 60, 33], jnp.int32)
    batch["sinks"] = jnp.asarray([4, 0, 4, 0], jnp.int32)
    results = []
    # the shared run's optimizer: the micro = 1 step is its program, compiled once per session
    train = TrainConfig.from_dict(config.train.to_dict())
    tx, schedule = optimizer_for(train)
    for micro in (1, 2):
        step = make_train_step(graphdef, tx, schedule, train.replace(micro_batches=micro))
        state = jax.tree.map(jnp.copy, trainable)
        new, _, metrics = step(state, tx.init(state), frozen, batch, jnp.int32(3))
        results.append((new, metrics))
    (a, ma), (b, mb) = results
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(ma["grad_norm"]), float(mb["grad_norm"]), rtol=1e-4)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def _command(config_path, out, steps):
    return [sys.executable, "-m", "ahn_jax.train", f"--config={config_path}",
            f"--config.train.output_dir={out}", f"--config.train.steps={steps}",
            "--config.train.checkpoint_every=2"]  # fmt: skip


def _config_file(tmp_path):
    """The tests' tiny config as a config file, for runs through the command line."""
    config_path = tmp_path / "tiny_train.py"
    config_path.write_text(
        "from ahn_jax.config import make_config\n\n\ndef get_config():\n"
        f"    return make_config({MODEL!r}, ahn_type='gdn', train={TRAIN!r}, data={DATA!r})\n"
    )
    return config_path


def _env(devices: int = 8):
    count = "--xla_force_host_platform_device_count="
    flags = re.sub(count + r"\d+", "", os.environ.get("XLA_FLAGS", "")) + f" {count}{devices}"
    return {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags}


def test_resume_after_sigkill_is_exact(tmp_path, single_device_run):
    """Killed mid-run and restarted with the same command: the same loss at every step as the
    uninterrupted run (the shared in-process run, same config)."""
    config_path = _config_file(tmp_path)
    env = _env()
    steps = 5
    straight_dir = single_device_run[0] / "run"

    killer = [sys.executable, str(Path(__file__).parent / "train_killed_at_step.py"), "3"]
    killed = subprocess.run([*killer, *_command(config_path, tmp_path / "b", steps)[3:]],
                            env=env, cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    metrics = tmp_path / "b" / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 3  # it really died mid-way
    resumed = subprocess.run(_command(config_path, tmp_path / "b", steps), env=env, cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(straight_dir, tmp_path / "b", steps)


def _assert_same_run(straight_dir, run_dir, steps) -> None:
    """The same loss and windows at every step, each step logged once (a resumed run drops the
    records of the steps it redoes)."""
    a, b = _records(straight_dir), _records(run_dir)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == steps
    for step in a:
        assert a[step]["loss"] == b[step]["loss"], step
        assert _windows(a[step]) == _windows(b[step]), step


def _sigterm_at(step, config_path, run_dir, steps) -> subprocess.CompletedProcess:
    """The training command, sent SIGTERM right after `step`'s metrics are written."""
    killer = [sys.executable, str(Path(__file__).parent / "train_killed_at_step.py"), str(step)]
    return subprocess.run([*killer, *_command(config_path, run_dir, steps)[3:]],
                          env={**_env(), "KILL_SIGNAL": "SIGTERM"}, cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip


def test_sigterm_saves_the_step_in_flight_and_resumes_exactly(tmp_path, single_device_run):
    """SIGTERM (a scheduler's stop) during step 3: the run finishes the step in flight, saves it
    though checkpoints come every 2 steps, says so and exits 128 + 15; the same command resumes
    after it and gives the uninterrupted run's losses."""
    config_path = _config_file(tmp_path)
    stopped = _sigterm_at(3, config_path, tmp_path / "b", 5)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    # the signal came after step 3's decision to save, so step 4 ran and was saved
    assert "SIGTERM: the step in flight finishes and is saved" in stopped.stderr
    assert "stopped by SIGTERM after step 4; its checkpoint is saved" in stopped.stderr
    assert sorted(int(p.name) for p in (tmp_path / "b" / "checkpoints").iterdir()) == [2, 4]
    resumed = subprocess.run(_command(config_path, tmp_path / "b", 5), env=_env(), cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after step 4" in resumed.stdout
    _assert_same_run(single_device_run[0] / "run", tmp_path / "b", 5)


def test_a_signal_during_the_last_steps_save_stops_before_the_export(tmp_path):
    """SIGTERM after the last step's decision to save (while it is saved): the run stops as it
    said it would, with no export, and the same command exports without training again."""
    config_path = _config_file(tmp_path)
    stopped = _sigterm_at(2, config_path, tmp_path / "b", 2)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "stopped by SIGTERM after step 2; its checkpoint is saved" in stopped.stderr
    assert not (tmp_path / "b" / "ahn").exists()
    again = subprocess.run(_command(config_path, tmp_path / "b", 2), env=_env(), cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "b" / "ahn" / "model.safetensors").is_file()
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_longer_run_replaces_the_export_and_names_the_changed_settings(
    tmp_path, single_device_run
):
    """The finished 5-step run, carried on to 6 steps (its directory copied): the start lines
    name what changed since the checkpoint, and the export is step 6's, not the one the first
    run left; started again at 6 steps, the run trains nothing and keeps that export."""
    shutil.copytree(single_device_run[0] / "run", tmp_path / "run")
    exported = tmp_path / "run" / "ahn" / "model.safetensors"
    five = exported.read_bytes()
    run = train_lib.train(tiny(tmp_path, steps=6, **OBSERVED))
    assert run.changed_settings == ["train.steps: 5 -> 6"]
    lines = progress.start_lines(run)
    assert "changed since the checkpoint: train.steps: 5 -> 6" in lines
    # 5 steps' cosine ends at 0 after step 5; 6 steps' gives step 6 a rate (3e-3 peak, 1 warmup)
    rate = 3e-3 * 0.5 * (1 + np.cos(np.pi * 4 / 5))
    assert (f"the learning-rate schedule is the new settings' from step 0: step 6 trains at "
            f"{rate:.3g} where the checkpoint's schedule gives 0") in lines  # fmt: skip
    assert lines[-1].startswith("step 6 waits for the train step to compile")  # not "step 1"
    six = exported.read_bytes()
    assert six != five and not (tmp_path / "run" / "ahn.partial").exists()
    again = train_lib.train(tiny(tmp_path, steps=6, **OBSERVED))
    assert again.start_step == 6 and again.changed_settings == [] and again.rate_change is None
    assert exported.read_bytes() == six


def test_resuming_with_another_ahn_type_stops_naming_the_setting(tmp_path, single_device_run):
    """The finished run's directory given to a DeltaNet config: one ConfigError naming the
    changed setting and the way out, not Orbax's list of every mismatched leaf."""
    shutil.copytree(single_device_run[0] / "run", tmp_path / "run")
    train = {**TRAIN, "output_dir": str(tmp_path / "run"), **OBSERVED}
    message = r"step 5 of another run.*ahn\.type: 'gdn' -> 'dn'.*set a new train\.output_dir"
    with pytest.raises(ConfigError, match=message):
        run_lib.setup(make_config(MODEL, ahn_type="dn", train=train, data=DATA))


def test_resuming_on_another_number_of_hosts_says_why_it_cannot(tmp_path, single_device_run):
    """Each process's data position is its own file: a slice that comes back with another host
    count cannot take them up (grain said only that a file does not exist)."""
    shutil.copytree(single_device_run[0] / "run", tmp_path / "run")
    data = tmp_path / "run" / "checkpoints" / "5" / "data"
    (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
    (data / "process_1-of-2.json").write_text("{}")
    message = r"written by 2 processes and this run has 1: .* as many hosts as it was saved from"
    with pytest.raises(ConfigError, match=message):
        run_lib.setup(tiny(tmp_path, **OBSERVED))


def test_checkpoints_are_saved_without_renaming_a_directory(tmp_path, monkeypatch):
    """gcsfuse, a pod's shared OUTPUT_DIR, refuses directory renames on a flat bucket unless
    mounted with --rename-dir-limit: Orbax's default finished each save by one (and the run died
    with no checkpoint); it now writes a commit file instead."""
    from ahn_jax.training import checkpointing

    real = os.rename

    def rename(source, target, *args, **kwargs):
        if os.path.isdir(source):
            raise OSError(38, "Function not implemented", str(source))
        return real(source, target, *args, **kwargs)

    run = run_lib.setup(tiny(tmp_path))
    monkeypatch.setattr(os, "rename", rename)
    checkpointing.save(run, 1)
    run.manager.wait_until_finished()
    assert run.manager.latest_step() == 1
    assert (tmp_path / "run" / "checkpoints" / "1" / "trainable").is_dir()


def test_a_base_checkpoint_must_have_the_config_s_shapes():
    """A config whose model section is not the base checkpoint's stops, naming each differing
    shape; settings its config.json decides (RoPE theta, norm eps) are taken from it."""
    ours = validate_config(make_config(MODEL, ahn_type="gdn"))
    loaded = ours.replace(num_layers=4, hidden_size=64, rope_theta=1e4)
    with pytest.raises(ConfigError, match=r"hidden_size 32 \(config\) vs 64 \(checkpoint\); "
                                          r"num_layers 2 \(config\) vs 4"):  # fmt: skip
        run_lib.reconcile_base(ours, loaded, "/base")
    reconciled = run_lib.reconcile_base(ours, ours.replace(rope_theta=1e4, rms_norm_eps=1e-5), "/b")
    assert (reconciled.rope_theta, reconciled.rms_norm_eps) == (1e4, 1e-5)
    assert reconciled.replace(rope_theta=ours.rope_theta, rms_norm_eps=ours.rms_norm_eps) == ours


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"window_sampling": "fixed", "window": 120, "sinks": 8}, r"train\.window \(120\)"),
        ({"loss": "mse"}, r"train\.loss must be one of"),
        ({"batch_size": 3, "micro_batches": 2}, r"train\.batch_size \(3\)"),
        ({"base_checkpoint": "/nowhere/qwen"}, r"train\.base_checkpoint = '/nowhere/qwen'"),
        ({"steps": 0}, r"train\.steps must be a positive integer"),
        ({"window_choices": (256, 512)}, r"no training row can reach the memory"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        run_lib.setup(tiny(tmp_path, **changes))


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    """Frozen weights turned to NaN before step 3 (the shared run's program, so no compile): the
    run stops at step 3, naming it, and step 2's checkpoint is kept."""
    setup = run_lib.setup

    def poisoned_setup(config):
        run = setup(config)
        place = run.place_batch
        calls = []

        def place_then_poison(batch):
            calls.append(1)
            if len(calls) == 3:
                run.frozen = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), run.frozen)
            return place(batch)

        run.place_batch = place_then_poison
        return run

    monkeypatch.setattr(train_lib, "setup", poisoned_setup)
    message = r"non-finite loss nan at step 3 .* the last good checkpoint is step 2"
    with pytest.raises(train_lib.TrainingError, match=message):
        train_lib.train(tiny(tmp_path))


def _assert_same_losses(run_dir, reference_dir, steps):
    a, b = _records(reference_dir), _records(run_dir)
    for step in steps:
        np.testing.assert_allclose(b[step]["loss"], a[step]["loss"], rtol=1e-5, atol=0)
        assert _windows(a[step]) == _windows(b[step]), step


def test_a_2x2x2_mesh_gives_the_single_device_loss_and_restores_onto_4_devices(
    tmp_path, single_device_run
):
    reference = single_device_run[0] / "run"
    sharded = train_lib.train(tiny(tmp_path / "mesh", mesh="data=2,fsdp=2,tensor=2"))
    assert sharded.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
    leaf = sharded.frozen["layers"]["mlp"]["gate_kernel"][...]
    assert len(leaf.sharding.device_set) > 1  # the frozen weights really are sharded
    # the moments start placed as the step returns them: one compile (the first step's inputs
    # were replicated moments, and the second step compiled again for the step's own placements)
    assert sharded.step_fn._cache_size() == 1
    weight = sharded.trainable["layers"]["ahn"]["a_proj"][...]
    moment = sharded.opt_state[1][0].mu["layers"]["ahn"]["a_proj"][...]
    assert moment.sharding.spec == weight.sharding.spec != ()
    _assert_same_losses(tmp_path / "mesh" / "run", reference, range(1, 6))

    # the step-2 checkpoint of the 8-device run, continued by a process with 4 devices
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "mesh" / "run" / "checkpoints", moved / "checkpoints")
    for later in ("4", "5"):
        shutil.rmtree(moved / "checkpoints" / later)
    command = [*_command(_config_file(tmp_path), moved, 5), "--config.train.mesh=data=2,fsdp=2"]
    resumed = subprocess.run(command, env=_env(devices=4), cwd=ROOT, capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(_records(moved)) == [3, 4, 5]  # it resumed at step 2
    _assert_same_losses(moved, reference, range(3, 6))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_4_devices_give_the_single_process_loss(tmp_path, single_device_run):
    """jax.distributed on localhost: 2 processes x 4 CPU devices = one 8-device (2, 2, 2) mesh,
    each process reading its own rows of every global batch."""
    config_path, port, out = _config_file(tmp_path), _free_port(), tmp_path / "two"
    processes = [
        subprocess.Popen(
            [
                *_command(config_path, out, 5),
                "--config.train.mesh=data=2,fsdp=2,tensor=2",
                "--config.train.distributed=True",
                f"--config.train.coordinator_address=127.0.0.1:{port}",
                "--config.train.num_processes=2",
                f"--config.train.process_id={index}",
            ],
            env=_env(devices=4),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for index in range(2)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    _assert_same_losses(out, single_device_run[0] / "run", range(1, 6))
    assert (out / "ahn" / "config.json").exists()


def test_a_mesh_that_does_not_fit_the_devices_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.mesh = 'data=3'.*needs 3 devices but 8"):
        run_lib.setup(tiny(tmp_path, mesh="data=3"))


def test_pretraining_trains_every_base_weight_and_exports_a_loadable_model(tmp_path):
    """configs/tiny_base.py (the demo base's command), shortened: the same entry point and
    objective on recall windows; the export loads as a base for distillation."""
    from configs import tiny_base

    config = tiny_base.get_config()
    config.model.update(MODEL)
    config.train.update(steps=3, batch_size=4, seq_len=128, checkpoint_every=3, log_every=1,
                        output_dir=str(tmp_path / "base"))  # fmt: skip
    # both phases: 2 steps of the copy warm-up (its gaps fit 128-byte windows), then text
    warmup = {"steps": 2, "pairs": 2, "min_gap": 16, "max_gap": 48}
    recall = {"span": 8, "pairs": 1, "min_gap": 32, "max_gap": 80}
    config.data.update(cutoff_len=128, recall=recall, copy_warmup=warmup)
    before = init_model(validate_config(config), seed=config.train.seed)
    run = train_lib.train(config)
    losses = [r["ce"] for r in _records(tmp_path / "base").values()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    base = from_pretrained(tmp_path / "base" / "model")
    assert base.config.ahn_type is None
    changed = {
        path: not np.allclose(value, flat_state(nnx.state(before, nnx.Param))[path])
        for path, value in flat_state(nnx.state(base, nnx.Param)).items()
    }
    assert all(changed.values()), [p for p, c in changed.items() if not c]
    np.testing.assert_array_equal(
        flat_state(nnx.state(base, nnx.Param))[("embed_tokens",)],
        np.asarray(flat_state(run.trainable)[("embed_tokens",)]),
    )
    # distillation on it: a loaded base is committed to its device, and so must the optimizer
    # state be, or the second step compiles again
    distilled = train_lib.train(
        tiny(tmp_path, steps=2, base_checkpoint=str(tmp_path / "base" / "model"))
    )
    assert distilled.step_fn._cache_size() == 1
    with pytest.raises(ConfigError, match=r"kept in float32 \(model.param_dtype = 'bfloat16'\)"):
        config.model.param_dtype = "bfloat16"
        run_lib.setup(config)
    config.model.param_dtype = "float32"
    with pytest.raises(ConfigError, match="set ahn.type = None"):
        config.ahn.type = "gdn"
        run_lib.setup(config)


def test_resuming_over_a_changed_data_file_is_refused_naming_it(tmp_path, monkeypatch):
    """The checkpoint keeps each data file's fingerprint: resumed over a file with a record more,
    the saved position would index another order, so the run stops and says so."""
    path = tmp_path / "text.jsonl"
    lines = [json.dumps({"text": f"record {i}: " + "to be or not to be " * 8}) for i in range(40)]
    path.write_text("\n".join(lines) + "\n")
    data = dict(format="text", tokenizer="bytes", paths=(str(path),), filter_len=8,
                cutoff_len=128)  # fmt: skip
    train = {**TRAIN, "steps": 1, "output_dir": str(tmp_path / "run")}
    config = make_config(MODEL, ahn_type="gdn", train=train, data=data)
    train_lib.train(config)
    assert run_lib.setup(config).start_step == 1  # the same file: resumed
    path.write_text(json.dumps({"text": "a new first record"}) + "\n" + path.read_text())
    with pytest.raises(ConfigError, match=f"step 1, whose data files differ .*: {path} \\(other"):
        run_lib.setup(config)
    # compared by place in data.paths: the same file under another spelling is caught too
    monkeypatch.chdir(tmp_path)
    config.data.paths = ("text.jsonl",)
    with pytest.raises(ConfigError, match=r"differ from these: text.jsonl \(other contents\)"):
        run_lib.setup(config)
    config.data.paths = ("text.jsonl", "text.jsonl")  # another file list: another order
    with pytest.raises(ConfigError, match="differ from these: 2 files where it read 1"):
        run_lib.setup(config)
