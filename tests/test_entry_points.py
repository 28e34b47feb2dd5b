"""The `python -m ahn_jax.X` tools as a user runs them, outside make and pytest's environment: the
platform choice they make themselves (ahn_jax/xla_cpu.py), and a training run without its base or
data stopping at once."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shared import tiny_config

from ahn_jax import xla_cpu
from ahn_jax.model.transformer import init_model

ROOT = Path(__file__).parents[1]
ENTRY_POINTS = ("train.py", "evaluate.py", "generate.py", "convert.py", "compile_check.py",
                "costs/__main__.py", "demo/__main__.py")  # fmt: skip
ON_AN_ACCELERATOR = xla_cpu._has_tpu() or xla_cpu._has_gpu()


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: none of the settings tests/conftest.py makes."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    return env | {"PYTHONPATH": str(ROOT)}


def test_a_cpu_host_runs_on_the_cpu_with_the_users_xla_flags_untouched():
    assert xla_cpu.platform_environment({}, tpu=False, gpu=False) == {"JAX_PLATFORMS": "cpu"}
    given = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true --xla_dump_to=/tmp/x"}
    assert xla_cpu.platform_environment(given, tpu=False, gpu=False) == {"JAX_PLATFORMS": "cpu"}


def test_an_accelerator_or_the_users_choice_is_left_alone():
    assert xla_cpu.platform_environment({}, tpu=True, gpu=False) == {}
    assert xla_cpu.platform_environment({}, tpu=False, gpu=True) == {}
    assert xla_cpu.platform_environment({"JAX_PLATFORMS": "tpu"}, tpu=False, gpu=False) == {}
    assert xla_cpu.platform_environment({"JAX_PLATFORMS": "cpu"}, tpu=False, gpu=True) == {}


def test_libtpu_is_told_the_host_only_when_it_compiles_without_a_tpu():
    compiling = xla_cpu.platform_environment({}, tpu=False, gpu=False, compiles_for_tpu=True)
    assert compiling.items() >= xla_cpu.LIBTPU_WITHOUT_TPU.items()
    users = {"TPU_ACCELERATOR_TYPE": "v6e-8"}
    kept = xla_cpu.platform_environment(users, tpu=False, gpu=False, compiles_for_tpu=True)
    assert "TPU_ACCELERATOR_TYPE" not in kept
    assert xla_cpu.platform_environment({}, tpu=True, gpu=False, compiles_for_tpu=True) == {}


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_every_entry_point_configures_the_platform_first(path):
    """Before anything else in its `__main__` block: the flags' definitions and parsing can load
    config files, and main() makes the backend."""
    tree = ast.parse((ROOT / "ahn_jax" / path).read_text())
    main_blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n)]
    assert len(main_blocks) == 1, path
    first = ast.unparse(main_blocks[0].body[0])
    assert first.startswith("xla_cpu.configure_platform("), (path, first)


# Runs ahn_jax.train as `python -m` does and prints, at exit, the environment it ran with.
PROBE = """
import atexit, os, runpy, sys
atexit.register(lambda: print(os.environ.get("JAX_PLATFORMS"), "|", os.environ.get("XLA_FLAGS")))
sys.argv = ["ahn_jax.train", *sys.argv[1:]]
runpy.run_module("ahn_jax.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.skipif(ON_AN_ACCELERATOR, reason="a CPU host's behaviour")
def test_a_cli_on_a_cpu_host_prints_no_tpu_errors_and_runs_on_the_cpu(tmp_path):
    """jax[tpu]'s libtpu is installed here without a chip: left to itself, JAX's first backend
    would print libtpu's initialisation errors before falling back to the CPU. The run stops at
    the mesh check, right after JAX made its backend (one CPU device)."""
    command = [sys.executable, "-c", PROBE, "--config=configs/tiny_gdn.py",
               "--config.train.mesh=data=3", f"--config.train.output_dir={tmp_path}"]  # fmt: skip
    done = subprocess.run(command, env=_clean_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: train.mesh = 'data=3'" in done.stderr and "but 1" in done.stderr, done.stderr
    assert "TPU" not in done.stderr and "libtpu" not in done.stderr, done.stderr
    platforms, flags = done.stdout.strip().splitlines()[-1].split(" | ")
    # the one flag of ours: the workaround for jaxlib 0.10.2's YNN reduction crash
    assert platforms == "cpu" and flags == xla_cpu.YNN_REDUCE_WORKAROUND


def _python(code: str) -> subprocess.CompletedProcess:
    """`python -c code` in the repository with the user's environment."""
    return subprocess.run([sys.executable, "-c", code], env=_clean_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_import_ahn_jax_avoids_the_ynn_reduction_crash():
    """jaxlib 0.10.2 crashes running this reduction on some CPUs (xla_cpu.YNN_REDUCE_WORKAROUND):
    on this project's 2-core AMD EPYC host the same program without `import ahn_jax` dies with
    SIGSEGV inside YNNPACK (checked by hand, 2026-12-06). After the import it runs."""
    code = (
        "import ahn_jax, jax, jax.numpy as jnp; x = jnp.ones((2, 2, 1, 2, 32, 2, 32)); "
        "print(float(jax.jit(lambda a, b: (a * b).sum(4))(x, x + 1).sum()))"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.split()[-1]) == 512 * 32 * 2  # 512 sums of 32 products of 2


def test_training_without_base_or_data_stops_at_once_naming_both():
    """The real configs carry the model's shape only: building a 3B model on a random init would
    take minutes and tens of GB before anything failed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ahn_jax.train", "--config=configs/qwen3b_gdn.py"],
                          env=_clean_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr[-3000:]
    assert seconds < 10, seconds
    message = done.stderr
    assert message.startswith("error: this run needs train.base_checkpoint"), message
    assert "data.paths" in message and "--config.train.base_checkpoint=/path/" in message
    assert "--config.data.paths=/path/" in message and "allow_random_base" in message
    assert "TPU" not in message and "Traceback" not in message


DEMO_BASE = ROOT / "ahn_jax" / "assets" / "demo_base"  # an Orbax checkpoint: Orbax logs its reads


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], env=_clean_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


FIXTURE_JSONL = ROOT / "tests/test_evaluation/fixtures/eval/longbench/hotpotqa.jsonl"
USER_ERRORS = {
    "no model": (["ahn_jax.generate", "--model=/nope", "--prompt=hi"],
                 "--model=/nope does not exist"),
    "no model (evaluate)": (["ahn_jax.evaluate", "--model=/nope", "--task=passkey", "--out=/x"],
                            "--model=/nope does not exist"),
    "hub id": (["ahn_jax.generate", "--model=Qwen/Qwen2.5-3B", "--prompt=hi"],
               "--model=Qwen/Qwen2.5-3B does not exist (ahn_jax reads local directories and "
               "downloads nothing: `huggingface-cli download Qwen/Qwen2.5-3B --local-dir DIR`, "
               "then give DIR)"),
    "no AHN dir": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--ahn=/nope", "--prompt=hi"],
                   "--ahn=/nope does not exist"),
    "ahn without weights": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--mode=ahn",
                             "--prompt=hi"], f"--mode=ahn needs AHN weights: {DEMO_BASE} has "
                            "none; pass --ahn DIR (or --mode=swa / full)"),
    "chat on bytes": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--prompt=hi", "--chat"],
                      'a chat prompt (--chat or a "messages" record) needs the model\'s '
                      "tokenizer.json; this model's vocabulary is bytes: give plain prompts"),
    "zero window": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--prompt=hi", "--window=0"],
                    "flag --window=0: 0 is not a positive integer"),
    "negative sinks": (["ahn_jax.evaluate", f"--model={DEMO_BASE}", "--task=passkey",
                        "--sinks=-1", "--out=/x"], "flag --sinks=-1: -1 is not a non-negative "
                       "integer"),
    "costs of no AHN": (["ahn_jax.costs", "--config=configs/tiny_base.py"], "configs/tiny_base.py "
                        "sets no AHN type (ahn.type = None): give --ahn_type gdn|dn|mamba2 for "
                        "the costs with that AHN"),
    "zero length": (["ahn_jax.costs", "--length=0"], "flag --length=0: 0 is not a positive "
                    "integer"),
    "data for passkey": (["ahn_jax.evaluate", f"--model={DEMO_BASE}", "--task=passkey",
                          "--data=x.jsonl", "--out=/x"], "--data is not read by --task passkey: "
                         "its prompts are generated (--lengths, --depths, --samples)"),
    "flag of the other step": (["ahn_jax.compile_check", "--config=configs/tiny_gdn.py",
                                "--step=decode", "--kernels=xla"], "--kernels applies to "
                               "--step=train or --step=prefill only"),
    "prefill flag to decode": (["ahn_jax.compile_check", "--config=configs/tiny_gdn.py",
                                "--step=decode", "--chunk_size=64"], "--chunk_size applies to "
                               "--step=prefill only"),
    "demo windows": (["ahn_jax.demo", "--windows_per_play=0"], "flag --windows_per_play=0: 0 is "
                     "not a positive integer"),
    "demo base missing": (["ahn_jax.demo", "--quick", "--out=/tmp/nope_demo", "--base=/nope"],
                          "--base /nope: no model there (no config.json)"),  # was replaced
    "bad mesh flag": (["ahn_jax.compile_check", "--config=configs/tiny_gdn.py", "--mesh=bogus"],
                      "--mesh = 'bogus': 'bogus' is not axis=size"),  # named train.mesh
    "zero seq_len": (["ahn_jax.compile_check", "--config=configs/tiny_gdn.py", "--seq_len=0"],
                     "flag --seq_len=0: 0 is not a positive integer"),
    "report of no run": (["ahn_jax.evaluation.report", "--runs=/nope"], "/nope has no "
                         "summary.json: not an evaluate --out directory, or its run has not "
                         "finished"),
    "window with full": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--prompt=hi",
                          "--mode=full", "--window=64"], "--window and --sinks do not apply to "
                         "mode full (it attends every token; the default without AHN weights): "
                         "leave them out, or pass --mode swa / ahn"),
    "no jsonl file": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--jsonl=/nope.jsonl"],
                      "--jsonl=/nope.jsonl does not exist"),
    "no prompt": (["ahn_jax.generate", f"--model={DEMO_BASE}"],
                  "give --model and exactly one of --prompt, --prompt_file, --jsonl"),
    "empty prompt": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--prompt="],
                     "the prompt is empty"),
    "out is a directory": (["ahn_jax.generate", f"--model={DEMO_BASE}",
                            f"--jsonl={FIXTURE_JSONL}",
                            "--out=tests"], "--out=tests is a directory; give the JSONL file to "
                           "write"),
    "out without jsonl": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--prompt=hi",
                           "--out=x.jsonl"], "--out goes with --jsonl (one prompt streams to "
                          "stdout)"),
    "flag of another task": (["ahn_jax.evaluate", f"--model={DEMO_BASE}", "--task=passkey",
                              "--max_length=100", "--out=/x"], "--max_length is not read by "
                             "--task passkey (only by lveval, longbench, infinitebench, "
                             "perplexity)"),
    "no data file": (["ahn_jax.evaluate", f"--model={DEMO_BASE}", "--task=longbench",
                      "--data=nope.jsonl", "--out=/x"], "--data nope.jsonl: no such file or "
                     "directory"),
    "config directory": (["ahn_jax.costs", "--config=configs"], "--config=configs is a "
                         "directory: --config takes a config file (configs/<name>.py)"),
    "no config file": (["ahn_jax.costs", "--config=configs/nope.py"], "--config=configs/nope.py "
                       "does not exist: --config takes a config file (configs/<name>.py)"),
    "config directory (train)": (["ahn_jax.train", "--config=configs"], "--config=configs is a "
                                 "directory: --config takes a config file (configs/<name>.py)"),
    "misspelt override": (["ahn_jax.train", "--config=configs/tiny_gdn.py",
                           "--config.train.stepz=3"], "a --config override "
                          "(--config.train.stepz=3): 'stepz' Did you mean \"steps\" instead of "
                          '"stepz"?'),
    "sampling at temperature 0": (["ahn_jax.generate", f"--model={DEMO_BASE}", "--prompt=hi",
                                   "--do_sample", "--temperature=0"], "--temperature must be > 0 "
                                  "when sampling (--do_sample), got 0.0; for greedy decoding give "
                                  "--nodo_sample"),
    "no config file, an override": (["ahn_jax.train", "--config=configs/nope.py",
                                     "--config.train.steps=3"], "--config=configs/nope.py does "
                                    "not exist: --config takes a config file (configs/<name>.py)"),
    "shakespeare with paths": (["ahn_jax.train", "--config=configs/tiny_gdn.py",
                                "--config.data.paths=('a.jsonl',)"], "data.paths is not read with "
                               "data.format = 'shakespeare' (the plays come with a package): set "
                               "data.format to 'chat' or 'text' for ['a.jsonl'], or drop "
                               "data.paths"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_a_users_error_is_one_line_without_help_traceback_or_info_logs(case):
    """`error: ...` and exit status 2, as the train tool: not absl's 50-90 lines of flag help, a
    traceback, or the ~150 lines Orbax logs at INFO reading the base."""
    args, message = USER_ERRORS[case]
    done = _tool(*args)
    assert (done.returncode, done.stderr) == (2, f"error: {message}\n")


def test_only_a_path_that_looks_like_a_hub_id_gets_the_download_hint(tmp_path, monkeypatch):
    from ahn_jax import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert cli.absent("runs/ahn") == "does not exist"  # a typo under a local folder
    assert "huggingface-cli download Qwen/Qwen2.5-3B" in cli.absent("Qwen/Qwen2.5-3B")


def test_a_training_run_given_as_a_model_says_where_its_weights_are(tmp_path):
    """A run of ahn_jax.train, its checkpoints folder or one step's checkpoint given to generate
    or convert (they read models, and said "no config.json" or advised converting an HF model)."""
    from ahn_jax.checkpoints.converted import read_marker
    from ahn_jax.checkpoints.hf_config import read_hf_config

    def steps(run, objective):
        for step in (6, 20):
            for part in ("trainable", "meta", "opt_state"):
                (run / "checkpoints" / str(step) / part).mkdir(parents=True)
            meta = {"step": step, "config": {"train": {"objective": objective}}}
            (run / "checkpoints" / str(step) / "meta" / "metadata").write_text(json.dumps(meta))
        return run / "checkpoints"

    run = tmp_path / "run"
    checkpoints = steps(run, "distill")
    # a rerun resumes from the latest step, whichever one was given
    for given in (run, checkpoints, checkpoints / "20", checkpoints / "6"):
        with pytest.raises(FileNotFoundError, match=rf"writes its weights to {run / 'ahn'} .*"
                           r"latest step, 20, .* --config.train.steps=20\)"):  # fmt: skip
            read_hf_config(given)
    with pytest.raises(FileNotFoundError, match="is not a converted checkpoint .* step 20"):
        read_marker(checkpoints / "20")
    (run / "ahn").mkdir()
    (run / "ahn" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"--ahn {run / 'ahn'} with the base --model"):
        read_hf_config(checkpoints / "6")
    pretraining = steps(tmp_path / "base", "pretrain")
    with pytest.raises(
        FileNotFoundError, match=f"writes its weights to {tmp_path / 'base' / 'model'}"
    ):
        read_hf_config(pretraining)
    with pytest.raises(FileNotFoundError, match="write one with: python -m ahn_jax.convert"):
        read_marker(tmp_path)  # no run: the general advice


def test_from_pretrained_of_a_hub_id_says_nothing_is_downloaded():
    from ahn_jax import from_pretrained

    with pytest.raises(FileNotFoundError, match="downloads nothing: `huggingface-cli download"):
        from_pretrained("Qwen/Qwen2.5-3B-Instruct")


def test_evaluate_refuses_a_file_with_nothing_to_evaluate(tmp_path):
    data = tmp_path / "hotpotqa.jsonl"  # a LongBench file none of whose lines can be evaluated
    data.write_text('{"context": "no input or answers"}\nnot JSON\n')
    done = _tool("ahn_jax.evaluate", f"--model={DEMO_BASE}", "--task=longbench", "--mode=full",
                 f"--data={data}", f"--out={tmp_path / 'out'}")  # fmt: skip
    assert done.returncode == 2, done.stderr
    *skipped, last = done.stderr.splitlines()
    expected = f"error: --data {data}: nothing to evaluate: every record was skipped (2; see above)"
    assert last == expected
    assert [line.split(": ")[0] for line in skipped] == [f"skipping {data}:1", f"skipping {data}:2"]
    assert not (tmp_path / "out").exists()  # refused before run.json was written


def test_generate_names_each_ahn_tensor_that_does_not_fit_without_a_traceback(tmp_path):
    init_model(tiny_config(vocab_size=256, ahn_type="gdn")).save_ahn(tmp_path / "ahn", window=8,
                                                                     sinks=2)  # fmt: skip
    done = _tool("ahn_jax.generate", f"--model={DEMO_BASE}", f"--ahn={tmp_path / 'ahn'}",
                 "--prompt=hi")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: checkpoint {tmp_path / 'ahn'} does not fit")
    assert "model.layers.0.ahn.fn.D: checkpoint (4,), config expects (2,)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("tool, flag", [("ahn_jax.generate", "kernels"),
                                        ("ahn_jax.evaluate", "kernels"),
                                        ("ahn_jax.costs", "config"),
                                        ("ahn_jax.train", "config")])  # fmt: skip
def test_each_tools_help_lists_the_flags_defined_for_it_in_ahn_jax_cli(tool, flag):
    """absl's --help lists the main module's flags only (the others under --helpfull)."""
    assert f"\n  --{flag}:" in _tool(tool, "--help").stdout


def test_train_help_lists_the_config_fields():
    help_text = _tool("ahn_jax.train", "--help").stdout
    assert "--config.<section>.<field>=<value>" in help_text
    assert "  train.steps = 740\n      optimizer steps of the whole run\n" in help_text


def test_a_checkpoint_that_cannot_be_read_is_one_error_line(tmp_path):
    """A pickle-only directory (safetensors are read, never pickles) as generate's model and as
    training's base: `error: ...` naming the file, exit status 2, no traceback."""
    from ahn_jax.checkpoints.hf_config import to_hf_config
    from ahn_jax.config import load_config_file, validate_config

    config = validate_config(load_config_file(ROOT / "configs" / "tiny_gdn.py"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(to_hf_config(config)))
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    for args in (
        ["ahn_jax.generate", f"--model={pickled}", "--prompt=hi"],
        ["ahn_jax.train", "--config=configs/tiny_gdn.py",
         f"--config.train.base_checkpoint={pickled}",
         f"--config.train.output_dir={tmp_path / 'run'}"],
    ):  # fmt: skip
        done = _tool(*args)
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.startswith("error: ") and "pytorch_model.bin" in done.stderr
        assert "Traceback" not in done.stderr


def test_ctrl_c_in_a_tool_exits_130_with_what_to_do_next():
    """cli.run, which every tool runs through: a KeyboardInterrupt gives its one line (evaluate's:
    the same command resumes) and status 130, not a traceback."""
    code = (
        "from ahn_jax import cli\n"
        "def main(argv):\n"
        "    raise KeyboardInterrupt\n"
        "cli.run(main, on_interrupt='interrupted; the same command resumes')\n"
    )
    done = _python(code)
    assert (done.returncode, done.stderr) == (130, "interrupted; the same command resumes\n")


def test_ctrl_c_while_xla_runs_in_another_thread_exits_130_not_a_fatal_error():
    """The interpreter's teardown under a thread still running XLA aborted ("Fatal Python error",
    status 134 here; a segfault in evaluate, one Ctrl-C in three): cli.run exits at once."""
    code = (
        "import threading, time\n"
        "import jax, jax.numpy as jnp\n"
        "from ahn_jax import cli\n"
        "def busy():\n"
        "    x, f = jnp.ones((1500, 1500)), jax.jit(lambda x: (x @ x).sum())\n"
        "    while True:\n"
        "        f(x).block_until_ready()\n"
        "def main(argv):\n"
        "    threading.Thread(target=busy, daemon=True).start()\n"
        "    time.sleep(1.0)\n"
        "    raise KeyboardInterrupt\n"
        "cli.run(main, on_interrupt='interrupted')\n"
    )
    done = _python(code)
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.endswith("interrupted\n") and "Fatal" not in done.stderr


@pytest.mark.skipif(ON_AN_ACCELERATOR, reason="compiles for a TPU from a host without one")
def test_compile_check_says_it_compiles_and_prints_one_json_report():
    """The report comes minutes after the start for a real model: a line says the compile began
    (stderr; stdout keeps the one JSON object). Run in a user's environment, without the tests'
    ALLOW_MULTIPLE_LIBTPU_LOAD, which the tool sets itself on a host without a TPU."""
    env = {k: v for k, v in _clean_env().items() if k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
    done = subprocess.run(
        [sys.executable, "-m", "ahn_jax.compile_check", "--config=configs/tiny_gdn.py",
         "--topology=v5e-4", "--step=decode", "--batch_size=2", "--window=64", "--sinks=4",
         "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compiling the decode step for v5e-4 ...\n" in done.stderr
    report = json.loads(done.stdout)
    assert report["fits"] and report["step"] == "decode"
