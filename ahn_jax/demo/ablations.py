"""`python -m ahn_jax.demo --ablations`: the paper's ablations asked of the miniature.

Each group distils AHN variants on the demo's base (`pipeline.distil`, the demo's distillation
config with a few fields changed) and scores them on the held-out plays as the demo does, with
standard errors over plays:

- memory alone (the paper's Table 8): AHN-GDN with a minimal lossless part (S sinks + a W = 4
  window) against AHN-GDN with the demo's window, each next to sinks + window alone at its size;
- window generalisation (Fig. 4): AHN-GDN trained at the demo's fixed W against one trained with
  W drawn per sequence (`window_sampling = "random"`, W + S from `RANDOM_TOTALS`), both scored at
  every W of `EVAL_WINDOWS`;
- the objective (Table 4): KL against CE distillation (`train.loss`);
- one figure, recall loss against W for full attention, sinks + window and each AHN type trained
  at the demo's W (plus the random-W AHN-GDN): <out>/recall_vs_window.png.

Outputs: <out>/ablations.md, ablations.json and the figure; a finished run is picked up, not redone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ahn_jax.checkpoints.pretrained import from_pretrained
from ahn_jax.config import AHN_TYPES, DataConfig, TrainConfig
from ahn_jax.demo import scoring
from ahn_jax.training.recall_pairs import RecallSpec

TINY_WINDOW = 4  # the "memory alone" variant's lossless window (plus the demo's sinks)
EVAL_WINDOWS = (16, 32, 64, 128)
# W + S candidates of the random-window variant: with the demo's 4 sinks, W = 32, 64 or 128
# (the window rule keeps W + S above a row's length / 8, so W = 16 is never drawn: a test of
# generalisation below the trained range)
RANDOM_TOTALS = (36, 68, 132)


def variants(sinks: int) -> dict[str, dict]:
    """Name -> (AHN type, changes to `train`) of each AHN distilled beyond the demo's."""
    return {
        "gdn-tiny-window": ("gdn", dict(window=TINY_WINDOW)),
        "gdn-random-window": (
            "gdn",
            dict(window_sampling="random", window_choices=RANDOM_TOTALS, sink_choices=(sinks,)),
        ),  # fmt: skip
        "gdn-ce": ("gdn", dict(loss="ce")),
    }


