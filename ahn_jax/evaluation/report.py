"""Summaries and plots of an evaluation's scored records (predictions.jsonl of ahn_jax.evaluate).

Scores are reported as the benchmarks report them: per dataset (LV-Eval: per dataset and length
level, `tasks.report_name`) round(100 * mean, 2), and the plain mean over them (the paper's
"Avg"). Pass keys and RULER's NIAH variants: score per length and depth (a NIAH sample scores the
share of its values recalled).
Perplexity: token-weighted loss per position bucket, with the standard error over documents.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ahn_jax.costs import table
from ahn_jax.evaluation.results import GRID_TASKS
from ahn_jax.evaluation.tasks import report_name


def summarize(task: str, records: list[dict], *, bucket: int | None = None) -> dict:
    """The summary of a run's records; perplexity's needs its `bucket` (positions per bucket)."""
    if task == "perplexity":
        return _perplexity_summary(records, bucket)
    by_dataset = defaultdict(list)
    for record in records:
        by_dataset[report_name(record)].append(record["score"])
    datasets = {
        name: {"samples": len(scores), "score": round(100 * float(np.mean(scores)), 2)}
        for name, scores in sorted(by_dataset.items())
    }
    summary = {"task": task, "samples": len(records), "datasets": datasets}
    if datasets:
        summary["average"] = round(float(np.mean([d["score"] for d in datasets.values()])), 2)
    summary["truncated"] = sum(bool(r.get("truncated")) for r in records)
    if task in GRID_TASKS:
        summary["accuracy"] = _length_depth_grid(records)
    return summary


def grid_label(task: str) -> str:
    """What the length x depth grid of a pass-key or NIAH run holds."""
    return "pass-key accuracy" if task == "passkey" else f"{task} score (values recalled)"


def _length_depth_grid(records) -> dict:
    """{length: {depth: mean score %}} plus each length's mean over depths."""
    cells = defaultdict(list)
    for r in records:
        cells[(r["context_length"], r["depth"])].append(r["score"])
    grid: dict = defaultdict(dict)
    for (length, depth), scores in sorted(cells.items()):
        grid[str(length)][f"{depth:g}"] = round(100 * float(np.mean(scores)), 2)
    for row in grid.values():
        row["all"] = round(float(np.mean(list(row.values()))), 2)
    return dict(grid)


def _perplexity_summary(records, bucket: int) -> dict:
    if not records:
        return {"task": "perplexity", "documents": 0}
    nll = np.asarray([r["bucket_nll"] for r in records])  # [docs, buckets]
    tokens = np.asarray([r["bucket_tokens"] for r in records])
    mean = (nll * tokens).sum(0) / tokens.sum(0)
    # one document has no standard error (None: "n/a" in the table, no band in the plot)
    stderr = (
        nll.std(0, ddof=1) / math.sqrt(len(records)) if len(records) > 1 else [None] * len(mean)
    )
    length = records[0]["tokens"]
    overall = float((nll * tokens).sum() / tokens.sum())
    return {
        "task": "perplexity",
        "documents": len(records),
        "tokens_per_document": length,
        "loss": round(overall, 4),
        "perplexity": round(math.exp(overall), 3),
        "buckets": [
            {
                "start": i * bucket,
                "loss": round(float(m), 4),
                "stderr": None if e is None else round(float(e), 4),
            }  # fmt: skip
            for i, (m, e) in enumerate(zip(mean, stderr, strict=True))
        ],
    }


