"""Which XLA:CPU flags keep the CPU deadlock away (docs/kernels.md, ahn_jax/xla_cpu.py), and what
each costs: every trial is a fresh process with its own XLA_FLAGS, run one at a time.

  python bench/xla_cpu_deadlock.py [--cases=trsm,gdn_original,gdn,...] [--flag_sets=none,S,E,...]
      [--trials=6] [--runs=20] [--stall_s=60] [--stacks_dir=DIR] [--json=PATH]
  python bench/xla_cpu_deadlock.py --cases=gdn_fwd,gdn,fwd_full,fwd_ahn,distill
      --flag_sets=S+E+Y,none --trials=3 --runs=10   # speed: "ratio" is against the first set

A flag set is "none" or a "+"-joined list of atoms (ATOMS): S, E, Y are the project's three
workaround flags, T the old thunk-runtime switch (still parsed, only warns: "no longer supported").
Trials are interleaved (trial 1 of every case and set, then trial 2, ...), so that the load of a
shared machine hits every set alike. A trial compiles, then runs the program --runs times; it is a
hang when it prints nothing for --stall_s seconds (a normal run takes well under a second). With
gdb on the machine, a hung child's native stacks are saved (--stacks_dir) and the table names where
its XLA:CPU worker threads ("tf_XLAEigen") wait. The table also names the compiled program's
custom-call targets: the hangs seen so far were all jaxlib's LAPACK kernels (`lapack_*_ffi`, jax
0.10.x), which split a batch over XLA's intra-op pool and block a pool thread until it is done.
Times: the median and the largest of a set's runs (the first run of each trial, which compiles,
left out); "ratio" is the median against the first flag set's; "compile s" is the time to the
first result (compiles included).

Cases (jitted; "grad" = gradients of a sum of the outputs with respect to every input):
  trsm          grad of one batched unit-lower triangular solve, [--batch, 64, 64] \\ [.., 64, 256]:
                no project code, the smallest program with the hang
  trsm_products the same solve as products of the inverse (kernels.common.chunking's
                unit_lower_inverse, what the chunked kernels use instead): no LAPACK call
  gdn           grad of the chunked gated delta rule (kernels/, working tree), B = 1, N = --heads,
                H = E = 128, T = --length, chunk 64
  gdn_original  the same program with kernels/ as of --original_rev (dc49136, where the flags were
                added; its chunked form used XLA's batched triangular_solve)
  gdn_fwd       the forward of `gdn` alone
  fwd_full      forward (logits) of a ~50 M model, mode "full", T = --model_length
  fwd_ahn       the same in mode "ahn" (W = 512, S = 32): attention plus the chunked GDN
  distill       the tiny model's distillation train step (bench/train_step.py's), T = --model_length
"""

from __future__ import annotations

import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parent.parent
ATOMS = {
    "S": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "E": "--xla_cpu_multi_thread_eigen=false",
    "Y": "--xla_cpu_experimental_ynn_fusion_type=",
    "T": "--xla_cpu_use_thunk_runtime=false",
}
DEFAULT_SETS = ["none", "S", "E", "Y", "S+E", "S+Y", "E+Y", "S+E+Y", "T"]
CASES = ("trsm", "trsm_products", "gdn", "gdn_original", "gdn_fwd", "fwd_full", "fwd_ahn",
         "distill")  # fmt: skip
MODEL_50M = dict(vocab_size=50304, hidden_size=512, intermediate_size=1536, num_layers=8,
                 num_heads=8, num_kv_heads=2, head_dim=64, tie_word_embeddings=True)  # fmt: skip
MODEL_TINY = dict(vocab_size=256, hidden_size=128, intermediate_size=384, num_layers=4,
                  num_heads=2, num_kv_heads=1, head_dim=64, tie_word_embeddings=True)  # fmt: skip

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("cases", ["trsm", "gdn_original", "gdn"], f"programs, from {CASES}")
    flags.DEFINE_list("flag_sets", DEFAULT_SETS,
                      f"'none' or '+'-joined atoms of {sorted(ATOMS)}")  # fmt: skip
    flags.DEFINE_integer("trials", 6, "fresh processes per case and flag set")
    flags.DEFINE_integer("runs", 20, "executions per trial after the compile")
    flags.DEFINE_float("stall_s", 60.0, "seconds without output that count as a hang")
    flags.DEFINE_integer("batch", 128, "trsm: matrices in the batch")
    flags.DEFINE_integer("heads", 16, "gdn*: heads N")
    flags.DEFINE_integer("length", 512, "gdn*: sequence length T")
    flags.DEFINE_integer("model_length", 2048, "fwd_*, distill: sequence length T")
    flags.DEFINE_string("original_rev", "dc49136", "git revision of kernels/ for gdn_original")
    flags.DEFINE_string("stacks_dir", "/tmp/xla_cpu_deadlock_stacks", "hung children's stacks")
    flags.DEFINE_string("json", "", "also write the results here (JSON)")
    flags.DEFINE_bool("custom_calls", True, "list the program's custom calls (compiles twice)")
    flags.DEFINE_string("child", "", "internal: run one trial of this case in this process")
    flags.DEFINE_string("kernels_root", "", "internal: where the child imports kernels/ from")


