"""Reporting an evaluation: its scores, tables, judgments, review page and error chart into the
MLflow run (through the Tracker), and its summary and paired comparisons on the console."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from radlab.config import Experiment  # noqa: E402
from radlab.evaluation.chexprompt import ERROR_TYPES, LETTERS  # noqa: E402
from radlab.evaluation.generate import write_jsonl  # noqa: E402
from radlab.evaluation.judge_client import Judgment  # noqa: E402
from radlab.evaluation.review import review_page  # noqa: E402
from radlab.evaluation.scoring import Scored, judgment_records, report_table  # noqa: E402
from radlab.metric_specs import GROUNDING, SCORES  # noqa: E402
from radlab.progress import print_table  # noqa: E402
from radlab.tracking.runs import Tracker  # noqa: E402


def error_chart(columns: dict[str, dict[str, float]]):
    """Mean errors per report of each CheXprompt type, clinically significant and not, for each
    system side by side on one scale, each bar with its 95% interval."""
    names = [ERROR_TYPES[x] for x in LETTERS]
    fig, panels = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    width = 0.8 / max(1, len(columns))
    for panel, kind in zip(panels, ("significant", "insignificant"), strict=True):
        for i, (system, metrics) in enumerate(columns.items()):
            keys = [f"chexprompt/{kind}/{n}" for n in names]
            values = [metrics.get(k, 0.0) for k in keys]
            low = [v - metrics.get(f"{k}_ci_low", v) for k, v in zip(keys, values, strict=True)]
            high = [metrics.get(f"{k}_ci_high", v) - v for k, v in zip(keys, values, strict=True)]
            panel.bar([x + (i - (len(columns) - 1) / 2) * width for x in range(len(names))], values, width,
                      yerr=[low, high], capsize=3, label=system)
        panel.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        panel.set_title(f"clinically {kind}" if kind == "significant" else "not clinically significant", fontsize=10)
    panels[0].set_ylabel("mean errors per report (95% CI)")
    panels[0].legend(fontsize=8)
    fig.suptitle("CheXprompt errors by type")
    fig.tight_layout()
    return fig


INTERVAL_ENDS = ("_ci_low", "_ci_high")


def log_scores(tracker: Tracker, run_id: str, metrics: dict[str, float], prefix: str = "") -> str:
    """Each score as one metric, and its 95% interval in the table <folder>/intervals.json; returns
    the folder (eval/trained, or eval/<prefix>)."""
    points = {k: v for k, v in metrics.items() if not k.endswith(INTERVAL_ENDS)}
    tracker.log_metrics(run_id, {f"{prefix}{k}": v for k, v in points.items()})
    folder = f"eval/{prefix.strip('/') or 'trained'}"
    bounded = [k for k in points if f"{k}_ci_low" in metrics]
    if bounded:
        tracker.log_table(run_id, {"metric": bounded, "value": [points[k] for k in bounded],
                                   "ci_low": [metrics[f"{k}_ci_low"] for k in bounded],
                                   "ci_high": [metrics[f"{k}_ci_high"] for k in bounded]},
                          f"{folder}/intervals.json")
    return folder


def log_evaluation(tracker: Tracker, run_id: str, experiment: Experiment, predictions: list[dict],
                   scored: Scored, prefix: str = "") -> None:
    """The scores (`log_scores`), the predictions, the judgments and the per-report table."""
    folder = log_scores(tracker, run_id, scored.metrics, prefix)
    tracker.set_tags(run_id, {f"radlab.skipped.{prefix}{name}": reason for name, reason in scored.skipped.items()})
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_file(run_id, write_jsonl(predictions, Path(tmp) / "predictions.jsonl"), folder)
        if scored.judgments:
            records = judgment_records(predictions, scored.judgments)
            tracker.log_file(run_id, write_jsonl(records, Path(tmp) / "judgments.jsonl"), folder)
    table = report_table(predictions, scored)
    if table:
        tracker.log_table(run_id, table, f"{folder}/per_report.json")
    if scored.client is not None and not prefix:
        tracker.set_tags(run_id, {"radlab.judge.endpoint": experiment.eval.judge.endpoint,
                                  "radlab.judge.model": scored.client.config.model,
                                  "radlab.judge.prompt_version": scored.client.prompt.version})


def log_error_chart(tracker: Tracker, run_id: str, columns: dict[str, dict[str, float]]) -> None:
    figure = error_chart(columns)
    tracker.log_figure(run_id, figure, "eval/chexprompt_error_types.png")
    plt.close(figure)


def log_review(tracker: Tracker, run_id: str, systems: dict[str, tuple[list[dict], list[Judgment]]],
               title: str) -> None:
    """The report review page (eval/review.html), which MLflow's artifact viewer shows."""
    tracker.log_text(run_id, review_page(systems, title), "eval/review.html")


def logged_scores(tracker: Tracker, run_id: str) -> dict[str, float]:
    """A run's evaluation as `score` returned it: its metrics with each interval read back from the
    eval/trained/intervals.json table."""
    metrics = tracker.metrics(run_id)
    table = tracker.read_table(run_id, "eval/trained/intervals.json") or {"metric": [], "ci_low": [], "ci_high": []}
    for name, low, high in zip(table["metric"], table["ci_low"], table["ci_high"], strict=True):
        metrics |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
    return metrics


def print_comparison(console: Console, rows: list[dict], title: str) -> None:
    table = Table(title=f"{title} (p: paired permutation test)")
    table.add_column("metric", no_wrap=True)
    for name in ("n", "difference [95% CI]", "p"):
        table.add_column(name)
    for row in rows:
        table.add_row(row["metric"], str(row["n"]), f"{row['difference']:+.3f} [{row['ci_low']:+.2f}, "
                      f"{row['ci_high']:+.2f}]", f"{row['p_value']:.3g}")
    print_table(console, table)


def log_comparison(tracker: Tracker, run_id: str, rows: list[dict], name: str) -> None:
    """The paired comparison as one table artifact, and each difference and p-value as metrics."""
    if not rows:
        return
    tracker.log_table(run_id, {key: [row[key] for row in rows] for key in rows[0]}, f"eval/{name}.json")
    tracker.log_metrics(run_id, {f"{name}/{row['metric']}/{key}": row[key] for row in rows
                                 for key in ("difference", "p_value") if row[key] == row[key]})


def print_summary(console: Console, columns: dict[str, dict[str, float]], skipped: dict[str, str],
                  keys: list[str] | None = None, title: str = "evaluation") -> None:
    """Each system's scores (`keys`: the report model's by default) with their 95% intervals."""
    table = Table("metric", *columns, title=title)
    for key in keys or [*SCORES, *GROUNDING]:
        if any(key in m for m in columns.values()):
            cells = []
            for m in columns.values():
                value = m.get(key)
                low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
                cells.append("-" if value is None else f"{value:.3f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else ""))
            table.add_row(key, *cells)
    print_table(console, table)
    for name, reason in skipped.items():
        console.print(f"[yellow]skipped[/] {name}: {reason}")
