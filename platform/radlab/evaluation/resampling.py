"""Bootstrap intervals over a test set whose reports are not all independent.

A MIMIC-CXR test set holds a report per image: a study with an AP and a PA image is two reports
with one reference, and a patient may have several studies. Reports of one patient rise and fall
together, so intervals and paired tests that draw reports one by one are too narrow. Here the
unit drawn is the patient (`clusters`: each report's patient, in the order of the reports), which
brings all its reports; where every report is its own patient (the synthetic set, or no patients
known) this is the ordinary bootstrap over reports, draw for draw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

Clusters = Sequence[str] | None


def patients(predictions: list[dict]) -> list[str]:
    """Each prediction's patient, in order (its own id where it names none)."""
    return [str(p.get("patient") or p["id"]) for p in predictions]


@dataclass
class Interval:
    mean: float
    low: float
    high: float

    def metrics(self, name: str) -> dict[str, float]:
        return {name: self.mean, f"{name}_ci_low": self.low, f"{name}_ci_high": self.high}


def cluster_codes(clusters: Clusters, n: int) -> np.ndarray:
    """Each report's cluster as 0, 1, ... in the order the clusters first appear (each report its
    own cluster without `clusters`)."""
    if clusters is None:
        return np.arange(n)
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} clusters for {n} reports")
    _, first, inverse = np.unique(np.asarray(clusters, dtype=str), return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


def resampled_rows(n: int, resamples: int, seed: int | np.random.Generator = 0,
                   clusters: Clusters = None) -> Iterator[np.ndarray]:
    """The report indices of each bootstrap resample: clusters drawn with replacement, each bringing
    all its reports (as many clusters as there are; so a resample's size varies with the clusters'
    sizes). The draws are made at once, from `seed` or from a generator the caller goes on using."""
    rng = np.random.default_rng(seed)
    codes = cluster_codes(clusters, n)
    count = int(codes.max()) + 1 if n else 0
    if count == n:  # every report its own cluster
        yield from rng.integers(0, n, size=(resamples, n))
        return
    order = np.argsort(codes, kind="stable")  # the reports grouped by cluster
    sizes = np.bincount(codes, minlength=count)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for draw in rng.integers(0, count, size=(resamples, count)):
        drawn = sizes[draw]
        before = np.concatenate([[0], np.cumsum(drawn)[:-1]])
        yield order[np.arange(drawn.sum()) + np.repeat(starts[draw] - before, drawn)]


def bootstrap(values, statistic=np.mean, resamples: int = 1000, seed: int = 0, clusters: Clusters = None) -> Interval:
    """Point estimate and 95% percentile interval, resampling the reports' clusters with replacement."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    stats = np.array([statistic(values[rows]) for rows in resampled_rows(len(values), resamples, seed, clusters)])
    low, high = np.percentile(stats, [2.5, 97.5])
    return Interval(float(statistic(values)), float(low), float(high))


def statistic_interval(statistic, n: int, resamples: int, seed: int | np.random.Generator = 0,
                       clusters: Clusters = None, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval (95% by default) of `statistic(rows)`, a statistic of the reports `rows`
    that may be undefined (NaN) on some resamples, as Kendall tau on a constant column or an AUROC
    with one class: such resamples are left out, and the interval is NaN where more than one in
    twenty is (too often to say what the rest cover)."""
    values = np.array([statistic(rows) for rows in resampled_rows(n, resamples, seed, clusters)])
    finite = values[np.isfinite(values)]
    if len(finite) < 0.95 * len(values) or not len(finite):
        return float("nan"), float("nan")
    tail = (100 - 100 * confidence) / 2  # 2.5 exactly at 95%
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def two_sided_p(null: np.ndarray, observed: float) -> float:
    """A permutation test's two-sided p-value as scipy.stats.permutation_test gives it: twice the
    smaller tail of the permuted statistics `null`, each tail counting the observed one."""
    tails = [(1 + np.sum(side)) / (1 + len(null)) for side in (null <= observed + 1e-12, null >= observed - 1e-12)]
    return float(min(1.0, 2 * min(tails)))


def cluster_sums(values: np.ndarray, clusters: Clusters) -> tuple[np.ndarray, np.ndarray]:
    """(each cluster's sum of `values`, its number of reports), clusters in order of appearance."""
    codes = cluster_codes(clusters, len(values))
    count = int(codes.max()) + 1 if len(values) else 0
    return np.bincount(codes, weights=values, minlength=count), np.bincount(codes, minlength=count).astype(float)
