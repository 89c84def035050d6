"""Agreement between two judges (or a judge and human error counts) on the same report pairs, the
way CheXprompt was validated against radiologists on ReXVal: Kendall tau and mean absolute
difference of error counts, per error type and for the totals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from radlab.data.dataset import read_jsonl
from radlab.evaluation.chexprompt import ERROR_TYPES, LETTERS


def read_judgments(path: Path) -> dict[str, dict]:
    """id -> {significant, insignificant} of the judged lines of a judgments JSONL."""
    return {str(record["id"]): record for record in read_jsonl(path) if record.get("significant") is not None}


def agreement(a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per column (each type x significance, and the totals): n, Kendall tau, mean |a - b|."""
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
    out = {}
    for name, (x, y) in columns.items():
        tau = kendalltau(x, y).statistic if np.ptp(x) and np.ptp(y) else float("nan")
        out[name] = {"n": float(len(ids)), "kendall_tau": float(tau), "mean_abs_diff": float(np.abs(x - y).mean())}
    return out
