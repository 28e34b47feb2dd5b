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

from ahn_jax.evaluation import figures
from ahn_jax.evaluation.figures import CompareError, grid_depths, grid_label
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


def _length_depth_grid(records) -> dict:
    """{length: {depth: mean score %}} plus each length's mean over its depths (of the unrounded
    cell means)."""
    cells = defaultdict(list)
    for r in records:
        cells[(r["context_length"], r["depth"])].append(r["score"])
    raw: dict = defaultdict(dict)
    for (length, depth), scores in sorted(cells.items()):
        raw[str(length)][f"{depth:g}"] = 100 * float(np.mean(scores))
    grid = {}
    for length, row in raw.items():
        # 4 decimals: a table printing one decimal then rounds once (46.1538 -> 46.2; stored as
        # 46.15, the float under it printed 46.1)
        grid[length] = {d: round(v, 4) for d, v in row.items()}
        grid[length]["all"] = round(float(np.mean(list(row.values()))), 4)
    return grid


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
        depths = grid_depths(summary["accuracy"])
        lines += [
            "",
            f"{grid_label(summary['task'])} (%) by prompt length (rows) and needle depth "
            "(columns):",
            "",
        ]
        lines += _grid_rows(summary["accuracy"], depths)
    return "\n".join(lines)


def _grid_rows(grid: dict, depths: list[str]) -> list[str]:
    """The grid's table, one decimal; a length missing some depth is starred (its "all" is over
    the depths scored)."""
    lines = ["| length | " + " | ".join(depths) + " | all |"]
    lines.append("|---:|" + "---:|" * (len(depths) + 1))
    partial = False
    for length, row in grid.items():
        cells = [f"{row[d]:.1f}" if d in row else "n/a" for d in [*depths, "all"]]
        missing = any(d not in row for d in depths)
        partial |= missing
        lines.append(f"| {length}{' *' if missing else ''} | " + " | ".join(cells) + " |")
    if partial:
        lines += ["", "\\* some depths not scored at this length: its all is over those scored"]
    return lines


def settings_line(settings: dict) -> str:
    """The run's settings in one line (summary.md's header)."""
    chat = "on" if settings.get("chat") else "off"
    fields = [
        f"task {settings['task']}", f"model {figures.model_name({**settings, 'ahn': None})}",
        f"ahn {Path(settings['ahn']).name if settings.get('ahn') else 'none'}",
        f"mode {settings['mode']}", f"W {settings['window']}", f"S {settings['sinks']}",
        f"dtype {settings.get('dtype')}", f"decode {settings.get('decode')}", f"chat {chat}",
        f"max_new_tokens {settings.get('max_new_tokens')}",
        f"repetition_penalty {settings.get('repetition_penalty')}",
        f"max_length {settings.get('max_length')}",
    ]  # fmt: skip
    fields += [f"{k} {v}" for k, v in settings.get("extra", {}).items()]
    if settings.get("data"):
        fields.append(f"data {figures.data_name(settings)}")
    return "settings: " + ", ".join(fields)


def write_report(out: Path, settings: dict, records: list[dict], config) -> dict:
    """summary.json (with the run's settings), summary.md and the figures; returns the summary."""
    summary = summarize(settings["task"], records, bucket=settings["extra"].get("bucket"))
    summary["settings"] = json.loads(json.dumps(settings))
    summary_json = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    (out / "summary.json").write_text(summary_json, encoding="utf-8")  # names of any script
    text = settings_line(settings) + "\n\n" + markdown_table(summary)
    (out / "summary.md").write_text(text + "\n", encoding="utf-8")
    if records:
        figures.write_figures(out, settings, summary, records, config)
    return summary


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
            summary = json.loads((Path(run) / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CompareError(f"{run}/summary.json is not valid JSON: {error}") from None
        if not isinstance(summary, dict) or not {"task", "settings"} <= set(summary):
            raise CompareError(f"{run}/summary.json is not an evaluation summary")
        if summary["task"] == "perplexity" and not summary.get("buckets"):
            raise CompareError(f"{run}: its run scored no document, nothing to plot")
        summaries.append(summary)

    tasks = sorted({summary["task"] for summary in summaries})
    if len(tasks) != 1:
        raise CompareError(f"the runs mix tasks {tasks}: compare runs of one task")
    counts = [summary.get("documents", summary.get("samples")) for summary in summaries]
    if len(set(counts)) > 1:  # e.g. a run stopped early, or another --limit
        print(f"warning: the runs scored different numbers of samples ({counts}): their lines "
              "are not over the same data", file=sys.stderr)  # fmt: skip
    figures.compare_figure(plt, run_dirs, summaries, counts, path)


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
