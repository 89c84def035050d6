"""Running an evaluation: generate findings for the eval split with the trained model (and, for
contrast, the untrained one), score them (`scoring.py`) and report them (`reporting.py`); judge a
predictions file (and a baseline's) the same way; or read out a stage 0 encoder's retrieval and
zero-shot classification, trained beside untrained."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from radlab.config import Experiment
from radlab.data.dataset import split_examples
from radlab.evaluation.compare import compare_corpus, compare_systems, patients_by_id, per_report_scores
from radlab.evaluation.generate import generate_findings
from radlab.evaluation.grounding import grounding_checks
from radlab.evaluation.metrics import corpus_score
from radlab.evaluation.reporting import (
    log_comparison,
    log_error_chart,
    log_evaluation,
    log_review,
    log_scores,
    print_comparison,
    print_summary,
)
from radlab.evaluation.retrieval import compare_auroc, read_out
from radlab.evaluation.scoring import score
from radlab.metric_specs import SCORES
from radlab.model.build import build_model
from radlab.model.checkpoint import load_checkpoint
from radlab.model.encoder import build_encoder, load_encoder
from radlab.model.generation import inference_model, pick_device_dtype
from radlab.progress import counted
from radlab.tracking.runs import Tracker


def evaluate_checkpoint(experiment: Experiment, folder: Path, tracker: Tracker, run_id: str,
                        console: Console) -> dict[str, float]:
    """Generate, judge, score and log; return the trained model's metrics."""
    loaded = load_checkpoint(folder, expect=experiment.model)
    cfg = experiment.eval
    reports = len(split_examples(experiment.data, cfg.split)[: cfg.limit])
    model = inference_model(loaded.model, *pick_device_dtype("auto", "auto"))
    with counted(console, f"generating findings ({cfg.split})", reports) as advance:
        trained = generate_findings(model, loaded.tokenizer, experiment, loaded.transform, cfg.split, cfg.limit,
                                    progress=advance, template=loaded.template)
    with counted(console, "judging", sum("candidate" in p for p in trained)) as advance:
        scored = score(experiment, trained, advance)
    if experiment.runs_grounding:
        with counted(console, "grounding: generating on mirrored and blank images", 2 * reports) as advance:
            grounding, table = grounding_checks(model, loaded.tokenizer, loaded.template, experiment, loaded.transform,
                                                trained, advance)
        scored.metrics |= grounding
        tracker.log_table(run_id, table, "eval/trained/grounding.json")
    log_evaluation(tracker, run_id, experiment, trained, scored)
    columns = {"trained": scored.metrics}
    comparison = []
    if cfg.compares_untrained:
        untrained_model = inference_model(build_model(experiment.model, loaded.tokenizer, experiment.data.max_length),
                                          *pick_device_dtype("auto", "auto"))
        with counted(console, "generating findings (untrained model)", reports) as advance:
            untrained = generate_findings(untrained_model, loaded.tokenizer, experiment, loaded.transform, cfg.split,
                                          cfg.limit, progress=advance, template=loaded.template)
        with counted(console, "judging (untrained model)", sum("candidate" in p for p in untrained)) as advance:
            base = score(experiment, untrained, advance)
        log_evaluation(tracker, run_id, experiment, untrained, base, "untrained/")
        columns["untrained"] = base.metrics
        comparison = compare_reports(experiment, trained, scored, untrained, base)
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
    """Retrieval and zero-shot readouts of a stage 0 encoder, each Recall@K with its interval, and
    the untrained encoder's beside it, compared pair by pair; logged. Returns the trained one's."""
    loaded = load_encoder(folder)
    cfg = experiment.eval
    examples = split_examples(experiment.data, cfg.split)
    transform, length = loaded.transform, loaded.stage0.text.max_length
    with console.status(f"embedding the {cfg.split} split"):
        trained = read_out(loaded.encoder, examples, loaded.tokenizer, transform, length)
    columns = {"trained": trained.metrics | trained.intervals(cfg.bootstrap)}
    log_scores(tracker, run_id, columns["trained"])
    comparison = []
    if cfg.compares_untrained:
        torch.manual_seed(experiment.seed)
        untrained = read_out(build_encoder(experiment.model, loaded.stage0, loaded.tokenizer), examples,
                             loaded.tokenizer, transform, length)
        columns["untrained"] = untrained.metrics | untrained.intervals(cfg.bootstrap)
        log_scores(tracker, run_id, columns["untrained"], "untrained/")
        comparison = compare_systems(trained.per_pair(), untrained.per_pair(), cfg.bootstrap,
                                     dict(zip(trained.ids, trained.patients)))
        comparison += [row for row in [compare_auroc(trained, untrained, cfg.bootstrap)] if row]
        log_comparison(tracker, run_id, comparison, "trained_vs_untrained")
    print_summary(console, columns, {}, RETRIEVAL_SUMMARY,
                  f"retrieval on {cfg.split} ({int(trained.metrics['retrieval/n_pairs'])} pairs)")
    if comparison:
        rows = {row["metric"]: row for row in comparison}
        print_comparison(console, [rows[key] for key in RETRIEVAL_SUMMARY if key in rows],
                         "trained - untrained, paired on the same image-report pairs")
    return columns["trained"]


