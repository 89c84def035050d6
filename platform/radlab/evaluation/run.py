"""The evaluation stage.

A report model: generate findings for the eval split (with the trained model and, for contrast,
the untrained one), judge them with CheXprompt, add text and clinical metrics, and log everything
to the MLflow run: metrics with intervals, the per-report table, the judge's raw answers, an
error-type chart and the judge's identity. A stage 0 encoder: retrieval and zero-shot
classification, trained beside untrained."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from radlab.config import Experiment  # noqa: E402
from radlab.data.dataset import split_examples  # noqa: E402
from radlab.errors import RadlabError  # noqa: E402
from radlab.evaluation.chexprompt import ERROR_TYPES, LETTERS, aggregate  # noqa: E402
from radlab.evaluation.compare import compare_systems, per_report_scores  # noqa: E402
from radlab.evaluation.generate import generate_findings, write_jsonl  # noqa: E402
from radlab.evaluation.grounding import grounding_checks  # noqa: E402
from radlab.evaluation.judge_client import JudgeClient, Judgment  # noqa: E402
from radlab.evaluation.metrics import text_and_clinical  # noqa: E402
from radlab.evaluation.preflight import judge_client  # noqa: E402
from radlab.evaluation.retrieval import evaluate_retrieval  # noqa: E402
from radlab.evaluation.review import review_page  # noqa: E402
from radlab.metric_specs import GROUNDING, SCORES  # noqa: E402
from radlab.model.build import build_model  # noqa: E402
from radlab.model.checkpoint import load_checkpoint  # noqa: E402
from radlab.model.encoder import build_encoder, load_encoder  # noqa: E402
from radlab.model.generation import inference_model, pick_device_dtype  # noqa: E402
from radlab.progress import counted  # noqa: E402
from radlab.tracking.runs import Tracker  # noqa: E402


def judge_predictions(experiment: Experiment, predictions: list[dict],
                      progress: Callable[..., None] | None = None) -> tuple[list[Judgment], JudgeClient]:
    """CheXprompt judgments, one per prediction; a prediction without a candidate is a failed one.
    `progress(n, note)` as answers come, the note saying the failures and cost so far."""
    with judge_client(experiment.eval.judge) as client:
        pairs = [(p["reference"], p["candidate"]) for p in predictions if "candidate" in p]
        tick = None if progress is None else (
            lambda n: progress(n, f"{client.usage['failed']} failed, ${client.cost:.2f}"))
        judged = iter(client.judge(pairs, tick))
    judgments = [next(judged) if "candidate" in p else Judgment(None, None, p.get("error", "no candidate"))
                 for p in predictions]
    return judgments, client


class EvaluationFailed(RadlabError):
    """Too many reports could not be judged: the scores would describe a flattering subset."""


@dataclass
class Scored:
    """One set of predictions scored: metrics, skipped metrics with reasons, per-report scores by
    column in the order of the predictions (None where a prediction has no candidate), the
    CheXprompt judgments and the judge client."""
    metrics: dict[str, float]
    skipped: dict[str, str]
    per_report: dict[str, list[float | None]]
    judgments: list[Judgment] = field(default_factory=list)
    client: JudgeClient | None = None

    def failures(self) -> Counter:
        """Why judgments failed: reason -> count (an HTTP status, a timeout, an unparseable answer)."""
        return Counter(j.error.split("\n")[0][:160] for j in self.judgments if not j.ok)

    def check_failures(self, max_share: float) -> None:
        """Refuse scores judged on too small a share of the reports, naming why the others failed."""
        failed = sum(self.failures().values())
        if self.judgments and failed / len(self.judgments) > max_share:
            reasons = "; ".join(f"{count} x {reason}" for reason, count in self.failures().most_common(3))
            raise EvaluationFailed(f"CheXprompt: {failed} of {len(self.judgments)} judgments failed "
                                   f"({failed / len(self.judgments):.0%} > eval.max_failed_share "
                                   f"{max_share:.0%}): {reasons}")


def score(experiment: Experiment, predictions: list[dict], progress: Callable[..., None] | None = None) -> Scored:
    """Judge and score predictions; `progress` counts the judgments (see judge_predictions)."""
    cfg = experiment.eval
    metrics: dict[str, float] = {"eval/n_reports": float(len(predictions)),
                                 "eval/n_without_candidate": float(sum("candidate" not in p for p in predictions))}
    judgments: list[Judgment] = []
    client = None
    if "chexprompt" in cfg.metrics:
        judgments, client = judge_predictions(experiment, predictions, progress)
        metrics.update(aggregate([j.counts for j in judgments], resamples=cfg.bootstrap).metrics())
        metrics.update({f"judge/{k}": float(v) for k, v in client.usage.items()})
        metrics["judge/cost"] = client.cost
    with_candidate = [i for i, p in enumerate(predictions) if "candidate" in p]
    pairs = [(predictions[i]["reference"], predictions[i]["candidate"]) for i in with_candidate]
    values, skipped, per_pair = text_and_clinical(pairs, cfg, experiment.data.synthetic is not None)
    metrics.update(values)
    per_report = {}
    for name, column in per_pair.items():
        per_report[name] = [None] * len(predictions)
        for i, value in zip(with_candidate, column):
            per_report[name][i] = value
    return Scored(metrics, skipped, per_report, judgments, client)


def judgment_records(predictions: list[dict], judgments: list[Judgment]) -> list[dict]:
    """One line per report, the input of `radlab judge agreement`."""
    return [{"id": p["id"], "status": "ok" if j.ok else "failed", "error": j.error, "raw": j.raw,
             "significant": j.counts.significant if j.ok else None,
             "insignificant": j.counts.insignificant if j.ok else None} for p, j in zip(predictions, judgments)]


def report_table(predictions: list[dict], scored: Scored) -> dict[str, list]:
    """The per-report table: texts, the judge's verdict and counts, and the per-report metrics."""
    rows = []
    judgments = scored.judgments or [None] * len(predictions)
    for k, (p, j) in enumerate(zip(predictions, judgments)):
        row = {"id": p["id"], "reference": p["reference"], "candidate": p.get("candidate", ""),
               "judge_status": "ok" if j and j.ok else "failed" if j else "not judged",
               "judge_error": (j.error or "") if j else "", "judge_answer": (j.raw or "") if j else ""}
        for letter in LETTERS:
            row[f"significant_{letter}"] = j.counts.significant[letter] if j and j.ok else None
            row[f"insignificant_{letter}"] = j.counts.insignificant[letter] if j and j.ok else None
        row.update({name: column[k] for name, column in scored.per_report.items()})
        rows.append(row)
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


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