def markdown_table(summary: dict) -> str:
    if summary["task"] == "perplexity":
        if not summary["documents"]:
            return "no documents scored"
        lines = [
            f"perplexity over {summary['documents']} document(s) of "
            f"{summary['tokens_per_document']} tokens: loss {summary['loss']} "
            f"(ppl {summary['perplexity']})",
            "",
            "| positions from | loss (nats/token) | ± stderr |",
            "|---:|---:|---:|",
        ]
        lines += [
            f"| {b['start']} | {b['loss']:.4f} | "
            f"{'n/a (1 document)' if b['stderr'] is None else format(b['stderr'], '.4f')} |"
            for b in summary["buckets"]
        ]
        return "\n".join(lines)
    lines = ["| dataset | samples | score |", "|---|---:|---:|"]
    lines += [
        f"| {n} | {d['samples']} | {d['score']:.2f} |" for n, d in summary["datasets"].items()
    ]
    if "average" in summary:
        lines.append(f"| **average** | {summary['samples']} | **{summary['average']:.2f}** |")
    if summary.get("accuracy"):
        depths = _depths(summary["accuracy"])
        lines += [
            "",
            f"{grid_label(summary['task'])} (%) by prompt length (rows) and needle depth "
            "(columns):",
            "",
        ]
        lines.append("| length | " + " | ".join(depths) + " | all |")
        lines.append("|---:|" + "---:|" * (len(depths) + 1))
        for length, row in summary["accuracy"].items():
            cells = [f"{row[d]:.0f}" if d in row else "" for d in [*depths, "all"]]
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _depths(grid: dict) -> list[str]:
    """The needle depths of a pass-key grid {length: {depth: accuracy, "all": mean}}, in order."""
    return sorted({d for row in grid.values() for d in row if d != "all"}, key=float)


def run_label(settings: dict) -> str:
    """The run's mode, with its window and sinks unless it is full attention."""
    mode = settings["mode"]
    return mode if mode == "full" else f"{mode} (W {settings['window']}, S {settings['sinks']})"


def _loss_by_position(ax, summary: dict, label: str) -> None:
    """A perplexity run's bucket losses with their standard-error band."""
    starts = [b["start"] for b in summary["buckets"]]
    loss = np.asarray([b["loss"] for b in summary["buckets"]])
    ax.plot(starts, loss, marker="o", label=label)
    if summary["documents"] > 1:  # one document has no standard error
        err = np.asarray([b["stderr"] for b in summary["buckets"]])
        ax.fill_between(starts, loss - err, loss + err, alpha=0.25)
    ax.set(xlabel="position (tokens)", ylabel="loss (nats/token)")


def write_report(out: Path, settings: dict, records: list[dict], config) -> dict:
    """summary.json, summary.md and the plots; returns the summary."""
    summary = summarize(settings["task"], records, bucket=settings["extra"].get("bucket"))
    summary["settings"] = {k: settings[k] for k in ("mode", "window", "sinks", "max_length")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (out / "summary.md").write_text(markdown_table(summary) + "\n")
    if records:
        _plots(out, settings, summary, records, config)
    return summary


def _plots(out: Path, settings: dict, summary: dict, records: list[dict], config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = run_label(settings)
    if settings["task"] == "perplexity":
        fig, ax = plt.subplots(figsize=(7, 4))
        _loss_by_position(ax, summary, label)
        ax.set(title="loss by position")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "loss_by_position.png", dpi=120)
        plt.close(fig)
    elif settings["task"] in GRID_TASKS:
        grid = summary["accuracy"]
        depths = _depths(grid)
        matrix = np.asarray([[grid[length].get(d, np.nan) for length in grid] for d in depths])
        fig, ax = plt.subplots(figsize=(1.2 * len(grid) + 3, 0.5 * len(depths) + 2.5))
        image = ax.imshow(matrix, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(grid)), list(grid))
        ax.set_yticks(range(len(depths)), depths)
        task = settings["task"]
        ax.set(xlabel="prompt length (tokens)", ylabel="needle depth", title=f"{task}, {label}")
        fig.colorbar(image, label="accuracy %" if task == "passkey" else "values recalled %")
        fig.tight_layout()
        fig.savefig(out / f"{task}.png", dpi=120)
        plt.close(fig)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        by_dataset = defaultdict(list)
        for r in records:
            by_dataset[report_name(r)].append((r["prompt_tokens"], 100 * r["score"]))
        for name, points in sorted(by_dataset.items()):
            x, y = zip(*sorted(points), strict=True)
            ax.plot(x, y, marker="o", linestyle="none", alpha=0.6, label=name)
        ax.set(xlabel="prompt tokens", ylabel="score", title=f"{settings['task']}, {label}")
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out / "score_by_length.png", dpi=120)
        plt.close(fig)
    _memory_plot(out, settings, records, config, label, plt)


