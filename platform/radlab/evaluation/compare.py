"""Two systems on the same reports: for each per-report score, the difference of means (first
minus second) with a 95% bootstrap interval (scipy.stats.bootstrap, percentile) and a two-sided
paired permutation p-value (scipy.stats.permutation_test). Both take a patient's reports together
(see `resampling`): the interval resamples patients, the test swaps the two systems' scores on all
of a patient's reports at once. Where each report is its own patient, these are the bootstrap over
reports and the test swapping within each report. Identical scores give a difference of 0 and p = 1.

Only reports both systems were scored on are paired; `n` says how many. Corpus BLEU, label F1 and
F1-CheXbert have no per-report score: `compare_corpus` pairs them through each report's sufficient
statistics (n-gram counts; the true and false positives and negatives of each finding or
observation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from radlab.evaluation.chexprompt import LETTERS
from radlab.evaluation.metrics import CorpusScore, corpus_score
from radlab.evaluation.resampling import (Clusters, cluster_codes, cluster_sums, patients, resampled_rows,
                                            statistic_interval, two_sided_p)

LEVEL = 0.05  # a p-value under it, with the difference in the better direction, is a significant one


@dataclass
class Paired:
    n: int
    difference: float
    low: float
    high: float
    p_value: float

    def row(self, name: str) -> dict:
        return {"metric": name, "n": self.n, "difference": self.difference, "ci_low": self.low,
                "ci_high": self.high, "p_value": self.p_value}


def paired(first, second, resamples: int = 1000, seed: int = 0, clusters: Clusters = None,
           confidence: float = 0.95) -> Paired:
    """The paired comparison of two equally long score arrays (NaN where a report was not scored);
    `clusters`: each report's patient; `confidence`: the interval's level."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return Paired(len(a), float(np.mean(a - b)) if len(a) else float("nan"), float("nan"), float("nan"), float("nan"))
    differences = a - b
    mean = float(differences.mean())
    if not differences.any():  # the same scores on every report
        return Paired(len(a), 0.0, 0.0, 0.0, 1.0)
    kept = None if clusters is None else [c for c, k in zip(clusters, keep) if k]
    # Per patient: the sums of each system's scores and of their differences, and the reports counted.
    a_sums, counts = cluster_sums(a, kept)
    b_sums, _ = cluster_sums(b, kept)
    sums = a_sums - b_sums
    rng = np.random.default_rng(seed)
    if np.all(differences == differences[0]):  # no spread to resample: the interval is the point
        low = high = mean
    else:
        interval = stats.bootstrap((sums, counts), lambda s, n, axis: s.sum(axis=axis) / n.sum(axis=axis),
                                   paired=True, vectorized=True, n_resamples=resamples, method="percentile",
                                   confidence_level=confidence, random_state=rng).confidence_interval
        low, high = float(interval.low), float(interval.high)
    # Swapping the systems on a patient flips the sign of its summed difference; the mean over
    # patients is the mean over reports times a constant, so the p-value is the reports' one.
    test = stats.permutation_test((a_sums, b_sums), lambda x, y, axis: np.mean(x - y, axis=axis),
                                  permutation_type="samples", n_resamples=max(resamples, 999), vectorized=True,
                                  random_state=rng)
    return Paired(len(a), mean, low, high, float(test.pvalue))


def paired_corpus(first: np.ndarray, second: np.ndarray, corpus_score, resamples: int = 1000, seed: int = 0,
                  clusters: Clusters = None, confidence: float = 0.95) -> Paired:
    """Two systems' corpus-level score (BLEU, label F1, F1-CheXbert) on the same reports, first minus
    second, from each report's sufficient statistics (rows: reports) and `corpus_score(summed statistics)`: the
    interval (at `confidence`) resamples patients, both systems with the same draws, and the p-value
    is the paired permutation test that swaps the two systems' statistics on all of a patient's
    reports (sacrebleu's approximate randomisation, drawn by patient)."""
    n = len(first)
    if n < 2:
        return Paired(n, float("nan"), float("nan"), float("nan"), float("nan"))

    def difference(rows: np.ndarray) -> float:
        return corpus_score(first[rows].sum(0)) - corpus_score(second[rows].sum(0))

    observed = difference(np.arange(n))
    rng = np.random.default_rng(seed)
    low, high = statistic_interval(difference, n, resamples, rng, clusters, confidence)
    codes = cluster_codes(clusters, n)
    moves = np.zeros((int(codes.max()) + 1, first.shape[1]))
    np.add.at(moves, codes, first - second)  # what swapping a patient moves from the first system to the second
    totals = first.sum(0), second.sum(0)
    null = np.array([corpus_score(totals[0] - moved) - corpus_score(totals[1] + moved)
                     for moved in (rng.random((max(resamples, 999), len(moves))) < 0.5) @ moves])
    return Paired(n, observed, low, high, two_sided_p(null, observed))


