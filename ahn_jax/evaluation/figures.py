"""The figures of an evaluation report (`report.write_report`) and of `report --runs`: heat maps
of the pass-key / NIAH grid, score by prompt length, loss by position, cache memory by capacity.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import cycle
from pathlib import Path

import numpy as np

from ahn_jax.costs import table
from ahn_jax.evaluation import ruler
from ahn_jax.evaluation.results import GRID_TASKS
from ahn_jax.evaluation.tasks import report_name


class CompareError(ValueError):
    """Runs that one comparison figure cannot show (the CLI reports it as one error line)."""


def grid_label(task: str) -> str:
    """What the length x depth grid of a pass-key or NIAH run holds."""
    return "pass-key accuracy" if task == "passkey" else f"{task} score (values recalled)"


# distinct markers and line styles: runs with identical values stay visible one over another
LINE_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"))


def run_label(settings: dict) -> str:
    """The run's mode, with its window and sinks unless it is full attention."""
    mode = settings["mode"]
    return mode if mode == "full" else f"{mode} (W {settings['window']}, S {settings['sinks']})"


def model_name(settings: dict) -> str:
    """The model's directory name, with the AHN checkpoint's where one is loaded."""
    name = Path(str(settings.get("model", "?"))).name
    ahn = settings.get("ahn")
    return f"{name} + {Path(str(ahn)).name}" if ahn else name


def variant_name(settings: dict) -> str:
    """The task, and for a NIAH variant the needle settings that differ from its defaults (e.g.
    niah_multikey_keys-8_haystack-needle): a figure's file name and title."""
    task = settings["task"]
    if task not in ruler.VARIANTS:
        return task
    defaults = vars(ruler.make_config(task))
    extra = settings.get("extra", {})
    changed = [f"{k}-{extra[k]}" for k in defaults if k in extra and extra[k] != defaults[k]]
    return "_".join([task, *changed])


def grid_depths(grid: dict) -> list[str]:
    """The needle depths of a length x depth grid {length: {depth: score, "all": mean}}, in
    order."""
    return sorted({d for row in grid.values() for d in row if d != "all"}, key=float)


def grid_figure(plt, out: Path, settings: dict, summary: dict, records: list[dict]) -> Path:
    """The length x depth heat map; returns the file name (the variant's)."""
    grid = summary["accuracy"]
    depths = grid_depths(grid)
    matrix = np.asarray([[grid[n].get(d, np.nan) for n in grid] for d in depths], float)
    counts = defaultdict(int)
    for r in records:
        counts[(r["context_length"], r["depth"])] += 1
    n = sorted(set(counts.values()))
    per_cell = f"n = {n[0]}" if len(n) == 1 else f"n = {n[0]}-{n[-1]}"
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("lightgrey")
    fig, ax = plt.subplots(figsize=(1.2 * len(grid) + 3.5, 0.5 * len(depths) + 2.5))
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=100, cmap=cmap, aspect="auto")
    for (row, col), value in np.ndenumerate(matrix):
        text = "n/a" if np.isnan(value) else f"{value:.1f}"
        colour = "black" if np.isnan(value) or value > 60 else "white"
        ax.text(col, row, text, ha="center", va="center", color=colour, fontsize="small")
    ax.set_xticks(range(len(grid)), list(grid))
    ax.set_yticks(range(len(depths)), depths)
    name = variant_name(settings)
    ax.set(xlabel="prompt length (tokens)", ylabel="needle depth (0 = start)",
           title=f"{name}, {model_name(settings)}, {run_label(settings)}\n"
                 f"{per_cell} per cell; grey: not scored")  # fmt: skip
    task = settings["task"]
    fig.colorbar(image, label="accuracy %" if task == "passkey" else "values recalled %")
    return _save(plt, fig, out / f"{name}.png")


def score_figure(plt, out: Path, settings: dict, records: list[dict]) -> Path:
    """A benchmark's per-sample scores against prompt length, one colour per dataset."""
    fig, ax = plt.subplots(figsize=(7, 4))
    by_dataset = defaultdict(list)
    for r in records:
        by_dataset[report_name(r)].append((r["prompt_tokens"], 100 * r["score"]))
    for (name, points), (marker, _) in zip(sorted(by_dataset.items()), cycle(LINE_STYLES)):
        x, y = zip(*sorted(points), strict=True)
        ax.plot(x, y, marker=marker, linestyle="none", alpha=0.6, label=name)
    ax.set(xlabel="prompt tokens", ylabel="score (x100; F1 / ROUGE-L per dataset)",
           ylim=(-2, 102), title=f"{settings['task']}, {model_name(settings)}, "
                                 f"{run_label(settings)}")  # fmt: skip
    ax.legend(fontsize="small")
    return _save(plt, fig, out / "score_by_length.png")


def loss_by_position(ax, summary: dict, label: str, style=("o", "-")) -> None:
    """A perplexity run's bucket losses at the buckets' centres, with a ±1 s.e. band."""
    starts = [b["start"] for b in summary["buckets"]]
    ends = [*starts[1:], summary["tokens_per_document"]]
    centres = [(a + b) / 2 for a, b in zip(starts, ends, strict=True)]
    loss = np.asarray([b["loss"] for b in summary["buckets"]])
    (line,) = ax.plot(centres, loss, marker=style[0], linestyle=style[1], label=label)
    if summary["documents"] > 1:  # one document has no standard error
        err = np.asarray([b["stderr"] for b in summary["buckets"]])
        ax.fill_between(centres, loss - err, loss + err, alpha=0.2, color=line.get_color())
    ax.set(xlabel="position (tokens; bucket centres)", ylabel="loss (nats/token)")


