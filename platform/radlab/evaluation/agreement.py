"""Agreement between two judges (or a judge and human error counts) on the same report pairs, the
way CheXprompt was validated against radiologists on ReXVal: Kendall tau and mean absolute
difference of error counts, per error type and for the totals, each with its 95% bootstrap interval
(a patient's reports drawn together where the judgments name patients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from radlab.data.dataset import read_jsonl
from radlab.evaluation.chexprompt import ERROR_TYPES, LETTERS
from radlab.evaluation.resampling import statistic_interval


def read_judgments(path: Path) -> dict[str, dict]:
    """id -> {significant, insignificant} of the judged lines of a judgments JSONL."""
    return {str(record["id"]): record for record in read_jsonl(path) if record.get("significant") is not None}


def tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two columns; NaN where either is constant (no ranking to agree on)."""
    return float(kendalltau(x, y).statistic) if np.ptp(x) and np.ptp(y) else float("nan")


def agreement(a: dict[str, dict], b: dict[str, dict], resamples: int = 1000) -> dict[str, dict[str, float]]:
    """Per column (each type x significance, and the totals): n, Kendall tau and mean |a - b|, each
    with `<name>_ci_low` and `<name>_ci_high`."""
    ids = sorted(a.keys() & b.keys())
    if len(ids) < 2:
        raise ValueError(f"only {len(ids)} report(s) judged by both: need at least 2")

    def column(source, kind, letter=None):
        return np.array([source[i][kind][letter] if letter else sum(source[i][kind].values()) for i in ids], float)

    columns = {f"{kind}/{ERROR_TYPES[x]}": (column(a, kind, x), column(b, kind, x))
               for kind in ("significant", "insignificant") for x in LETTERS}
    columns["significant/total"] = (column(a, "significant"), column(b, "significant"))
    columns["insignificant/total"] = (column(a, "insignificant"), column(b, "insignificant"))
    columns["total"] = (columns["significant/total"][0] + columns["insignificant/total"][0],
                        columns["significant/total"][1] + columns["insignificant/total"][1])
    clusters = [str(a[i].get("patient") or b[i].get("patient") or i) for i in ids]
    out = {}
    for name, (x, y) in columns.items():
        row = {"n": float(len(ids)), "kendall_tau": tau(x, y), "mean_abs_diff": float(np.abs(x - y).mean())}
        for key, statistic in (("kendall_tau", lambda rows, x=x, y=y: tau(x[rows], y[rows])),
                               ("mean_abs_diff", lambda rows, x=x, y=y: float(np.abs(x[rows] - y[rows]).mean()))):
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = statistic_interval(statistic, len(ids), resamples, 0, clusters)
        out[name] = row
    return out
