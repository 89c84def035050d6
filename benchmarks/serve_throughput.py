"""Serving throughput against the best plain baseline: reports per second of `radlab serve` (one
CPU replica, adaptive batching up to 32) at concurrency 1, 8 and 32 against the same model calling
`generate` in-process on batches of the same size with as many threads as the replica has CPUs
(PNG decoding included on both sides); the two sides alternate over rounds.

    python benchmarks/serve_throughput.py [--requests 64] [--rounds 3] [--replica-cpus 1] [--proxy]

Goals: at concurrency 32, at least 80% of plain `generate` at batch 32; a lone request's p50 at
most 70 ms.

Serve runs as `radlab serve` runs it on a Ray of its own: each replica answers HTTP itself (Ray
Serve's throughput-optimized mode with direct ingress, `radlab.serve.deploy.throughput_serving_env`);
`--proxy` puts Serve's HTTP proxy in front of the replicas instead, as on a cluster.

At concurrency 32 a third side runs: the HTTP path alone, a Serve deployment on the same route
and CPUs that reads the upload and returns a fixed report without decoding or generating. Its rate
is what the HTTP path (the proxy where there is one), the replica's request handling and this load
generator cost per request on this machine, beside generation.
"""

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from common import alternate, check, report  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402

from radlab.config import ModelConfig, parse_experiment  # noqa: E402
from radlab.data.dataset import training_texts  # noqa: E402
from radlab.data.synthetic import draw_findings, render  # noqa: E402
from radlab.formats.images import ImageTransform, decode_image  # noqa: E402
from radlab.formats.prompts import findings_prompt  # noqa: E402
from radlab.formats.tokenizer import train_tokenizer  # noqa: E402
from radlab.model.build import build_model  # noqa: E402
from radlab.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from radlab.model.generation import generate_batch, inference_model  # noqa: E402
from radlab.model.sampling import Sampling  # noqa: E402
from radlab.runtime import start_embedded_ray  # noqa: E402
from radlab.serve.app import report_app  # noqa: E402
from radlab.serve.deploy import throughput_serving_env  # noqa: E402

echo_api = FastAPI()


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(echo_api)
class HttpPathOnly:
    """The report route without the model: the upload is read, a fixed report returned. (FastAPI
    reads the handler's annotations at run time, so this module does not postpone them.)"""

    @echo_api.post("/v1/reports")
    async def reports(self, request: Request) -> dict:
        upload = (await request.form())["image"]
        await upload.read()
        return {"findings": "No acute cardiopulmonary process.", "model": "none"}


def images(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(render(draw_findings(rng), 64, "PA", rng)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


async def load(url: str, payloads: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """(reports/s, latencies in ms) with `concurrency` requests in flight, sent as multipart uploads.
    The load generator shares the machine's cores with the server, so it is aiohttp (its HTTP parser
    is C, and it comes with Ray Serve): httpx's pure-Python client took a tenth of the served side's
    rate here, and capped the HTTP path alone at a quarter of what it answers."""
    gate = asyncio.Semaphore(concurrency)
    latencies = []

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=120)) as client:
        async def one(data: bytes) -> None:
            async with gate:
                form = aiohttp.FormData()
                form.add_field("image", data, filename="x.png")
                start = time.perf_counter()
                async with client.post(f"{url}/v1/reports", data=form) as reply:
                    reply.raise_for_status()
                    await reply.read()
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in payloads))
        elapsed = time.perf_counter() - start
    return len(payloads) / elapsed, latencies


