"""`make demo`: the paper's claim in miniature, on real text, on a laptop CPU.

  python -m ahn_jax.demo [--types gdn,dn,mamba2] [--quick] [--base DIR] [--out runs/demo]
      [--ablations]

1. The base: a tiny byte-level Qwen2-architecture model pretrained with full attention on the
   Shakespeare plays (four held out) with key/recall pairs mixed in (configs/tiny_base.py). It is
   looked for in --base, then ahn_jax/assets/demo_base, then runs/demo_base/model; failing those it
   is pretrained here through `ahn_jax.train` with configs/tiny_base.py, the command the committed
   base was made with (resumable; ~55 min on 2 CPU cores).
2. Self-distillation of each AHN type on that base through `ahn_jax.train` and --config
   (configs/demo_gdn.py: 4 sinks + a 32-byte window, so every recall needs the memory). A finished
   run in <out>/<type> is picked up, not repeated.
3. Held-out plays, cut into windows with their own pairs (fixed seed), scored under full attention,
   sinks + window, and sinks + window + each AHN: loss on the recalled letters, on the keys' letters
   (the baseline) and on plain text beyond S + W, with standard errors over plays; cache bytes and
   FLOPs per token at 1k and 8k tokens. Table, JSON and a loss-by-position plot go to --out.

4. With --ablations (all three types unless --types says otherwise): the paper's ablations in
   miniature, ahn_jax/demo/ablations.py (the memory alone, window generalisation, KL against CE,
   and recall loss against W in one figure).

--quick (the CI smoke test, a few minutes): fewer steps and windows, and a barely trained base when
none is found; its numbers show the machinery, not the effect.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import numpy as np
from absl import app
from tqdm import tqdm

from ahn_jax import cli
from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.config import DataConfig, TrainConfig
from ahn_jax.costs import formulas, table
from ahn_jax.demo import scoring
from ahn_jax.training import loop
from ahn_jax.training.recall_pairs import RecallSpec

ASSET_BASE = Path(__file__).parents[1] / "assets" / "demo_base"
RUN_BASE = Path("runs/demo_base/model")


def find_or_pretrain_base(base: str | None, quick: bool, out: Path) -> tuple[Path, str]:
    """(base directory, how it was obtained): `base`, else the committed base, else an earlier
    run's; failing those (or with base = "pretrain") one pretrained here."""
    if base and base != "pretrain":  # a base given must be there (it fell back to the asset)
        if not (Path(base) / "config.json").is_file():
            raise app.UsageError(f"--base {base}: no model there (no config.json)")
        return Path(base), "given"
    candidates = () if base == "pretrain" else (ASSET_BASE, RUN_BASE)
    for candidate in candidates:
        if (Path(candidate) / "config.json").is_file():
            return Path(candidate), "found"
    from configs import tiny_base

    config = tiny_base.get_config()
    if quick:  # enough to run the pipeline (both phases); the recall is not learned so soon
        config.train.update(steps=20, batch_size=8, log_every=10, checkpoint_every=20,
                            output_dir=str(out / "quick_base"))  # fmt: skip
        config.data.copy_warmup = dict(config.data.copy_warmup, steps=10)
    t = config.train
    print(f"   no pretrained base found: pretraining one ({t.steps} steps of {t.batch_size} x "
          f"{t.seq_len} bytes) into {t.output_dir}" + ("" if quick else
          "; on 2 CPU cores about 55 minutes (it resumes if interrupted)"))  # fmt: skip
    loop.train(config)
    return Path(t.output_dir) / "model", f"pretrained here ({t.steps} steps)"


def distil(config, ahn_type: str, base: Path, out: Path, quick: bool, name: str | None = None,
           **train_changes) -> Path:  # fmt: skip
    """AHN-`ahn_type` distilled on `base` into <out>/<name> (default: the type), with `train`
    fields changed as given (the ablations' variants); returns its AHN export."""
    config = config.copy_and_resolve_references()
    config.ahn.type = ahn_type
    config.train.update(base_checkpoint=str(base), output_dir=str(out / (name or ahn_type)),
                        **train_changes)  # fmt: skip
    if quick:
        config.train.update(steps=min(config.train.steps, 20), checkpoint_every=20, log_every=5)
    t = config.train
    how = f"S={t.sinks} + W={t.window}" if t.window_sampling == "fixed" else (
        f"W + S drawn from {tuple(t.window_choices)}")  # fmt: skip
    print(f"2. self-distilling AHN-{ahn_type.upper()} for {t.steps} steps ({t.batch_size} x "
          f"{t.seq_len} bytes, {how}, loss {t.loss}) into {t.output_dir}")  # fmt: skip
    start = time.perf_counter()
    run = loop.train(config)
    print(f"   done in {time.perf_counter() - start:.0f} s")
    return run.output_dir / cli.EXPORT_NAMES["distill"]