def reports_from_table(table: dict[str, list], score: CorpusScore) -> list[dict] | None:
    """The reports of a logged per-report table as `versus_corpus` takes them for `score`: id and
    the two sides it is computed from (None for a table logged without them)."""
    fields = (score.reference, score.candidate)
    if any(field not in table for field in fields):
        return None
    return [{"id": str(i), **dict(zip(fields, sides))} for i, *sides in zip(table["id"], *(table[f] for f in fields))]


def _has(report: dict, *fields: str) -> bool:
    return all(report.get(field) is not None for field in fields)


def versus_corpus(first: dict[int, list[dict]], second: dict[int, list[dict]], metric: str, resamples: int = 1000,
                  seed: int = 0, patients_of: dict[str, str] | None = None, confidence: float = 0.95) -> dict:
    """`versus_over_seeds` for a corpus-level score with per-report statistics (`corpus_score`:
    corpus BLEU, label F1, F1-CheXbert; training seed -> that run's reports), first minus second, on
    the reports every run has both sides of: per seed the two corpus scores' difference; the
    interval resamples patients (the same draws for every run), then seeds; the p-value is
    `paired_corpus`'s test on the statistics pooled over the seeds; the first is significantly
    better only where both agree."""
    score = corpus_score(metric)
    seeds = sorted(set(first) & set(second))
    runs = [first[s] for s in seeds] + [second[s] for s in seeds]
    common = set.intersection(*({str(p["id"]) for p in run if _has(p, score.reference, score.candidate)}
                                for run in runs)) if runs else set()
    ids = [str(p["id"]) for p in first[seeds[0]] if str(p["id"]) in common] if seeds else []
    if len(ids) < 2:
        return {"metric": metric, "n": len(ids), "seeds": len(seeds), "difference": math.nan, "ci_low": math.nan,
                "ci_high": math.nan, "p_value": math.nan, "significant": False, "per_seed": {}}

    def statistics(run: list[dict]) -> np.ndarray:
        by_id = {str(p["id"]): p for p in run}
        return score.statistics([by_id[i][score.reference] for i in ids], [by_id[i][score.candidate] for i in ids])

    corpus = score.score
    a, b = ([statistics(system[s]) for s in seeds] for system in (first, second))
    clusters = _clusters(ids, patients_of)
    per_seed = {s: corpus(a_s.sum(0)) - corpus(b_s.sum(0)) for s, a_s, b_s in zip(seeds, a, b)}
    pooled = paired_corpus(sum(a), sum(b), corpus, resamples, seed, clusters, confidence)
    if len(seeds) == 1:
        low, high = pooled.low, pooled.high
    else:
        rng = np.random.default_rng(seed)
        drawn = np.array([[corpus(a_s[rows].sum(0)) - corpus(b_s[rows].sum(0)) for a_s, b_s in zip(a, b)]
                          for rows in resampled_rows(len(ids), resamples, rng, clusters)])  # (resamples, seeds)
        means = np.take_along_axis(drawn, rng.integers(len(seeds), size=drawn.shape), axis=1).mean(axis=1)
        tail = (100 - 100 * confidence) / 2  # 2.5 exactly at 95%
        low, high = (float(x) for x in np.percentile(means, [tail, 100 - tail]))
    return {"metric": metric, "n": len(ids), "seeds": len(seeds), "difference": float(np.mean(list(per_seed.values()))),
            "ci_low": low, "ci_high": high, "p_value": pooled.p_value,
            "significant": bool(low > 0 and pooled.p_value < LEVEL), "per_seed": per_seed}


