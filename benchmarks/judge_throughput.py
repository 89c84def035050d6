"""CheXprompt judging throughput against a loopback judge that takes 100 ms per answer (in a
process of its own, as a remote endpoint would be): reports judged per second at the shipped
defaults (8 at a time, no rate limit on this site) and at concurrency 32, each against a
one-at-a-time loop, the sides alternating over rounds; then a pass served wholly from the cache.

    python benchmarks/judge_throughput.py [--reports 320] [--rounds 3]

Goals: the shipped defaults at least 7x one at a time (8 in flight); concurrency 32 at least 20x.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from common import alternate, report

from radlab.config import JudgeConfig
from radlab.data.synthetic import draw_findings, write_findings
from radlab.evaluation.judge_client import JudgeClient
from radlab.evaluation.reference_judge import create_app
from radlab.runtime import free_loopback_port


def serve_judge(port: int, latency: float) -> None:
    import uvicorn

    uvicorn.run(create_app(latency), host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def judge_process(latency: float):
    """The judge in a process of its own, as a remote endpoint would be (not sharing our GIL)."""
    port = free_loopback_port()
    process = multiprocessing.get_context("spawn").Process(target=serve_judge, args=(port, latency), daemon=True)
    process.start()
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            break
        except httpx.HTTPError:
            if time.time() > deadline or not process.is_alive():
                raise RuntimeError("the judge process did not start")
            time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.join(10)


def pairs(count: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [(write_findings(draw_findings(rng)), write_findings(draw_findings(rng))) for _ in range(count)]


def timed(config: JudgeConfig, url: str, work: list[tuple[str, str]]) -> tuple[float, JudgeClient]:
    client = JudgeClient(config, base_url=url)
    start = time.perf_counter()
    results = client.judge(work)
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), "a judgment failed"
    return len(work) / elapsed, client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=320)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, judge_process(args.latency) as url:
        passes = iter(range(10_000))

        def rate(**settings) -> float:
            """A fresh cache and fresh pairs each pass, so every report is a request."""
            number = next(passes)
            config = JudgeConfig(endpoint="compatible", base_url=url, cache=Path(tmp) / f"{number}.sqlite", **settings)
            return timed(config, url, pairs(args.reports, number))[0]

        rates = alternate({"one at a time": lambda: rate(concurrency=1), "shipped defaults": rate,
                           "concurrency 32": lambda: rate(concurrency=32)}, args.rounds)
        defaults = JudgeConfig(endpoint="compatible", base_url=url)
        print(f"judge latency {args.latency * 1000:.0f} ms, {args.reports} reports per pass; shipped defaults: "
              f"{defaults.concurrency} at a time, rate limit {defaults.rate_limit or 'none'} on this site")
        report("judge_throughput", "reports/s at the shipped defaults", rates["shipped defaults"],
               rates["one at a time"], "one at a time", "reports/s", 7)
        report("judge_throughput", "reports/s at concurrency 32", rates["concurrency 32"], rates["one at a time"],
               "one at a time", "reports/s", 20)
        config = JudgeConfig(endpoint="compatible", base_url=url, concurrency=32, cache=Path(tmp) / "again.sqlite")
        timed(config, url, pairs(args.reports, 99_999))
        cached, client = timed(config, url, pairs(args.reports, 99_999))
    print(f"cached second pass: {cached:8.1f} reports/s, {client.usage['requests']} requests sent, "
          f"{client.usage['cache_hits']} cache hits")


if __name__ == "__main__":
    main()