def _cache_tokens(record: dict) -> int:
    """The tokens a record's cache was sized for: a perplexity document's, or a generation
    batch's longest prompt + budget (before ragged batches: the record's own)."""
    if "cache_tokens" in record or "tokens" in record:
        return record.get("cache_tokens") or record["tokens"]
    return record["prompt_tokens"] + record["max_new_tokens"]


def _memory_plot(out, settings, records, config, label, plt) -> None:
    """Cache bytes per sequence measured after each batch, and what the cost model predicts."""
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
    if mode == "full":  # the cache holds every token (generation sizes it prompt + budget)
        modelled = [table.decode_cache_bytes(config, int(n), 0, "full") for n in lengths]
    else:
        modelled = [table.decode_cache_bytes(config, window, sinks, mode)] * len(lengths)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lengths, np.asarray(modelled) / 2**20, label=f"cost model, {mode}")
    ax.plot(tokens, measured / 2**20, "o", alpha=0.6, label=f"measured, {label}")
    ax.set(xlabel="tokens in the sequence", ylabel="decode cache (MiB per sequence)",
           title="cache memory against length")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "memory_by_length.png", dpi=120)
    plt.close(fig)


class CompareError(ValueError):
    """Runs that one comparison figure cannot show (the CLI reports it as one error line)."""


def compare_plot(run_dirs: list[Path], path: Path) -> None:
    """One figure of several runs of a task: loss by position (perplexity) or score by length
    (pass key, NIAH), one line per run, labelled by its directory, mode, window and sinks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise CompareError("no run to compare: give evaluate --out directories")
    summaries = []
    for run in run_dirs:
        if not (Path(run) / "summary.json").is_file():
            raise FileNotFoundError(
                f"{run} has no summary.json: not an evaluate --out directory, or its run has not "
                "finished"
            )
        try:
            summary = json.loads((Path(run) / "summary.json").read_text())
        except json.JSONDecodeError as error:
            raise CompareError(f"{run}/summary.json is not valid JSON: {error}") from None
        if not isinstance(summary, dict) or not {"task", "settings"} <= set(summary):
            raise CompareError(f"{run}/summary.json is not an evaluation summary")
        summaries.append(summary)

    tasks = sorted({summary["task"] for summary in summaries})
    if len(tasks) != 1:
        raise CompareError(f"the runs mix tasks {tasks}: compare runs of one task")
    counts = [summary.get("documents", summary.get("samples")) for summary in summaries]
    if len(set(counts)) > 1:  # e.g. a run stopped early, or another --limit
        print(f"warning: the runs scored different numbers of samples ({counts}): their lines "
              "are not over the same data", file=sys.stderr)  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, summary, count in zip(run_dirs, summaries, counts, strict=True):
        # two runs of one mode, W and S (two AHN checkpoints, say) differ by their directory
        label = f"{Path(run).resolve().name}: {run_label(summary['settings'])}, n={count}"
        if summary["task"] == "perplexity":
            _loss_by_position(ax, summary, label)
        elif summary["task"] in GRID_TASKS:
            lengths = list(summary["accuracy"])
            ax.plot([int(n) for n in lengths], [summary["accuracy"][n]["all"] for n in lengths],
                    marker="o", label=label)  # fmt: skip
            ax.set(xlabel="prompt length (tokens)", ylabel=f"{grid_label(summary['task'])} %",
                   ylim=(-5, 105))  # fmt: skip
        else:
            plt.close(fig)
            raise CompareError(f"{run}: compare plots cover perplexity, passkey and NIAH runs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    # python -m ahn_jax.evaluation.report --runs OUT_FULL,OUT_SWA,OUT_AHN --plot compare.png
    from absl import flags

    from ahn_jax import cli

    flags.DEFINE_list("runs", None, "evaluate --out directories of one task", required=True)
    flags.DEFINE_string("plot", "compare.png", "PNG to write")

    def main(argv) -> None:
        del argv
        compare_plot([Path(r) for r in flags.FLAGS.runs], Path(flags.FLAGS.plot))
        print(f"wrote {flags.FLAGS.plot}")

    cli.run(main, (FileNotFoundError, CompareError))