def compare_reports(experiment: Experiment, first: list[dict], first_scored, second: list[dict],
                    second_scored) -> list[dict]:
    """Two systems' reports on the same studies, paired: every per-report score, and the corpus-level
    scores with per-report statistics (corpus BLEU, label F1, F1-CheXbert) where both were scored."""
    resamples, patients_of = experiment.eval.bootstrap, patients_by_id(first)
    rows = compare_systems(per_report_scores(first, first_scored), per_report_scores(second, second_scored),
                           resamples, patients_of)
    corpus = [key for key in SCORES if corpus_score(key) and key in first_scored.metrics
              and key in second_scored.metrics]

    def with_labels(predictions: list[dict], scored) -> list[dict]:
        return [p | {name: column[i] for name, column in scored.labels.items()} for i, p in enumerate(predictions)]

    return rows + compare_corpus(with_labels(first, first_scored), with_labels(second, second_scored), corpus,
                                 resamples, patients_of)


def evaluate_predictions(experiment: Experiment, records: list[dict], baseline: list[dict] | None, tracker: Tracker,
                         run_id: str, console: Console, title: str) -> dict[str, float]:
    """Judge, score and log a predictions file (and a baseline's on the same studies, compared with
    it by a paired test); return the predictions' metrics."""
    scored = score(experiment, records)
    log_evaluation(tracker, run_id, experiment, records, scored)
    columns = {"predictions": scored.metrics}
    systems = {"predictions": (records, scored.judgments)}
    rows = []
    if baseline is not None:
        base = score(experiment, baseline)
        log_evaluation(tracker, run_id, experiment, baseline, base, "baseline/")
        columns["baseline"] = base.metrics
        systems["baseline"] = (baseline, base.judgments)
        rows = compare_reports(experiment, records, scored, baseline, base)
        log_comparison(tracker, run_id, rows, "predictions_vs_baseline")
    if scored.judgments:
        log_error_chart(tracker, run_id, columns)
    log_review(tracker, run_id, systems, title)
    print_summary(console, columns, scored.skipped)
    if baseline is not None:
        print_comparison(console, rows, "predictions - baseline, paired on the same studies")
    scored.check_failures(experiment.eval.max_failed_share)
    return scored.metrics


def evaluate_in_own_run(experiment: Experiment, source: str, console: Console, *, folder: Path | None = None,
                        task: str = "reports", records: list[dict] | None = None,
                        baseline: list[dict] | None = None) -> str:
    """`radlab eval`: evaluate a checkpoint folder (a report model, or with task "retrieval" an
    encoder) or a predictions file in an MLflow run of its own, tagged with `source`; return its id.
    The run ends FINISHED, or FAILED with the error raised on."""
    tracker = Tracker(experiment)
    run_id = tracker.open_run("eval", source)
    try:
        if folder is not None:
            evaluate = evaluate_encoder if task == "retrieval" else evaluate_checkpoint
            evaluate(experiment, folder, tracker, run_id, console)
        else:
            evaluate_predictions(experiment, records, baseline, tracker, run_id, console, source)
        tracker.finish(run_id)
    except BaseException:
        tracker.finish(run_id, ok=False)
        raise
    return run_id
