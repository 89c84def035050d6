"""The evaluation stage of a run: generate findings for the eval split with the trained model
(and, for contrast, with the untrained one), score them, and log everything to the run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from radlab.config import Experiment
from radlab.data.synthetic import parse_findings
from radlab.evaluation.generate import generate_findings, write_jsonl
from radlab.model.build import build_model
from radlab.model.checkpoint import load_checkpoint
from radlab.tracking.runs import Tracker


def exact_match(predictions: list[dict]) -> float:
    judged = [p for p in predictions if "candidate" in p]
    return sum(p["candidate"] == p["reference"] for p in judged) / max(1, len(judged))


def synthetic_label_match(predictions: list[dict]) -> float:
    """Share of reports whose parsed finding set equals the reference's (synthetic grammar only)."""
    judged = [p for p in predictions if "candidate" in p]
    hits = sum(parse_findings(p["candidate"]).findings == parse_findings(p["reference"]).findings
               and not parse_findings(p["candidate"]).unparsed for p in judged)
    return hits / max(1, len(judged))


def evaluate_checkpoint(experiment: Experiment, folder: Path, tracker: Tracker, run_id: str,
                        console: Console) -> dict[str, float]:
    loaded = load_checkpoint(folder, expect=experiment.model)
    split, cfg = experiment.eval.split, experiment.eval
    with console.status(f"generating findings for the {split} split"):
        trained = generate_findings(loaded.model, loaded.tokenizer, experiment, split, cfg.limit)
        untrained_model = build_model(experiment.model, loaded.tokenizer, experiment.data.max_length)
        untrained = generate_findings(untrained_model, loaded.tokenizer, experiment, split, cfg.limit)
    metrics = {"eval/n": float(len(trained)),
               "eval/failed_images": float(sum("error" in p for p in trained)),
               "eval/exact_match": exact_match(trained),
               "eval/untrained/exact_match": exact_match(untrained)}
    if experiment.data.synthetic is not None:
        metrics["eval/label_match"] = synthetic_label_match(trained)
        metrics["eval/untrained/label_match"] = synthetic_label_match(untrained)
    tracker.log_metrics(run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        tracker.client.log_artifact(run_id, str(write_jsonl(trained, Path(tmp) / "predictions.jsonl")), "eval")
        tracker.client.log_artifact(run_id, str(write_jsonl(untrained, Path(tmp) / "predictions_untrained.jsonl")), "eval")
    shown = [{"id": t["id"], "reference": t["reference"], "trained": t.get("candidate", ""),
              "untrained": u.get("candidate", "")} for t, u in zip(trained[: cfg.show], untrained[: cfg.show])]
    if shown:
        tracker.client.log_table(run_id, {k: [row[k] for row in shown] for k in shown[0]}, "eval/examples.json")
    table = Table("id", "reference", "trained model", "untrained model", show_lines=True)
    for row in shown:
        table.add_row(row["id"], row["reference"], row["trained"], row["untrained"][:200])
    console.print(table)
    console.print("  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics
