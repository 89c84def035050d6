"""Scores report pairs with the `radgraph` package's F1RadGraph; run by the RadGraph interpreter
(`eval.radgraph_python`), not imported by radlab, so it needs nothing but that package.

stdin: {"model_type", "model_cache_dir", "refs": [...], "hyps": [...]}
stdout: {"simple": [...], "partial": [...], "complete": [...]}, one reward in [0, 1] per pair, or
{"error": "..."} with exit status 1 (the traceback goes to stderr).
"""

import contextlib
import json
import sys
import traceback


def main() -> None:
    request = json.load(sys.stdin)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the package prints progress on stdout
            from radgraph import F1RadGraph

            scorer = F1RadGraph(reward_level="all", model_type=request["model_type"],
                                model_cache_dir=request["model_cache_dir"])
            _, (simple, partial, complete), _, _ = scorer(refs=request["refs"], hyps=request["hyps"])
    except Exception as err:
        traceback.print_exc()
        json.dump({"error": f"{type(err).__name__}: {err}"}, sys.stdout)
        sys.exit(1)
    json.dump({"simple": [float(r) for r in simple], "partial": [float(r) for r in partial],
               "complete": [float(r) for r in complete]}, sys.stdout)


if __name__ == "__main__":
    main()