def plain_generate(model, tokenizer, payloads: list[bytes], batch: int, max_new_tokens: int) -> float:
    """Reports/s of the model called directly on batches of `batch` decoded images."""
    start = time.perf_counter()
    for first in range(0, len(payloads), batch):
        chunk = payloads[first:first + batch]
        pixels = [ImageTransform(64)(decode_image(p, "x.png")) for p in chunk]
        generate_batch(model, tokenizer, pixels, [findings_prompt("")] * len(chunk), "vicuna_v1",
                       Sampling(max_new_tokens))
    return len(payloads) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--replica-cpus", type=int, default=1)
    parser.add_argument("--batch-wait", type=float, default=0.1, help="batch_wait_timeout_s: the batch window's ceiling")
    parser.add_argument("--batch-idle", type=float, default=0.01, help="batch_idle_s: a batch goes after this gap")
    parser.add_argument("--proxy", action="store_true", help="requests through Serve's HTTP proxy, as on a cluster")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        experiment = parse_experiment({"name": "bench", "data": {"synthetic": {
            "root": f"{tmp}/synthetic", "n_train": 200, "n_val": 1, "n_test": 1}}}, "bench")
        tokenizer = train_tokenizer(training_texts(experiment.data), Path(tmp) / "tokenizer")
        config = ModelConfig.model_validate({"preset": "tiny"})
        folder = save_checkpoint(Path(tmp) / "ckpt", build_model(config, tokenizer), tokenizer, config, None,
                                 {"stage": "bench", "step": 0, "template": "vicuna_v1"})
        loaded = load_checkpoint(folder)
        model = inference_model(loaded.model, torch.device("cpu"), torch.float32)
        torch.set_num_threads(args.replica_cpus)
        # The two applications' replicas answer on 8799 and 8800, in the order they deploy, or the proxy on 8799.
        env = {} if args.proxy else throughput_serving_env(8799, replicas=2)
        start_embedded_ray(os.cpu_count(), env, log_to_driver=False)  # as `radlab serve` starts it
        serve.start(http_options={"host": "127.0.0.1", "port": 8799 if args.proxy else 0})
        serve.run(report_app({"model": str(folder), "max_new_tokens": args.max_new_tokens, "max_batch_size": 32,
                             "batch_wait_timeout_s": args.batch_wait, "batch_idle_s": args.batch_idle},
                            {"num_cpus": args.replica_cpus}),
                  name="batched", route_prefix="/batched")
        serve.run(HttpPathOnly.options(ray_actor_options={"num_cpus": args.replica_cpus}).bind(), name="http-only",
                  route_prefix="/http-only")
        url, http_only = ("http://127.0.0.1:8799/batched", "http://127.0.0.1:8799/http-only") if args.proxy else \
            ("http://127.0.0.1:8799/batched", "http://127.0.0.1:8800/http-only")
        payloads = images(args.requests)
        asyncio.run(load(url, payloads[:8], 8))  # warm-up
        plain_generate(model, loaded.tokenizer, payloads[:8], 8, args.max_new_tokens)
        print(f"{args.requests} requests per cell, tiny model, {args.max_new_tokens} new tokens, "
              f"{args.replica_cpus} CPU replica {'behind the proxy' if args.proxy else 'answering itself'} vs plain "
              f"generate on {args.replica_cpus} thread(s)")
        behind = ", behind Serve's HTTP proxy" if args.proxy else ""
        latencies: dict[int, list[float]] = {}
        for concurrency in (1, 8, 32):
            def served(c=concurrency) -> float:
                rate, times = asyncio.run(load(url, payloads, c))
                latencies.setdefault(c, []).append(statistics.median(times))
                return rate

            sides = {"served": served, "plain": lambda c=concurrency: plain_generate(
                model, loaded.tokenizer, payloads, c, args.max_new_tokens)}
            if concurrency == 32:
                sides["HTTP path alone"] = lambda: asyncio.run(load(http_only, payloads, 32))[0]
            rates = alternate(sides, args.rounds)
            report("serve_throughput", f"reports/s at concurrency {concurrency}{behind}", rates["served"],
                   rates["plain"], f"plain generate at batch {concurrency}", "reports/s",
                   0.8 if concurrency == 32 else None)
        report("serve_throughput",
               f"requests/s at concurrency 32 of the HTTP path alone (no decoding, no model){behind}",
               rates["HTTP path alone"], rates["plain"], "plain generate at batch 32", "requests/s", None)
        check("serve_throughput", f"a lone request's p50 latency{behind}", latencies[1], "ms", 70,
              higher_is_better=False)
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
