"""The training loop around the step: per-row windows from each row's true length, length buckets
(one compile each), the logged window distribution, and what a pod's log shows."""

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grain
import numpy as np
import pytest

from ahn_jax.config import make_config
from ahn_jax.training import data
from ahn_jax.training import loop as train_lib
from ahn_jax.training.windows import sample_windows

ROOT = Path(__file__).parents[2]
MODEL = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
             num_kv_heads=1, head_dim=16)  # fmt: skip
TRAIN = dict(steps=4, batch_size=2, seq_len=128, length_buckets=(64, 128), learning_rate=3e-3,
             window_choices=(8, 16, 32), sink_choices=(0, 4), seq_tile=64, vocab_tile=128,
             checkpoint_every=4, log_every=1, loss="ce", allow_random_base=True)  # fmt: skip
DATA = dict(format="shakespeare", tokenizer="bytes", filter_len=32, cutoff_len=128,
            held_out=("hamlet",))  # fmt: skip
# each step's rows (unpadded lengths): buckets 64, 128, 64, 128; a row of 8 tokens has no
# candidate in (8/8, 8), so step 3 has nothing to learn
ROW_LENGTHS = ((60, 41), (128, 100), (8, 8), (120, 90))


def _batches(passes: data.DataPasses, row_lengths=ROW_LENGTHS):
    """The batches as a grain iterator (checkpoints save its state), as if the data held two
    batches: steps 3 and 4 read its second pass."""
    rng = np.random.default_rng(0)
    batches = []
    for lengths in row_lengths:
        rows = [rng.integers(1, 256, n).astype(np.int32) for n in lengths]
        batches.append(data.pad_batch([data.Example(x, x) for x in rows], TRAIN["length_buckets"]))
    dataset = grain.MapDataset.source(batches).map_with_index(functools.partial(passes.note, 2))
    # read in this thread, as data.make_dataset's (a prefetch would run ahead into pass 2)
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def _tensorboard_histograms(directory):
    """{tag: {step: bucket counts}} from TensorBoard event files."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    found = {}
    for path in Path(directory).glob("events.out.tfevents.*"):
        raw, at = path.read_bytes(), 0
        while at < len(raw):
            (size,) = struct.unpack("<Q", raw[at : at + 8])
            event = Event.FromString(raw[at + 12 : at + 12 + size])
            at += 12 + size + 4
            for value in event.summary.value:
                if value.HasField("histo"):
                    found.setdefault(value.tag, {})[event.step] = value.histo
    return found


def _run_on(config, tmp_path, row_lengths=ROW_LENGTHS, patch_more=lambda patch: None):
    """`train` on hand-made batches of `row_lengths`; stdout captured (not a terminal)."""
    setup = train_lib.setup

    def setup_with_batches(config):
        run = setup(config)
        run.iterator = _batches(run.passes, row_lengths)
        return run

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_lib, "setup", setup_with_batches)
        patch_more(patch)
        out = tmp_path / "stdout.txt"
        with open(out, "w") as stdout:
            patch.setattr(sys, "stdout", stdout)
            run = train_lib.train(config)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    return tmp_path, run, records, out.read_text()


@pytest.fixture(scope="module")
def bucketed_run(tmp_path_factory):
    """4 steps over hand-made batches of two length buckets; stdout captured (not a terminal)."""
    tmp_path = tmp_path_factory.mktemp("buckets")
    config = make_config(MODEL, ahn_type="gdn", train={**TRAIN, "output_dir": str(tmp_path)},
                         data=DATA)  # fmt: skip
    return _run_on(config, tmp_path)


def test_two_buckets_compile_twice_and_new_windows_never(bucketed_run):
    _, run, records, _ = bucketed_run
    assert [r["padded_length"] for r in records] == [64, 128, 64, 128]
    assert run.step_fn._cache_size() == 2  # one compile per bucket, none per window draw


def test_each_step_logs_the_rows_window_distribution(bucketed_run):
    tmp_path, _, records, _ = bucketed_run
    for step, (record, lengths) in enumerate(zip(records, ROW_LENGTHS, strict=True), start=1):
        window, sinks = sample_windows(np.array(lengths), seed=0, step=step,
                                       window_choices=TRAIN["window_choices"],
                                       sink_choices=TRAIN["sink_choices"])  # fmt: skip
        learning = window + sinks < np.array(lengths)
        totals = np.sort((window + sinks)[learning])
        if step == 3:  # no row with a memory position: no distribution
            assert record["window_total_min"] is None and record["sinks_max"] is None
        else:
            assert (record["window_total_min"], record["window_total_max"]) == (
                totals[0], totals[-1])  # fmt: skip
            assert record["window_total_median"] == totals[(len(totals) - 1) // 2]
            assert record["sinks_max"] == sinks[learning].max()
        assert record["rows_without_window"] == (2 if step == 3 else 0)
        # every row with a memory position has labelled positions there
        assert record["sequences"] == 2 - record["rows_without_window"]
        assert (record["valid_tokens"] > 0) == (step != 3)
        assert record["tokens_per_s"] > 0
        assert record["data_pass"] == (1 if step <= 2 else 2)
    # the W_tot of every row with a memory position (step 3's 8-token rows have none)
    histograms = _tensorboard_histograms(tmp_path / "tensorboard")["train/window_total"]
    assert sorted(histograms) == [1, 2, 4]
    assert [histograms[step].num for step in (1, 2, 4)] == [2, 2, 2]
    assert histograms[4].min == records[3]["window_total_min"]
    assert histograms[4].max == records[3]["window_total_max"]


def test_a_sample_draws_the_same_window_on_one_and_on_two_processes():
    """The loop's row offsets follow the data pipeline's dealing of one stream to the processes:
    the same sample gets the same (W, S) whatever the process count."""
    from ahn_jax.config import DataConfig
    from ahn_jax.tokenizer import ByteTokenizer
    from ahn_jax.training.loop import _row_placement

    config = DataConfig(**DATA)

    def draws(index, count):
        dataset = data.make_dataset(
            config,
            ByteTokenizer(),
            batch_size=4 // count,
            seed=0,
            buckets=(128,),
            process_index=index,
            process_count=count,
        )
        found = {}
        for step, batch in zip(range(1, 4), dataset, strict=False):
            pairs = sample_windows(
                batch["lengths"],
                seed=0,
                step=step,
                window_choices=(8, 16, 32, 64),
                **_row_placement(index, count),
            )
            for row, w, s in zip(batch["input_ids"], *pairs, strict=True):
                found[(step, row.tobytes())] = (int(w), int(s))
        return found

    one = draws(0, 1)
    two = {**draws(0, 2), **draws(1, 2)}
    assert one == two and len(one) == 12


def test_a_log_without_a_terminal_gets_start_lines_and_plain_step_lines(bucketed_run):
    tmp_path, _, _, stdout = bucketed_run
    assert re.search(r"^devices: 8 x cpu", stdout, re.M)
    assert re.search(r"^mesh: none", stdout, re.M)
    assert re.search(r"^parameters: [\d,]+ trainable, [\d,]+ frozen", stdout, re.M)
    assert re.search(r"^data: [\d,]+ records from shakespeare .*0 bad records", stdout, re.M)
    assert f"in {tmp_path / 'checkpoints'}" in stdout
    assert re.search(r"^step 1 waits for the train step to compile", stdout, re.M)
    steps = re.findall(r"^step (\d)/4  loss [\d.]+  W_tot [\d/-]+  S [\d/-]+  tok/s [\d,]+  "
                       r"step [\d.]+ s  ETA (?:-|\d+:\d\d:\d\d)$", stdout, re.M)  # fmt: skip
    assert steps == ["1", "2", "3", "4"]
    assert "\r" not in stdout  # no progress bar
    # a run longer than its data says where the samples start to repeat
    assert re.findall(r"^step (\d): the data's pass (\d) begins", stdout, re.M) == [("3", "2")]
    # a batch with no row past its W + S trains nothing: said once
    assert re.findall(r"^warning: step (\d): no row reaches past its W \+ S \(row lengths 8-8, "
                      r"train\.window_choices \(8, 16, 32\)", stdout, re.M) == ["3"]  # fmt: skip


def test_the_command_line_prints_start_and_step_lines_into_a_pipe(tmp_path):
    command = [sys.executable, "-m", "ahn_jax.train", "--config=configs/tiny_gdn.py",
               "--config.train.steps=2", "--config.train.log_every=1",
               "--config.train.batch_size=2", "--config.train.seq_len=128",
               "--config.train.window_choices=(32,64)", "--config.train.checkpoint_every=2",
               "--config.data.cutoff_len=128", "--config.model.num_layers=1",
               f"--config.train.output_dir={tmp_path}"]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    starts = ("devices: ", "mesh: ", "parameters: ", "data: ", "batches: ", "steps: 2;",
              "step 1 waits")  # fmt: skip
    assert [line.split(" ")[0] for line in lines[: len(starts)]] == [
        s.split(" ")[0] for s in starts
    ]
    # no ETA from step 1 alone (its time is the compile's)
    assert re.fullmatch(r"step 1/2  loss [\d.]+  W_tot \d+/\d+/\d+  .*  ETA -", lines[7])
    assert lines[8].startswith("step 2/2  loss ") and lines[8].endswith("ETA 0:00:00")
    assert lines[9].startswith("done: 2 steps")
    assert lines[10].startswith("its config.json records inference window 32640, sinks 128 (the "
                                "evaluation defaults: training drew random windows)")  # fmt: skip
    exported = json.loads((tmp_path / "ahn" / "config.json").read_text())
    assert (exported["sliding_window_type"], exported["ahn_position"]) == ("random", "random")
    # fewer steps than the checkpoint's: nothing runs, and the last line says so
    fewer = [x if not x.startswith("--config.train.steps=") else "--config.train.steps=1"
             for x in command]  # fmt: skip
    again = subprocess.run(fewer, cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[-2].startswith(
        "done: nothing to run (train.steps = 1; checkpoint of step 2); weights in"
    )


def test_pretraining_logs_no_window_and_counts_a_full_attention_step(tmp_path):
    """Pretraining runs full attention: no (W, S) is drawn, logged or fed to the FLOP estimate,
    whose work is a plain forward + backward of every weight (`full_attention_step_flops`)."""
    from ahn_jax.costs import formulas

    train = {
        **TRAIN,
        "objective": "pretrain",
        "steps": 2,
        "checkpoint_every": 2,
        "tensorboard": False,
        "peak_flops_per_device": 1e11,
        "output_dir": str(tmp_path),
    }
    config = make_config(MODEL, ahn_type=None, train=train, data=DATA)

    def no_draws(patch):  # a draw would be wasted work and a logged lie
        patch.setattr(train_lib.windows, "sample_windows",
                      lambda *_, **__: pytest.fail("pretraining drew windows"))  # fmt: skip

    row_lengths = ((60, 41), (128, 100))  # buckets 64 and 128
    _, run, records, stdout = _run_on(config, tmp_path, row_lengths, no_draws)
    assert [r["padded_length"] for r in records] == [64, 128]
    model_config = run.model_config
    for record in records:
        assert not {k for k in record if k.startswith(("window_total", "sinks"))}, record
        assert "rows_without_window" not in record
        work = record["model_tflops_per_s"] * 1e12 * record["step_seconds"]
        step_flops = formulas.full_attention_step_flops(model_config, record["padded_length"])
        assert work == pytest.approx(2 * step_flops, rel=1e-9)
        assert record["mfu"] == pytest.approx(record["model_tflops_per_s"] * 1e12 / 1e11)
    steps = re.findall(r"^step (\d)/2  loss [\d.]+  tok/s [\d,]+  step [\d.]+ s  ETA \S+$",
                       stdout, re.M)  # fmt: skip
    assert steps == ["1", "2"], stdout
    assert "W_tot" not in stdout
    assert re.search(r"; windows: none \(pretraining: full attention\)$", stdout, re.M)