def cost_columns(model_config, mode: str, window: int, sinks: int) -> dict[str, float]:
    """Decode-cache bytes and forward FLOPs per token of one model at 1k and 8k tokens."""
    row = {}
    for length in (1024, 8192):
        w, s = (length, 0) if mode == "full" else (window, sinks)
        row[f"cache_bytes_{length}"] = table.decode_cache_bytes(model_config, w, s, mode)
        total = formulas.forward_flops(model_config, length, mode, window + sinks)
        row[f"flops_per_token_{length}"] = total / length  # each matmul once
    return row


def run(
    config,
    *,
    types: Sequence[str],
    quick: bool,
    base: str | None,
    out: Path,
    windows_per_play: int,
    seed: int,
    command: str,
    ablations: bool = False,
) -> dict:
    """The demo (the module docstring's three steps) with the distillation config ConfigDict
    `config`: the table, JSON and plot go to `out`; returns the results. `command` is recorded
    with them. `ablations` then runs ahn_jax/demo/ablations.py's groups on the same base."""
    out.mkdir(parents=True, exist_ok=True)
    print("1. the base")
    base_dir, provenance = find_or_pretrain_base(base, quick, out)
    print(f"   {base_dir}: {provenance}")
    ahn_dirs = {t: distil(config, t, base_dir, out, quick) for t in types}
    t = TrainConfig.from_dict(config.train.to_dict())
    d = DataConfig.from_dict(config.data.to_dict())
    per_play_windows = 4 if quick else windows_per_play
    models, per_play, position_sums = score_plays(base_dir, ahn_dirs, t, d, per_play_windows, seed)
    results = summarize(per_play, models, t.window, t.sinks)
    results.update(
        base=str(base_dir), base_provenance=provenance, quick=quick, plays=list(d.held_out),
        windows_per_play=per_play_windows, seed=seed, window=t.window, sinks=t.sinks,
        length=t.seq_len, recall=dict(d.recall), distill_steps=t.steps,
        machine=f"{platform.machine()}, {platform.processor() or 'cpu'}", command=command,
    )  # fmt: skip
    text = markdown(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(text + "\n")
    plot_positions(position_sums, len(d.held_out) * per_play_windows, t.window + t.sinks, out)
    print(text)
    print(
        f"   written: {out / 'results.md'}, {out / 'results.json'}, {out / 'loss_by_position.png'}"
    )
    if ablations:
        from ahn_jax.demo import ablations as ablation_groups

        print("4. ablations")
        results["ablations"] = ablation_groups.run(
            config, base_dir=base_dir, demo_ahns=ahn_dirs, distil=distil, out=out,
            windows_per_play=per_play_windows, seed=seed, quick=quick,
        )  # fmt: skip
    return results


def score_plays(base: Path, ahn_dirs: dict[str, Path], t: TrainConfig, d: DataConfig,
                per_play_windows: int, seed: int):  # fmt: skip
    """The base (full attention, sinks + window) and each AHN on `per_play_windows` windows of
    every held-out play: (models, per-play mean losses by kind, loss sums by position)."""
    spec, plays = RecallSpec(**d.recall), d.held_out
    window, sinks, length = t.window, t.sinks, t.seq_len
    print(
        f"3. scoring {len(plays)} held-out plays x {per_play_windows} windows of {length} bytes "
        f"(S={sinks} + W={window}; recalls {spec.min_gap}-{spec.max_gap} bytes after their key)"
    )
    base_model = from_pretrained(base)
    models = {"full": (base_model, "full"), "swa": (base_model, "swa")}
    for ahn_type, ahn_dir in ahn_dirs.items():
        models[f"ahn-{ahn_type}"] = (from_pretrained(base, ahn_path=ahn_dir), "ahn")
    per_play: dict[str, dict[str, dict[str, float]]] = {}
    position_sums = {name: np.zeros(length - 1) for name in models}
    bar = tqdm(total=len(plays) * len(models), desc="scoring", dynamic_ncols=True)
    windows = scoring.held_out_windows(plays, length, spec, per_play_windows, seed)
    for play, (ids, kinds) in windows.items():
        per_play[play] = {}
        for name, (model, mode) in models.items():
            losses = scoring.next_byte_losses(model, ids, mode, window, sinks)
            per_play[play][name] = scoring.kind_means(losses, kinds, window + sinks)
            position_sums[name] += losses.sum(0)
            bar.update()
        bar.write(f"   {play}: " + ", ".join(f"{n} recall {m['recall']:.3f}"
                                           for n, m in per_play[play].items()))  # fmt: skip
    bar.close()
    return models, per_play, position_sums


def summarize(per_play, models, window, sinks) -> dict:
    rows = {}
    for name, (model, mode) in models.items():
        rows[name] = {
            kind: vars(scoring.Estimate.over([per_play[p][name][kind] for p in per_play]))
            for kind in scoring.KINDS
        }
        rows[name].update(cost_columns(model.config, mode, window, sinks))
    claims = {}
    for name in models:
        if not name.startswith("ahn-"):
            continue
        full, swa, this = (rows[m]["recall"]["mean"] for m in ("full", "swa", name))
        try:
            closed = scoring.gap_closed(per_play, name)
        except ValueError as e:  # an untrained base: no gap, nothing to claim
            claims[name] = {"holds": False, "why": str(e)}
            continue
        between = full < this < swa
        # A model that cannot see the key may be *worse* than chance on the recalled letters
        # (it expects to copy); closing that excess is not recall. Below the keys' loss (chance
        # for these letters) is: the margin says how much of the closed gap is real recall.
        below_chance = rows[name]["key"]["mean"] - this
        claims[name] = {
            "gap_closed": vars(closed),
            "between_full_and_swa": bool(between),
            "holds": bool(between and closed.mean - closed.stderr > 0.3),
            "below_keys_baseline": float(below_chance),
            "full_below_keys_baseline": float(rows["full"]["key"]["mean"] - full),
            **{
                f"share_of_full_margin_{b}": vars(scoring.margin_share(per_play, name, b))
                for b in scoring.BASELINES
            },  # fmt: skip
        }
    return {"rows": rows, "claims": claims}


def markdown(results: dict) -> str:
    lines = [
        f"S = {results['sinks']} sinks + W = {results['window']} window; {len(results['plays'])} "
        f"held-out plays x {results['windows_per_play']} windows of {results['length']} bytes; "
        "mean next-byte loss (nats) ± standard error over plays",
        "",
        "| model | recalled letters | keys' letters (baseline) | text beyond S+W | cache 1k / 8k "
        "| FLOPs/token 1k / 8k |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["rows"].items():
        cells = [str(scoring.Estimate(**row[k])) for k in ("recall", "key", "text")] + [
            f"{row['cache_bytes_1024'] / 1024:.0f} / {row['cache_bytes_8192'] / 1024:.0f} KiB",
            f"{row['flops_per_token_1024'] / 1e6:.2f} / {row['flops_per_token_8192'] / 1e6:.2f} M",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, claim in results["claims"].items():
        if "gap_closed" in claim:
            closed = scoring.Estimate(**claim["gap_closed"])
            verdict = "holds" if claim["holds"] else "does NOT hold"
            if results["quick"]:
                verdict += " in this --quick run, which is no evidence either way"
            below = claim["below_keys_baseline"]
            side = "below" if below >= 0 else "above"
            own, strict = (scoring.Estimate(**claim[f"share_of_full_margin_{b}"])
                           for b in scoring.BASELINES)  # fmt: skip
            lines.append(f"{name} closes {closed} of the sinks+window - full recall gap; the "
                         f"claim (between, > 30% beyond its error bar) {verdict}. Its recall "
                         f"loss is {abs(below):.3f} nats {side} the keys' baseline (full "
                         f"attention's {_margin(claim['full_below_keys_baseline'])}): "
                         f"{own} of full attention's margin below chance ({strict} measured "
                         "from full attention's keys' loss).")  # fmt: skip
        else:
            lines.append(f"{name}: no claim can be checked: {claim['why']}")
    if results["quick"]:
        lines.append("(--quick: short runs; these numbers show the machinery, not the effect.)")
    return "\n".join(lines)


def _margin(below: float) -> str:
    return f"{abs(below):.3f} {'below' if below >= 0 else 'above'}"


def plot_positions(position_sums, count: int, beyond: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ahn_jax.evaluation.figures import LINE_STYLES

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bucket = 16
    for (name, sums), (marker, linestyle) in zip(position_sums.items(), cycle(LINE_STYLES)):
        mean = sums / count
        n = len(mean) // bucket * bucket
        # the three AHN types nearly coincide: open markers of distinct shapes keep each seen
        ax.plot(np.arange(n // bucket) * bucket + bucket / 2 + 1,
                mean[:n].reshape(-1, bucket).mean(1), marker=marker, linestyle=linestyle,
                markerfacecolor="none", label=name)  # fmt: skip
    ax.axvline(beyond, color="gray", linestyle=":", label="S + W")
    # a byte is a token of this model: the units of evaluate's loss_by_position.png
    ax.set(xlabel=f"position of the predicted byte (means of {bucket}-byte buckets)",
           ylabel="mean loss (nats/byte = nats/token)",
           title=f"held-out plays with key/recall pairs, mean over {count} windows")  # fmt: skip
    # beside the axes: inside, it covered the lines where they part
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "loss_by_position.png", dpi=120)
    plt.close(fig)