def run(config, *, base_dir: Path, demo_ahns: dict[str, Path], distil, out: Path,
        windows_per_play: int, seed: int, quick: bool) -> dict:  # fmt: skip
    """Distil the variants (`distil(config, ahn_type, base, out, quick, name=, **train)` is
    pipeline.distil), score every group, write the tables and the figure; returns the results."""
    t = TrainConfig.from_dict(config.train.to_dict())
    d = DataConfig.from_dict(config.data.to_dict())
    start = time.perf_counter()
    ahns = dict(demo_ahns)  # "gdn", "dn", "mamba2" as the demo trained them
    for name, (ahn_type, changes) in variants(t.sinks).items():
        ahns[name] = distil(config, ahn_type, base_dir, out, quick, name=name, **changes)
    groups = score_groups(base_dir, ahns, t, d, windows_per_play, seed)
    results = {"groups": groups, "window": t.window, "sinks": t.sinks, "plays": list(d.held_out),
               "windows_per_play": windows_per_play, "seed": seed, "quick": quick,
               "minutes": (time.perf_counter() - start) / 60}  # fmt: skip
    (out / "ablations.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "ablations.md").write_text(text + "\n")
    plot_recall_vs_window(groups["window_generalisation"], t.sinks, out / "recall_vs_window.png")
    print(text)
    print(f"   written: {out / 'ablations.md'}, {out / 'ablations.json'}, "
          f"{out / 'recall_vs_window.png'}")  # fmt: skip
    return results


def _evaluations(ahns: dict[str, Path], window: int, sinks: int) -> dict[str, list]:
    """Group -> [(row name, model key, mode, W, S)] scored for it; model key "base" is the base."""
    tiny = TINY_WINDOW
    groups = {
        "memory_alone": [
            (f"swa, W = {tiny}", "base", "swa", tiny, sinks),
            (f"ahn-gdn, W = {tiny}", "gdn-tiny-window", "ahn", tiny, sinks),
            (f"swa, W = {window}", "base", "swa", window, sinks),
            (f"ahn-gdn, W = {window}", "gdn", "ahn", window, sinks),
        ],
        "objective": [
            ("ahn-gdn, KL", "gdn", "ahn", window, sinks),
            ("ahn-gdn, CE", "gdn-ce", "ahn", window, sinks),
        ],
        "window_generalisation": [],
    }
    trained = [(f"ahn-{k}", k) for k in AHN_TYPES if k in ahns]
    trained.append(("ahn-gdn, random W", "gdn-random-window"))
    for w in EVAL_WINDOWS:
        # full attention does not depend on W: one row, at the first
        rows = [("full", "base", "full", w, sinks)] if w == EVAL_WINDOWS[0] else []
        rows += [("swa", "base", "swa", w, sinks)]
        rows += [(name, key, "ahn", w, sinks) for name, key in trained]
        groups["window_generalisation"] += [(f"{name} @ W = {w}", *rest) for name, *rest in rows]
    return groups


def score_groups(base_dir, ahns, t: TrainConfig, d: DataConfig, per_play: int, seed: int) -> dict:
    """Every group's rows: per kind (recall, key, text) the mean ± standard error over plays."""
    spec = RecallSpec(**d.recall)
    models = {"base": from_pretrained(base_dir)}
    models.update({k: from_pretrained(base_dir, ahn_path=path) for k, path in ahns.items()})
    windows = scoring.held_out_windows(d.held_out, t.seq_len, spec, per_play, seed)
    groups = _evaluations(ahns, t.window, t.sinks)
    total = sum(len(rows) for rows in groups.values()) * len(windows)
    bar = tqdm(total=total, desc="scoring ablations", dynamic_ncols=True)
    cache: dict[tuple, dict] = {}  # a (model, mode, W, S) scored once for every group
    out = {}
    for group, rows in groups.items():
        out[group] = []
        for name, key, mode, w, s in rows:
            if (key, mode, w, s) not in cache:
                per = []
                for ids, kinds in windows.values():
                    losses = scoring.next_byte_losses(models[key], ids, mode, w, s)
                    per.append(scoring.kind_means(losses, kinds, w + s))
                    bar.update()
                cache[(key, mode, w, s)] = {
                    kind: vars(scoring.Estimate.over([p[kind] for p in per]))
                    for kind in scoring.KINDS
                }
            else:
                bar.update(len(windows))
            out[group].append({"name": name, "model": key, "mode": mode, "window": w, "sinks": s,
                               **cache[(key, mode, w, s)]})  # fmt: skip
    bar.close()
    return out


def markdown(results: dict) -> str:
    titles = {
        "memory_alone": "The memory alone (Table 8's question): a minimal lossless window",
        "window_generalisation": "Window generalisation (Fig. 4's question): trained at "
        f"W = {results['window']} or at random W, scored at each W",
        "objective": "The objective (Table 4's question): KL against CE distillation",
    }
    lines = [f"S = {results['sinks']} sinks; {len(results['plays'])} held-out plays x "
             f"{results['windows_per_play']} windows; mean next-byte loss (nats) ± standard "
             f"error over plays; {results['minutes']:.0f} minutes"]  # fmt: skip
    for group, rows in results["groups"].items():
        lines += ["", f"### {titles[group]}", "",
                  "| model | recalled letters | keys' letters | text beyond S+W |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for row in rows:
            cells = [str(scoring.Estimate(**row[k])) for k in ("recall", "key", "text")]
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    if results["quick"]:
        lines.append("\n(--quick: short runs; these numbers show the machinery, not the effect.)")
    return "\n".join(lines)


def plot_recall_vs_window(rows: Sequence[dict], sinks: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ahn_jax.evaluation.figures import LINE_STYLES

    fig, ax = plt.subplots(figsize=(8, 4.5))
    lines: dict[str, list] = {}
    for row in rows:
        lines.setdefault(row["name"].split(" @ ")[0], []).append(row)
    styles = cycle(LINE_STYLES)
    for name, points in lines.items():
        w = np.array([p["window"] for p in points])
        mean = np.array([p["recall"]["mean"] for p in points])
        err = np.array([p["recall"]["stderr"] for p in points])
        if name == "full":  # independent of W: a line across
            ax.axhline(mean[0], color="black", linestyle="--",
                       label=f"full attention ({mean[0]:.3f})")  # fmt: skip
            continue
        marker, linestyle = next(styles)
        ax.errorbar(w, mean, yerr=err, marker=marker, linestyle=linestyle, markerfacecolor="none",
                    capsize=3, label=name)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(EVAL_WINDOWS, [str(w) for w in EVAL_WINDOWS])
    ax.minorticks_off()
    ax.set(xlabel=f"window W at evaluation (plus {sinks} sinks)",
           ylabel="loss on the recalled letters (nats/letter)",
           title="recall beyond the window, held-out plays\n"
                 "lower is better; error bars: ±1 s.e. over plays")  # fmt: skip
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
