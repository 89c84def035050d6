"""Scoring one set of predictions: CheXprompt judgments (with their failures counted, and scores
refused where too many failed) and the text and clinical metrics of `evaluation/metrics.py`, per
report and aggregated with intervals."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from radlab.config import Experiment
from radlab.errors import RadlabError
from radlab.evaluation.chexprompt import LETTERS, aggregate
from radlab.evaluation.judge_client import JudgeClient, Judgment
from radlab.evaluation.metrics import text_and_clinical
from radlab.evaluation.preflight import judge_client
from radlab.evaluation.resampling import patients


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
    CheXprompt judgments and the judge client, and the labels a scorer read off each report
    (`labels/...` columns, in the same order)."""
    metrics: dict[str, float]
    skipped: dict[str, str]
    per_report: dict[str, list[float | None]]
    judgments: list[Judgment] = field(default_factory=list)
    client: JudgeClient | None = None
    labels: dict[str, list[str | None]] = field(default_factory=dict)

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
        metrics.update(aggregate([j.counts for j in judgments], resamples=cfg.bootstrap,
                                 clusters=patients(predictions)).metrics())
        metrics.update({f"judge/{k}": float(v) for k, v in client.usage.items()})
        metrics["judge/cost"] = client.cost
    with_candidate = [i for i, p in enumerate(predictions) if "candidate" in p]
    pairs = [(predictions[i]["reference"], predictions[i]["candidate"]) for i in with_candidate]
    patient = patients(predictions)
    results = text_and_clinical(pairs, cfg, experiment.data.synthetic is not None, [patient[i] for i in with_candidate])
    metrics.update(results.values)

    def by_prediction(columns: dict[str, list]) -> dict[str, list]:
        """Columns of the scored pairs laid out by prediction (None where one has no candidate)."""
        out = {name: [None] * len(predictions) for name in columns}
        for name, column in columns.items():
            for i, value in zip(with_candidate, column):
                out[name][i] = value
        return out

    return Scored(metrics, results.skipped, by_prediction(results.per_report), judgments, client,
                  by_prediction(results.labels))


def judgment_records(predictions: list[dict], judgments: list[Judgment]) -> list[dict]:
    """One line per report, the input of `radlab judge agreement`."""
    return [{"id": p["id"], "patient": patient, "status": "ok" if j.ok else "failed", "error": j.error, "raw": j.raw,
             "significant": j.counts.significant if j.ok else None,
             "insignificant": j.counts.insignificant if j.ok else None}
            for p, j, patient in zip(predictions, judgments, patients(predictions))]


def report_table(predictions: list[dict], scored: Scored) -> dict[str, list]:
    """The per-report table: texts, the judge's verdict and counts, and the per-report metrics."""
    rows = []
    judgments = scored.judgments or [None] * len(predictions)
    for k, (p, j, patient) in enumerate(zip(predictions, judgments, patients(predictions))):
        row = {"id": p["id"], "patient": patient, "reference": p["reference"],
               "candidate": p.get("candidate", ""),
               "judge_status": "ok" if j and j.ok else "failed" if j else "not judged",
               "judge_error": (j.error or "") if j else "", "judge_answer": (j.raw or "") if j else ""}
        for letter in LETTERS:
            row[f"significant_{letter}"] = j.counts.significant[letter] if j and j.ok else None
            row[f"insignificant_{letter}"] = j.counts.insignificant[letter] if j and j.ok else None
        row.update({name: column[k] for name, column in (scored.per_report | scored.labels).items()})
        rows.append(row)
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