def log_evaluation(tracker: Tracker, run_id: str, experiment: Experiment, predictions: list[dict],
                   scored: Scored, prefix: str = "") -> None:
    """Each score as one metric, and its 95% interval in the table <folder>/intervals.json."""
    points = {k: v for k, v in scored.metrics.items() if not k.endswith(INTERVAL_ENDS)}
    tracker.log_metrics(run_id, {f"{prefix}{k}": v for k, v in points.items()})
    client_ml = tracker.client
    folder = f"eval/{prefix.strip('/') or 'trained'}"
    bounded = [k for k in points if f"{k}_ci_low" in scored.metrics]
    if bounded:
        tracker.log_table(run_id, {"metric": bounded, "value": [points[k] for k in bounded],
                                   "ci_low": [scored.metrics[f"{k}_ci_low"] for k in bounded],
                                   "ci_high": [scored.metrics[f"{k}_ci_high"] for k in bounded]},
                          f"{folder}/intervals.json")
    for name, reason in scored.skipped.items():
        client_ml.set_tag(run_id, f"radlab.skipped.{prefix}{name}", reason)
    with tempfile.TemporaryDirectory() as tmp:
        client_ml.log_artifact(run_id, str(write_jsonl(predictions, Path(tmp) / "predictions.jsonl")), folder)
        if scored.judgments:
            records = judgment_records(predictions, scored.judgments)
            client_ml.log_artifact(run_id, str(write_jsonl(records, Path(tmp) / "judgments.jsonl")), folder)
    table = report_table(predictions, scored)
    if table:
        tracker.log_table(run_id, table, f"{folder}/per_report.json")
    if scored.client is not None and not prefix:
        client_ml.set_tag(run_id, "radlab.judge.endpoint", experiment.eval.judge.endpoint)
        client_ml.set_tag(run_id, "radlab.judge.model", scored.client.config.model)
        client_ml.set_tag(run_id, "radlab.judge.prompt_version", scored.client.prompt.version)


def log_error_chart(tracker: Tracker, run_id: str, columns: dict[str, dict[str, float]]) -> None:
    figure = error_chart(columns)
    tracker.client.log_figure(run_id, figure, "eval/chexprompt_error_types.png")
    plt.close(figure)


def log_review(tracker: Tracker, run_id: str, systems: dict[str, tuple[list[dict], list[Judgment]]],
               title: str) -> None:
    """The report review page (eval/review.html), which MLflow's artifact viewer shows."""
    tracker.client.log_text(run_id, review_page(systems, title), "eval/review.html")


def logged_scores(tracker: Tracker, run_id: str) -> dict[str, float]:
    """A run's evaluation as `score` returned it: its metrics with each interval read back from the
    eval/trained/intervals.json table."""
    metrics = dict(tracker.client.get_run(run_id).data.metrics)
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
    console.print(table)


def log_comparison(tracker: Tracker, run_id: str, rows: list[dict], name: str) -> None:
    """The paired comparison as one table artifact, and each difference and p-value as metrics."""
    if not rows:
        return
    tracker.log_table(run_id, {key: [row[key] for row in rows] for key in rows[0]}, f"eval/{name}.json")
    tracker.log_metrics(run_id, {f"{name}/{row['metric']}/{key}": row[key] for row in rows
                                 for key in ("difference", "p_value") if row[key] == row[key]})