def compare_corpus(first: list[dict], second: list[dict], metrics: list[str], resamples: int = 1000,
                   patients_of: dict[str, str] | None = None) -> list[dict]:
    """Rows as `compare_systems` gives them for the corpus-level scores `metrics` (keys with a
    `corpus_score`: corpus BLEU, label F1, F1-CheXbert), each over the reports both systems have
    its candidate side of, against the first's reference side (`paired_corpus`)."""
    rows = []
    for metric in metrics:
        score = corpus_score(metric)
        theirs = {str(p["id"]): p for p in second if _has(p, score.candidate)}
        both = [(p, theirs[str(p["id"])]) for p in first
                if _has(p, score.reference, score.candidate) and str(p["id"]) in theirs]
        references = [a[score.reference] for a, _ in both]
        mine = score.statistics(references, [a[score.candidate] for a, _ in both])
        other = score.statistics(references, [b[score.candidate] for _, b in both])
        rows.append(paired_corpus(mine, other, score.score, resamples,
                                  clusters=_clusters([str(a["id"]) for a, _ in both], patients_of)).row(metric))
    return rows


def per_report_scores(predictions: list[dict], scored) -> dict[str, dict[str, float]]:
    """id -> {score name -> value} for every per-report score of one scored system: CheXprompt's
    significant, insignificant and total error counts and whether it has no significant error (judged
    reports only), and the metric columns."""
    out: dict[str, dict[str, float]] = {str(p["id"]): {} for p in predictions}
    for p, judgment in zip(predictions, scored.judgments):
        if judgment.ok:
            significant = sum(judgment.counts.significant[x] for x in LETTERS)
            insignificant = sum(judgment.counts.insignificant[x] for x in LETTERS)
            out[str(p["id"])] |= {"chexprompt/significant": significant, "chexprompt/insignificant": insignificant,
                                  "chexprompt/total": significant + insignificant,
                                  "chexprompt/zero_significant": float(significant == 0)}
    for name, column in scored.per_report.items():
        for p, value in zip(predictions, column):
            if value is not None:
                out[str(p["id"])][name] = float(value)
    return out


def patients_by_id(predictions: list[dict]) -> dict[str, str]:
    """id -> the report's patient (its own id where the prediction names none)."""
    return dict(zip((str(p["id"]) for p in predictions), patients(predictions)))


def _clusters(ids: list[str], patients_of: dict[str, str] | None) -> Clusters:
    return None if patients_of is None else [patients_of.get(i, i) for i in ids]


def compare_systems(first: dict[str, dict[str, float]], second: dict[str, dict[str, float]],
                    resamples: int = 1000, patients_of: dict[str, str] | None = None) -> list[dict]:
    """One row per score both systems have, over the reports both were scored on; `patients_of`:
    id -> patient (see `patients_by_id`)."""
    ids = [i for i in first if i in second]
    names = sorted({name for i in ids for name in first[i]} & {name for i in ids for name in second[i]})
    rows = []
    for name in names:
        a = [first[i].get(name, np.nan) for i in ids]
        b = [second[i].get(name, np.nan) for i in ids]
        rows.append(paired(a, b, resamples, clusters=_clusters(ids, patients_of)).row(name))
    return rows


def scores_from_table(table: dict[str, list]) -> dict[str, dict[str, float]]:
    """id -> {score name -> value}, as `per_report_scores` gives them, rebuilt from the per-report
    table an evaluation logged (eval/trained/per_report.json)."""
    out: dict[str, dict[str, float]] = {}
    columns = [c for c in table if c not in ("id", "patient", "run_id", "reference", "candidate")
               and not c.startswith(("judge_", "labels/"))
               and not c.startswith(("significant_", "insignificant_"))]
    for k, report_id in enumerate(table["id"]):
        scores: dict[str, float] = {}
        if table.get("judge_status", [None] * (k + 1))[k] == "ok":
            significant = sum(float(table[f"significant_{x}"][k]) for x in LETTERS)
            insignificant = sum(float(table[f"insignificant_{x}"][k]) for x in LETTERS)
            scores |= {"chexprompt/significant": significant, "chexprompt/insignificant": insignificant,
                       "chexprompt/total": significant + insignificant,
                       "chexprompt/zero_significant": float(significant == 0)}
        for column in columns:
            value = table[column][k]
            if value is not None and not math.isnan(float(value)):
                scores[column] = float(value)
        out[str(report_id)] = scores
    return out