def xla_flags(flag_set: str) -> str:
    if flag_set == "none":
        return ""
    return " ".join(ATOMS[atom] for atom in flag_set.split("+"))


# ---- the child: one case, compiled once and run --runs times, progress on stdout ----


def _gdn_inputs(jax, jnp):
    B, N, H, T = 1, FLAGS.heads, 128, FLAGS.length
    ks = jax.random.split(jax.random.PRNGKey(0), 5)
    q, k, v = (jax.random.normal(key, (B, T, N, H)) for key in ks[:3])
    q, k = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
    g = -jax.nn.softplus(jax.random.normal(ks[3], (B, T, N)))
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (B, T, N)))
    return q, k, v, g, beta


def _model(jax, jnp, settings: dict):
    from ahn_jax.config import make_config, validate_config
    from ahn_jax.model.transformer import init_model

    length = FLAGS.model_length
    settings = {**settings, "param_dtype": "float32", "dtype": "float32", "remat_policy": "full",
                "max_position_embeddings": max(length, 32768)}  # fmt: skip
    config = make_config(settings, ahn_type="gdn",
                         train=dict(seq_len=length, seq_tile=512, vocab_tile=8192, steps=10),
                         data=dict(cutoff_len=length))  # fmt: skip
    model = init_model(validate_config(config), seed=0, ahn_output_init="normal")
    ids = jax.random.randint(jax.random.PRNGKey(0), (1, length), 0, settings["vocab_size"])
    return config, model, ids


def _forward(jax, jnp, mode: str):
    from flax import nnx

    _, model, ids = _model(jax, jnp, MODEL_50M)
    graphdef, state = nnx.split(model)
    bounds = {"window": 512, "sinks": 32} if mode == "ahn" else {}

    def fwd(state, ids):
        return nnx.merge(graphdef, state)(ids, mode=mode, **bounds)

    return jax.jit(fwd), (state, ids)


def _distill(jax, jnp):
    from flax import nnx

    from ahn_jax.config import TrainConfig
    from ahn_jax.model.memory import AhnParam
    from ahn_jax.training.optimizer import optimizer_for
    from ahn_jax.training.step import make_train_step

    config, model, ids = _model(jax, jnp, MODEL_TINY)
    train = TrainConfig.from_dict(config.train.to_dict())
    graphdef, trainable, frozen = nnx.split(model, AhnParam, ...)
    tx, schedule = optimizer_for(train)
    step = make_train_step(graphdef, tx, schedule, train)
    batch = {"input_ids": ids, "labels": ids, "window": jnp.asarray([512], jnp.int32),
             "sinks": jnp.asarray([32], jnp.int32)}  # fmt: skip
    opt_state = tx.init(trainable)

    def run(trainable, opt_state, frozen, batch):  # the step donates its state: fresh copies
        return step(*jax.tree.map(jnp.copy, (trainable, opt_state)), frozen, batch, jnp.int32(3))

    run.lowerable = (step, (trainable, opt_state, frozen, batch, jnp.int32(3)))
    return run, (trainable, opt_state, frozen, batch)


