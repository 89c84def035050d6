"""What every benchmark shares: the two sides measured in alternation over several rounds (so a
slow minute of the machine hits both), medians with their range, the goal printed beside the
figure, and one row per figure for the table `make benchmark` writes.

Set RADLAB_BENCHMARK_RESULTS to a file to collect the rows (JSON lines); `benchmarks/table.py`
turns them into one table.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from datetime import date


def alternate(sides: dict[str, Callable[[], float]], rounds: int = 3) -> dict[str, list[float]]:
    """Each side's figure per round, the sides taking turns within every round."""
    results: dict[str, list[float]] = {name: [] for name in sides}
    for round_number in range(rounds):
        for name, measure in sides.items():
            results[name].append(measure())
            print(f"  round {round_number + 1}/{rounds} {name}: {results[name][-1]:.2f}", flush=True)
    return results


def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(benchmark: str, measure: str, ours: list[float], baseline: list[float], baseline_name: str, unit: str,
           goal: float | None, higher_is_better: bool = True, digits: int = 1) -> bool | None:
    """Print ours against the baseline (medians, ranges, the ratio of medians with the range of the
    per-round ratios) and whether the goal on that ratio is met (None: a figure without a goal);
    record the row. `digits`: the figures' decimals."""
    ratio = statistics.median(ours) / statistics.median(baseline)
    per_round = [o / b for o, b in zip(ours, baseline)]
    met = None if goal is None else ratio >= goal if higher_is_better else ratio <= goal
    target = "" if goal is None else f"{'>=' if higher_is_better else '<='} {goal}x"
    print(f"{measure}: {spread(ours, digits)} vs {baseline_name} {spread(baseline, digits)} {unit} (median, min-max of "
          f"{len(ours)} rounds); ratio {ratio:.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"
          + ("" if goal is None else f"; goal {target}: {'met' if met else 'NOT met'}"), flush=True)
    record({"benchmark": benchmark, "measure": measure, "ours": spread(ours, digits), "baseline": f"{baseline_name} "
            f"{spread(baseline, digits)}", "unit": unit, "ratio": round(ratio, 3), "goal": target, "met": met})
    return met


def check(benchmark: str, measure: str, values: list[float], unit: str, goal: float,
          higher_is_better: bool = True, digits: int = 1) -> bool:
    """A figure with an absolute goal (a latency, a start-up time)."""
    median = statistics.median(values)
    met = median >= goal if higher_is_better else median <= goal
    sign = ">=" if higher_is_better else "<="
    goal = round(goal, digits)
    print(f"{measure}: {spread(values, digits)} {unit}; goal {sign} {goal} {unit}: {'met' if met else 'NOT met'}",
          flush=True)
    record({"benchmark": benchmark, "measure": measure, "ours": spread(values, digits), "baseline": "", "unit": unit,
            "ratio": None, "goal": f"{sign} {goal} {unit}", "met": met})
    return met


def record(row: dict) -> None:
    target = os.environ.get("RADLAB_BENCHMARK_RESULTS")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**row, "date": date.today().isoformat(), "cpus": os.cpu_count()}) + "\n")