def print_summary(console: Console, columns: dict[str, dict[str, float]], skipped: dict[str, str]) -> None:
    table = Table("metric", *columns, title="evaluation")
    for key in [*SCORES, *GROUNDING]:
        if any(key in m for m in columns.values()):
            cells = []
            for m in columns.values():
                value = m.get(key)
                low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
                cells.append("-" if value is None else f"{value:.3f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else ""))
            table.add_row(key, *cells)
    console.print(table)
    for name, reason in skipped.items():
        console.print(f"[yellow]skipped[/] {name}: {reason}")


def evaluate_checkpoint(experiment: Experiment, folder: Path, tracker: Tracker, run_id: str,
                        console: Console) -> dict[str, float]:
    """Generate, judge, score and log; return the trained model's metrics."""
    loaded = load_checkpoint(folder, expect=experiment.model)
    cfg = experiment.eval
    reports = len(split_examples(experiment.data, cfg.split)[: cfg.limit])
    model = inference_model(loaded.model, *pick_device_dtype("auto", "auto"))
    with counted(console, f"generating findings ({cfg.split})", reports) as advance:
        trained = generate_findings(model, loaded.tokenizer, experiment, cfg.split, cfg.limit, progress=advance)
    with counted(console, "judging", sum("candidate" in p for p in trained)) as advance:
        scored = score(experiment, trained, advance)
    if experiment.runs_grounding:
        with counted(console, "grounding: generating on mirrored and blank images", 2 * reports) as advance:
            grounding, table = grounding_checks(model, loaded.tokenizer, experiment, trained, advance)
        scored.metrics |= grounding
        tracker.log_table(run_id, table, "eval/trained/grounding.json")
    log_evaluation(tracker, run_id, experiment, trained, scored)
    columns = {"trained": scored.metrics}
    comparison = []
    if cfg.compares_untrained:
        untrained_model = inference_model(build_model(experiment.model, loaded.tokenizer, experiment.data.max_length),
                                          *pick_device_dtype("auto", "auto"))
        with counted(console, "generating findings (untrained model)", reports) as advance:
            untrained = generate_findings(untrained_model, loaded.tokenizer, experiment, cfg.split, cfg.limit,
                                          progress=advance)
        with counted(console, "judging (untrained model)", sum("candidate" in p for p in untrained)) as advance:
            base = score(experiment, untrained, advance)
        log_evaluation(tracker, run_id, experiment, untrained, base, "untrained/")
        columns["untrained"] = base.metrics
        comparison = compare_systems(per_report_scores(trained, scored), per_report_scores(untrained, base),
                                     cfg.bootstrap)
        log_comparison(tracker, run_id, comparison, "trained_vs_untrained")
    if scored.judgments:
        log_error_chart(tracker, run_id, columns)
    systems = {"trained": (trained, scored.judgments)} | ({"untrained": (untrained, base.judgments)}
                                                          if cfg.compares_untrained else {})
    log_review(tracker, run_id, systems, f"{experiment.name}: {cfg.split} split")
    for p in trained[: cfg.show]:
        console.print(f"[bold]{p['id']}[/]\n  reference: {p['reference']}\n  generated: {p.get('candidate', '-')}")
    print_summary(console, columns, scored.skipped)
    if comparison:
        print_comparison(console, comparison, "trained - untrained, paired on the same studies")
    for reason, count in scored.failures().most_common():
        console.print(f"[yellow]judge failed[/] {count} x {reason}", highlight=False)
    scored.check_failures(cfg.max_failed_share)
    return scored.metrics


RETRIEVAL_SUMMARY = ["retrieval/i2t_R1", "retrieval/i2t_R5", "retrieval/t2i_R1", "retrieval/t2i_R5",
                     "retrieval/label_i2t_R1", "retrieval/label_t2i_R1", "zero_shot/auroc_mean"]


def evaluate_encoder(experiment: Experiment, folder: Path, tracker: Tracker, run_id: str,
                     console: Console) -> dict[str, float]:
    """Retrieval and zero-shot readouts of a stage 0 encoder (and the untrained one), logged."""
    loaded = load_encoder(folder)
    examples = split_examples(experiment.data, experiment.eval.split)
    size, length = experiment.model.vision.image_size, loaded.stage0.text.max_length
    with console.status(f"embedding the {experiment.eval.split} split"):
        metrics = evaluate_retrieval(loaded.encoder, examples, loaded.tokenizer, size, length)
    tracker.log_metrics(run_id, metrics)
    columns = {"trained": metrics}
    if experiment.eval.compares_untrained:
        torch.manual_seed(experiment.data.synthetic.seed if experiment.data.synthetic else 0)
        untrained = build_encoder(experiment.model, loaded.stage0, loaded.tokenizer)
        columns["untrained"] = evaluate_retrieval(untrained, examples, loaded.tokenizer, size, length)
        tracker.log_metrics(run_id, {f"untrained/{k}": v for k, v in columns["untrained"].items()})
    table = Table("metric", *columns, title=f"retrieval on {experiment.eval.split} ({int(metrics['retrieval/n_pairs'])} pairs)")
    for key in RETRIEVAL_SUMMARY:
        if key in metrics:
            table.add_row(key, *(f"{m[key]:.3f}" for m in columns.values()))
    console.print(table)
    return metrics