def _trsm(jax, jnp, products: bool):
    """grad of |X|^2 for X = (I + A)^-1 b, A strictly lower: LAPACK's batched trsm (what
    `triangular_solve` lowers to on the CPU) or products of the inverse (`unit_lower_inverse`)."""
    ks = jax.random.split(jax.random.PRNGKey(0), 2)
    A = 0.1 * jnp.tril(jax.random.normal(ks[0], (FLAGS.batch, 64, 64)), -1)
    b = jax.random.normal(ks[1], (FLAGS.batch, 64, 256))
    hi = jax.lax.Precision.HIGHEST
    if products:
        from kernels.common.chunking import unit_lower_inverse

        solve = lambda A, b: jnp.matmul(unit_lower_inverse(A, hi), b, precision=hi)  # noqa: E731
    else:
        solve = lambda A, b: jax.lax.linalg.triangular_solve(  # noqa: E731
            A, b, left_side=True, lower=True, unit_diagonal=True
        )
    loss = lambda A, b: jnp.sum(solve(A, b) ** 2)  # noqa: E731
    return jax.jit(jax.grad(loss, argnums=(0, 1))), (A, b)


def _program(case: str):
    """(function, arguments): `function(*arguments)` is the work of one run."""
    import jax
    import jax.numpy as jnp

    if case in ("trsm", "trsm_products"):
        return _trsm(jax, jnp, products=case == "trsm_products")
    if case in ("gdn", "gdn_original", "gdn_fwd"):
        from kernels.delta_rule import gated_delta_rule

        out = lambda *a: gated_delta_rule(*a, impl="chunked")[0]  # noqa: E731
        if case == "gdn_fwd":
            return jax.jit(out), _gdn_inputs(jax, jnp)
        summed = lambda *a: jnp.sum(out(*a))  # noqa: E731
        return jax.jit(jax.grad(summed, argnums=(0, 1, 2, 3, 4))), _gdn_inputs(jax, jnp)
    if case in ("fwd_full", "fwd_ahn"):
        return _forward(jax, jnp, case.removeprefix("fwd_"))
    return _distill(jax, jnp)


def child(case: str) -> None:
    # kernels/ from the working tree or an extracted revision, ahead of bench/kernels.py
    sys.path.insert(0, FLAGS.kernels_root or str(ROOT))
    import jax

    fn, args = _program(case)
    start = time.perf_counter()
    if FLAGS.custom_calls:
        step, step_args = getattr(fn, "lowerable", (fn, args))
        text = step.lower(*step_args).compile().as_text()
        targets = sorted(set(re.findall(r'custom_call_target="([^"]+)"', text)))
        print("custom_calls " + (",".join(targets) or "none"), flush=True)
    jax.block_until_ready(fn(*args))  # compiles (or finds the program compiled above), runs
    print(f"compiled {time.perf_counter() - start:.4f}", flush=True)
    for _ in range(FLAGS.runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        print(f"run {time.perf_counter() - start:.4f}", flush=True)
    print("done", flush=True)


# ---- the parent: trials, hang detection, stacks, the table ----


def _native_stacks(pid: int, name: str) -> str:
    """Save the hung process's native stacks; a short note on where its XLA workers wait."""
    if not shutil.which("gdb"):
        return "no gdb"
    out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 30"],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    Path(FLAGS.stacks_dir).mkdir(parents=True, exist_ok=True)
    (Path(FLAGS.stacks_dir) / f"{name}.txt").write_text(out)
    workers = [t for t in out.split("\nThread ") if '"tf_XLAEigen"' in t.split("\n", 1)[0]]
    waits = []
    for where in ("ParallelBatchMap", "FftThunk", "Ynn", "ynn"):
        n = sum(where in t for t in workers)
        if n:
            waits.append(f"{n}/{len(workers)} in {where}")
    return ", ".join(waits) or f"{len(workers)} workers, none in a known blocking call"


def _trial(case: str, flag_set: str, env_base: dict, kernels_root: str, name: str) -> dict:
    env = {**env_base, "XLA_FLAGS": xla_flags(flag_set)}
    cmd = [sys.executable, __file__, f"--child={case}", f"--runs={FLAGS.runs}",
           f"--batch={FLAGS.batch}", f"--heads={FLAGS.heads}", f"--length={FLAGS.length}",
           f"--model_length={FLAGS.model_length}", f"--kernels_root={kernels_root}",
           f"--custom_calls={FLAGS.custom_calls}"]  # fmt: skip
    with tempfile.TemporaryFile("w+") as err:  # a file: a full stderr pipe would stall the child
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)  # fmt: skip
        result = {"status": "ok", "runs": [], "compile_s": None, "where": "", "custom_calls": "?"}
        fd, pending, last = proc.stdout.fileno(), b"", time.monotonic()
        while True:
            if select.select([fd], [], [], 1.0)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                last = time.monotonic()
                *lines, pending = (pending + chunk).split(b"\n")
                for word, *value in (line.decode().split() for line in lines if line.strip()):
                    if word == "compiled":
                        result["compile_s"] = float(value[0])
                    elif word == "run":
                        result["runs"].append(float(value[0]))
                    elif word == "custom_calls":
                        result["custom_calls"] = value[0]
            elif time.monotonic() - last > FLAGS.stall_s:
                result["status"] = "hang"
                result["where"] = _native_stacks(proc.pid, name)
                os.killpg(proc.pid, 9)
                break
        proc.wait()
        err.seek(0)
        lines = err.read().strip().splitlines()
    if result["status"] == "ok" and (proc.returncode != 0 or len(result["runs"]) < FLAGS.runs):
        result["status"], result["where"] = "error", (lines[-1][:120] if lines else "")
    return result


