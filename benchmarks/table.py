"""The table of every figure the benchmarks recorded (RADLAB_BENCHMARK_RESULTS), as Markdown.

    python benchmarks/table.py benchmarks/results.jsonl > benchmarks/results.md
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if not rows:
        sys.exit(f"{path}: no figures recorded")
    print(f"Measured on {rows[0]['cpus']} CPU cores; medians (min-max) over alternating rounds.\n")
    print("| benchmark | measure | radlab | baseline | ratio | goal | met | date |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"| {r['benchmark']} | {r['measure']} | {r['ours']} {r['unit']} | {r['baseline']} | {ratio} | "
              f"{r['goal']} | {'' if r['met'] is None else 'yes' if r['met'] else '**no**'} | {r['date']} |")


if __name__ == "__main__":
    main(sys.argv[1])
