"""Serving throughput: reports per second and p50/p99 latency at concurrency 1, 8 and 32, for the
tiny model with dynamic batching (max_batch_size 32) against the same model answering one request
at a time (max_batch_size 1), side by side in one run, on loopback.

    python benchmarks/serve_throughput.py [--requests 64]

Goal: at concurrency 32, batching gives at least 3x the throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402

from radlab.config import ModelConfig, parse_experiment  # noqa: E402
from radlab.data.dataset import training_texts  # noqa: E402
from radlab.data.synthetic import draw_findings, render  # noqa: E402
from radlab.formats.tokenizer import train_tokenizer  # noqa: E402
from radlab.model.build import build_model  # noqa: E402
from radlab.model.checkpoint import save_checkpoint  # noqa: E402
from radlab.serve.app import build_app  # noqa: E402


def images(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(render(draw_findings(rng), 64, "PA", rng)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


async def load(url: str, payloads: list[bytes], concurrency: int) -> tuple[float, float, float]:
    gate = asyncio.Semaphore(concurrency)
    latencies = []

    async with httpx.AsyncClient(timeout=120) as client:
        async def one(data: bytes) -> None:
            async with gate:
                start = time.perf_counter()
                reply = await client.post(f"{url}/v1/reports", files={"image": ("x.png", data)})
                reply.raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in payloads))
        elapsed = time.perf_counter() - start
    return len(payloads) / elapsed, float(np.percentile(latencies, 50)) * 1000, float(np.percentile(latencies, 99)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        experiment = parse_experiment({"name": "bench", "data": {"synthetic": {
            "root": f"{tmp}/synthetic", "n_train": 200, "n_val": 1, "n_test": 1}}}, "bench")
        tokenizer = train_tokenizer(training_texts(experiment.data), Path(tmp) / "tokenizer")
        config = ModelConfig.model_validate({"preset": "tiny"})
        folder = save_checkpoint(Path(tmp) / "ckpt", build_model(config, tokenizer), tokenizer, config, None,
                                 {"stage": "bench", "step": 0})
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        serve.start(http_options={"host": "127.0.0.1", "port": 8799})
        common = {"model": str(folder), "max_new_tokens": args.max_new_tokens, "batch_wait_timeout_s": 0.01}
        serve.run(build_app({**common, "max_batch_size": 32}), name="batched", route_prefix="/batched")
        serve.run(build_app({**common, "max_batch_size": 1}), name="single", route_prefix="/single")
        payloads = images(args.requests)
        rows = {}
        for concurrency in (1, 8, 32):
            for name in ("single", "batched"):
                asyncio.run(load(f"http://127.0.0.1:8799/{name}", payloads[:4], concurrency))  # warm-up
                rows[name, concurrency] = asyncio.run(load(f"http://127.0.0.1:8799/{name}", payloads, concurrency))
        serve.shutdown()
        ray.shutdown()
    print(f"{args.requests} requests per cell, tiny model, {args.max_new_tokens} new tokens max, 1 CPU replica")
    print(f"{'concurrency':>11} | {'one at a time: rps  p50  p99 (ms)':>36} | {'batched: rps  p50  p99 (ms)':>30} | ratio")
    for concurrency in (1, 8, 32):
        s, b = rows["single", concurrency], rows["batched", concurrency]
        print(f"{concurrency:>11} | {s[0]:12.1f} {s[1]:9.0f} {s[2]:9.0f} | {b[0]:12.1f} {b[1]:7.0f} {b[2]:7.0f} | {b[0] / s[0]:5.2f}x")
    ratio = rows["batched", 32][0] / rows["single", 32][0]
    print(f"goal at concurrency 32: >= 3x  ({'met' if ratio >= 3 else 'NOT met'}: {ratio:.2f}x)")


if __name__ == "__main__":
    main()