def data_name(settings: dict) -> str:
    """The data files a run read (perplexity's documents), or "generated"."""
    data = settings.get("data") or {}
    return ", ".join(data.get("files", {})) or data.get("dataset") or "generated"


def loss_figure(plt, out: Path, settings: dict, summary: dict) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    loss_by_position(ax, summary, run_label(settings))
    band = ", ±1 s.e." if summary["documents"] > 1 else ""
    ax.set(title=f"loss by position: {model_name(settings)} on {data_name(settings)}\n"
           f"{summary['documents']} document(s){band}")  # fmt: skip
    ax.legend()
    return _save(plt, fig, out / "loss_by_position.png")


def _cache_tokens(record: dict) -> int:
    """The tokens a record's cache was sized for: a perplexity document's, or a generation
    batch's longest prompt + budget (before ragged batches: the record's own)."""
    if "cache_tokens" in record or "tokens" in record:
        return record.get("cache_tokens") or record["tokens"]
    return record["prompt_tokens"] + record["max_new_tokens"]


def memory_figure(plt, out: Path, settings: dict, records: list[dict], config) -> Path:
    """Cache bytes per sequence measured after each batch, at the capacity the batch's cache was
    sized for, and what the cost model predicts."""
    # a sequence's cache is sized for its batch's longest prompt plus generation budget; runs
    # before ragged batches recorded the whole batch's bytes, with a slot table it shared
    tokens = np.asarray([_cache_tokens(r) for r in records])
    capacity = np.where(settings["mode"] == "full", tokens, settings["window"] + settings["sinks"])
    shared = 4 * (capacity + 1)
    batch = np.asarray([r["batch_size"] for r in records])
    whole_batch = (np.asarray([r["cache_bytes"] for r in records]) - shared) / batch + shared
    per_row = np.asarray(["cache_tokens" in r for r in records])
    measured = np.where(per_row, [r["cache_bytes"] for r in records], whole_batch)
    lengths = np.linspace(1, tokens.max() * 1.1, 50).astype(int)
    mode, window, sinks = settings["mode"], settings["window"], settings["sinks"]
    # full: the cache holds every token (generation sizes it prompt + budget); swa / ahn: S + W
    # slots, and layers kept as full attention every position
    modelled = [table.allocated_cache_bytes(config, int(n), window, sinks)[mode] for n in lengths]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lengths, np.asarray(modelled) / 2**20, label=f"cost model, {mode}")
    ax.plot(tokens, measured / 2**20, "o", alpha=0.6, label=f"measured, n = {len(records)}")
    what = "document tokens" if settings["task"] == "perplexity" else "longest prompt + new tokens"
    ax.set(xlabel=f"cache capacity (batch's {what})", ylabel="decode cache (MiB per sequence)",
           title=f"cache memory: {variant_name(settings)}, {model_name(settings)}, "
                 f"{run_label(settings)}")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend()
    return _save(plt, fig, out / "memory_by_length.png")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(out: Path, settings: dict, summary: dict, records: list[dict], config) -> None:
    """The report's figures, into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if settings["task"] == "perplexity":
        loss_figure(plt, out, settings, summary)
    elif settings["task"] in GRID_TASKS:
        grid_figure(plt, out, settings, summary, records)
    else:
        score_figure(plt, out, settings, records)
    memory_figure(plt, out, settings, records, config)


def compare_figure(plt, runs: list[Path], summaries: list[dict], counts: list, path: Path):
    """One line per run (loss by position, or a grid's score by length; log2 lengths)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lengths: set[int] = set()
    for i, (run, summary, count) in enumerate(zip(runs, summaries, counts, strict=True)):
        style = LINE_STYLES[i % len(LINE_STYLES)]
        size = max(11 - 2.5 * i, 4)  # nested markers: identical lines stay apart
        # two runs of one mode, W and S (two AHN checkpoints, say) differ by their directory
        label = f"{Path(run).resolve().name}: {run_label(summary['settings'])}, n={count}"
        if summary["task"] == "perplexity":
            loss_by_position(ax, summary, label, style)
        elif summary["task"] in GRID_TASKS:
            x = [int(n) for n in summary["accuracy"]]
            lengths.update(x)
            ax.plot(x, [row["all"] for row in summary["accuracy"].values()], marker=style[0],
                    linestyle=style[1], markerfacecolor="none", markersize=size,
                    linewidth=max(3 - i, 1), label=label)  # fmt: skip
            ax.set(xlabel="prompt length (tokens)", ylabel=f"{grid_label(summary['task'])} %",
                   ylim=(-5, 105))  # fmt: skip
        else:
            plt.close(fig)
            raise CompareError(f"{run}: compare plots cover perplexity, passkey and NIAH runs")
    if lengths:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(lengths), [str(n) for n in sorted(lengths)])
        ax.minorticks_off()
    names = sorted({variant_name(s["settings"]) for s in summaries if "task" in s["settings"]})
    models = sorted({model_name(s["settings"]) for s in summaries})
    band = " (bands: ±1 s.e.)" if summaries[0]["task"] == "perplexity" else ""
    ax.set_title(f"{', '.join(names) or summaries[0]['task']}: {', '.join(models)}{band}")
    ax.legend(fontsize="small")
    _save(plt, fig, path)
