"""CheXprompt judging throughput: reports judged per second at concurrency 32 against a loopback
judge that takes 100 ms per answer, against a one-at-a-time loop, in one run; then a second pass
served wholly from the cache.

    python benchmarks/judge_throughput.py [--reports 320]

Goal: concurrency 32 at least 20x the one-at-a-time rate, within the configured rate limit.
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

from radlab.config import JudgeConfig
from radlab.data.synthetic import draw_findings, write_findings
from radlab.evaluation.judge_client import JudgeClient
from radlab.evaluation.reference_judge import create_app, free_port


def serve_judge(port: int, latency: float) -> None:
    import uvicorn

    uvicorn.run(create_app(latency), host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def judge_process(latency: float):
    """The judge in a process of its own, as a remote endpoint would be (not sharing our GIL)."""
    port = free_port()
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
    parser.add_argument("--rpm", type=float, default=60_000, help="the configured requests-per-minute limit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, judge_process(args.latency) as url:
        def config(concurrency: int, cache: str) -> JudgeConfig:
            return JudgeConfig(endpoint="compatible", base_url=url, concurrency=concurrency, max_retries=0,
                               requests_per_minute=args.rpm, cache=Path(tmp) / cache)

        serial, _ = timed(config(1, "serial.sqlite"), url, pairs(args.reports, 0))
        concurrent, _ = timed(config(32, "concurrent.sqlite"), url, pairs(args.reports, 1))
        cached, client = timed(config(32, "concurrent.sqlite"), url, pairs(args.reports, 1))
    ceiling = args.rpm / 60
    ratio = concurrent / serial
    print(f"judge latency {args.latency * 1000:.0f} ms, {args.reports} reports per pass, limit {args.rpm:.0f} requests/min")
    print(f"one at a time     : {serial:8.1f} reports/s")
    print(f"concurrency 32    : {concurrent:8.1f} reports/s   (rate limit allows {ceiling:.0f}/s)")
    print(f"ratio             : {ratio:8.1f}x  (goal >= 20x: {'met' if ratio >= 20 else 'NOT met'})")
    print(f"cached second pass: {cached:8.1f} reports/s, {client.usage['requests']} requests sent, "
          f"{client.usage['cache_hits']} cache hits")


if __name__ == "__main__":
    main()
