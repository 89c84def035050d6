"""Agreement between two judges' error counts, with intervals that draw each patient's reports together."""

import math

import numpy as np

from radlab.evaluation.agreement import agreement
from radlab.evaluation.chexprompt import LETTERS


def judgments(counts: np.ndarray, patients: list[str] | None = None) -> dict[str, dict]:
    zero = dict.fromkeys(LETTERS, 0)
    return {f"r{k:03d}": {"significant": zero | {"A": int(c)}, "insignificant": zero,
                      **({"patient": patients[k]} if patients else {})} for k, c in enumerate(counts)}


def test_agreement_carries_intervals_and_counts_a_study_once():
    rng = np.random.default_rng(7)
    first = rng.poisson(1.0, 80)
    second = np.where(rng.random(80) < 0.7, first, rng.poisson(1.0, 80))  # the judges agree on most reports
    result = agreement(judgments(first), judgments(second), resamples=300)
    row = result["significant/false_finding"]
    assert row["kendall_tau_ci_low"] < row["kendall_tau"] < row["kendall_tau_ci_high"] <= 1
    assert row["mean_abs_diff_ci_low"] < row["mean_abs_diff"] < row["mean_abs_diff_ci_high"]
    # Every report judged twice (a study's two images), the pairs naming their patient: the same figures.
    patients = [f"p{k // 2}" for k in range(160)]
    doubled = agreement(judgments(np.repeat(first, 2), patients), judgments(np.repeat(second, 2), patients), 300)
    twice = doubled["significant/false_finding"]
    assert twice["kendall_tau"] == row["kendall_tau"]
    assert (twice["mean_abs_diff_ci_low"], twice["mean_abs_diff_ci_high"]) == \
        (row["mean_abs_diff_ci_low"], row["mean_abs_diff_ci_high"])
    # A type neither judge ever counts has no ranking to agree on: no tau and no interval for it.
    none = result["insignificant/omitted_finding"]
    assert math.isnan(none["kendall_tau"]) and math.isnan(none["kendall_tau_ci_low"])
    assert none["mean_abs_diff"] == 0.0