def patients_from_table(table: dict[str, list]) -> dict[str, str] | None:
    """id -> patient from a logged per-report table (None for a table logged without patients)."""
    if "patient" not in table:
        return None
    return {str(i): str(patient) for i, patient in zip(table["id"], table["patient"])}


def versus(first: dict[str, dict[str, float]], second: dict[str, dict[str, float]], score: str,
           higher_is_better: bool, resamples: int = 1000, patients_of: dict[str, str] | None = None,
           confidence: float = 0.95) -> dict:
    """The paired comparison of one per-report score, first minus second (its interval at
    `confidence`), and whether the first is significantly better: p < 0.05 and the interval on the
    better side of zero, as `versus_over_seeds` asks (with a widened `confidence`, the two can part)."""
    ids = [i for i in first if i in second]
    result = paired([first[i].get(score, np.nan) for i in ids], [second[i].get(score, np.nan) for i in ids],
                    resamples, clusters=_clusters(ids, patients_of), confidence=confidence).row(score)
    better = result["ci_low"] > 0 if higher_is_better else result["ci_high"] < 0
    return result | {"significant": bool(better and result["p_value"] < LEVEL)}


def versus_over_seeds(first: dict[int, dict[str, dict[str, float]]], second: dict[int, dict[str, dict[str, float]]],
                      score: str, higher_is_better: bool, resamples: int = 1000, seed: int = 0,
                      patients_of: dict[str, str] | None = None, confidence: float = 0.95) -> dict:
    """Two configurations, each trained with several training seeds (seed -> that run's per-report
    scores), compared on one per-report score, first minus second, over the seeds both ran and the
    studies every one of those runs scored. Two sources of chance make a difference: the studies
    and the training seed, which alone can move a run more than a configuration does. So the
    interval resamples both (seeds, then patients, with replacement: a two-level bootstrap), the
    p-value is the paired permutation test over patients of the seed-averaged scores, and the first
    is significantly better only when both agree (p < 0.05 and an interval on the better side of
    zero). `per_seed` holds the mean difference of each seed's pair of runs; `confidence`: the
    interval's level."""
    seeds = sorted(set(first) & set(second))
    if len(seeds) == 1:
        one = versus(first[seeds[0]], second[seeds[0]], score, higher_is_better, resamples, patients_of, confidence)
        return one | {"seeds": 1, "per_seed": {seeds[0]: one["difference"]}}
    runs = [first[s] for s in seeds] + [second[s] for s in seeds]
    ids = [i for i in (first[seeds[0]] if seeds else {})
           if all(not math.isnan(run.get(i, {}).get(score, math.nan)) for run in runs)]
    if len(ids) < 2:
        return {"metric": score, "n": len(ids), "seeds": len(seeds), "difference": math.nan, "ci_low": math.nan,
                "ci_high": math.nan, "p_value": math.nan, "significant": False, "per_seed": {}}
    a = np.array([[first[s][i][score] for i in ids] for s in seeds])
    b = np.array([[second[s][i][score] for i in ids] for s in seeds])
    differences = a - b  # (seeds, reports)
    rng = np.random.default_rng(seed)
    clusters = _clusters(ids, patients_of)
    per_seed_resampled = np.array([differences[:, rows].mean(axis=1)
                                   for rows in resampled_rows(len(ids), resamples, rng, clusters)]).T  # (seeds, resamples)
    picked = rng.integers(len(seeds), size=(resamples, len(seeds)))
    means = np.take_along_axis(per_seed_resampled.T, picked, axis=1).mean(axis=1)
    tail = (100 - 100 * confidence) / 2  # 2.5 exactly at 95%
    low, high = (float(x) for x in np.percentile(means, [tail, 100 - tail]))
    p_value = paired(a.mean(axis=0), b.mean(axis=0), resamples, seed, clusters).p_value
    difference = float(differences.mean())
    better = (low > 0) if higher_is_better else (high < 0)
    return {"metric": score, "n": len(ids), "seeds": len(seeds), "difference": difference, "ci_low": low,
            "ci_high": high, "p_value": p_value, "significant": bool(better and p_value < LEVEL),
            "per_seed": {s: float(d) for s, d in zip(seeds, differences.mean(axis=1))}}