def _kernels_roots(tmp: str) -> dict[str, str]:
    """kernels/ of --original_rev, extracted under tmp (git archive) for gdn_original."""
    roots = {case: "" for case in FLAGS.cases}
    if "gdn_original" in roots:
        dest = Path(tmp) / "original"
        dest.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", FLAGS.original_rev,
                                  "kernels"], capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        roots["gdn_original"] = str(dest)
    return roots


def _summary(results: dict, case: str, flag_set: str, base: float | None) -> str:
    trials = results[case, flag_set]
    hangs = sum(t["status"] == "hang" for t in trials)
    errors = sum(t["status"] == "error" for t in trials)
    runs = [s for t in trials for s in t["runs"][1:]]  # the first run of a trial warms up
    compiles = [t["compile_s"] for t in trials if t["compile_s"] is not None]
    med = statistics.median(runs) if runs else None
    where = sorted({t["where"] for t in trials if t["where"]})
    calls = sorted({t["custom_calls"] for t in trials if t["custom_calls"] != "?"})
    return (f"| {case} | {flag_set} | {len(trials)} | {hangs} | {errors} | "
            f"{'-' if med is None else f'{med:.4f}'} | {f'{max(runs):.2f}' if runs else '-'} | "
            f"{'-' if not (med and base) else f'{med / base:.2f}'} | "
            f"{f'{statistics.median(compiles):.1f}' if compiles else '-'} | "
            f"{'; '.join(calls) or '-'} | {'; '.join(where) or '-'} |")  # fmt: skip


def _run_all(env: dict, roots: dict) -> dict:
    results = {(case, s): [] for case in FLAGS.cases for s in FLAGS.flag_sets}
    for trial in range(FLAGS.trials):
        for case in FLAGS.cases:
            for flag_set in FLAGS.flag_sets:
                name = f"{case}_{flag_set.replace('+', '')}_{trial}"
                r = _trial(case, flag_set, env, roots[case], name)
                results[case, flag_set].append(r)
                med = statistics.median(r["runs"]) if r["runs"] else float("nan")
                print(f"trial {trial + 1}/{FLAGS.trials} {case:13s} {flag_set:8s} "
                      f"{r['status']:5s} runs {len(r['runs']):3d} median {med:.4f} s "
                      f"{r['where']}", flush=True)  # fmt: skip
    return results


def main(argv) -> None:
    del argv
    if FLAGS.child:
        return child(FLAGS.child)
    from common import check_known, machine

    check_known("cases", FLAGS.cases, CASES)
    atoms = {a for s in FLAGS.flag_sets if s != "none" for a in s.split("+")}
    check_known("flag_sets", sorted(atoms), ATOMS)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    print(f"{machine()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = _run_all(env, _kernels_roots(tmp))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; ratio: median run time against "
          f"the first flag set ({FLAGS.flag_sets[0]})\n")  # fmt: skip
    print("| case | flags | trials | hangs | errors | median run s | max run s | ratio | "
          "compile s | custom calls | hung workers wait in |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for case in FLAGS.cases:
        base_runs = [s for t in results[case, FLAGS.flag_sets[0]] for s in t["runs"][1:]]
        base = statistics.median(base_runs) if base_runs else None
        for flag_set in FLAGS.flag_sets:
            print(_summary(results, case, flag_set, base))
    print("\nflag atoms: " + ", ".join(f"{k} = {v}" for k, v in ATOMS.items()))
    if FLAGS.json:
        import json

        rows = [{"case": c, "flags": s, "xla_flags": xla_flags(s), "trials": t}
                for (c, s), t in results.items()]  # fmt: skip
        Path(FLAGS.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
