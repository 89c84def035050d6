"""The Ray Data image pipeline against a plain loop, side by side in one run.

    python benchmarks/data_pipeline.py [--images 2000] [--side 1024] [--memory-images 5000]

1. Speed: the same radiograph-sized JPEGs decoded and padded/resized to 518 px (BiomedCLIP-CXR's
   input) by a single-process loop, by a thread pool with a thread per core (Pillow releases the
   GIL: the best plain baseline) and by the Ray Data pipeline on every core, alternating over
   rounds. Goals on 2 cores: the pipeline at least 1.9x the single process and at least the
   thread pool's rate. Then each side's CPU time per image, in this process and in Ray's
   processes, says where the cores went.
2. Memory: a set whose decoded images (full resolution, as float32 the way a naive loader keeps
   them) are several times this machine's RAM streams through the pipeline; the peak resident
   memory of the driver and every Ray process stays bounded.
The files are hard links to a few distinct images: decoding cost does not depend on content, and
the set costs no disk.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402
from common import alternate, report  # noqa: E402
from PIL import Image  # noqa: E402

from radlab.data.image_pipeline import BATCH, image_dataset  # noqa: E402
from radlab.formats.images import ImageTransform, load_image  # noqa: E402
from radlab.runtime import start_embedded_ray  # noqa: E402

SIZE = 518


def make_images(folder: Path, count: int, side: int) -> list[Path]:
    """`count` JPEG paths: 8 distinct radiograph-like images, hard-linked."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    distinct = []
    for i in range(8):
        body = 200 * np.exp(-((xx - 0.5) ** 2 / 0.08 + (yy - 0.5) ** 2 / 0.15))
        noise = rng.normal(0, 12, (side, side))
        path = folder / f"distinct{i}.jpg"
        Image.fromarray(np.clip(body + noise + 20, 0, 255).astype(np.uint8)).save(path, quality=90)
        distinct.append(path)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            os.link(distinct[i % 8], path)
        paths.append(path)
    return paths


class PeakMemory:
    """Samples the resident memory of this process and all its descendants (the Ray processes)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds of this process, of its descendants: the Ray processes) so far."""
    me = psutil.Process()
    own = sum(me.cpu_times()[:2])
    others = 0.0
    for process in me.children(recursive=True):
        try:
            others += sum(process.cpu_times()[:2])
        except psutil.Error:
            pass
    return own, others


def cpu_per_image(side, paths: list[Path]) -> tuple[float, float]:
    """(ms of CPU per image in this process, in the Ray processes) while `side` runs over `paths`."""
    before = cpu_seconds()
    side(paths)
    after = cpu_seconds()
    return tuple(1000 * (b - a) / len(paths) for a, b in zip(before, after))


def plain_loop(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        ImageTransform(SIZE).pixels(load_image(path))
    return len(paths) / (time.perf_counter() - start)


def thread_pool(paths: list[Path]) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for _ in pool.map(lambda path: ImageTransform(SIZE).pixels(load_image(path)), paths):
            pass
    return len(paths) / (time.perf_counter() - start)


def pipeline(paths: list[Path]) -> tuple[float, int]:
    start = time.perf_counter()
    rows = 0
    for batch in image_dataset([str(p) for p in paths], ImageTransform(SIZE)).iter_batches(batch_size=64, batch_format="numpy"):
        rows += len(batch["index"])
    return rows / (time.perf_counter() - start), rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-images", type=int, default=5000)
    parser.add_argument("--memory-side", type=int, default=2048)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    start_embedded_ray(cores, log_to_driver=False)  # as radlab starts its own Ray
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "speed", args.images, args.side)
        # Warm: Ray Data's workers start and import the decoders (once per worker, as in a long
        # training run), and the files enter the page cache.
        pipeline(paths[: 4 * BATCH])
        plain_loop(paths[:32])
        def ray_data() -> float:
            rate, rows = pipeline(paths)
            assert rows == len(paths)
            return rate

        rates = alternate({"single process": lambda: plain_loop(paths), "thread pool": lambda: thread_pool(paths),
                           "Ray Data": ray_data}, args.rounds)
        print(f"decode + resize to {SIZE}px, {args.images} JPEGs of {args.side}x{args.side}, {cores} cores")
        report("data_pipeline", "images/s decoded and resized", rates["Ray Data"], rates["single process"],
               "single process", "images/s", 1.9)
        report("data_pipeline", "images/s decoded and resized", rates["Ray Data"], rates["thread pool"],
               f"thread pool of {cores}", "images/s", 1.0)
        # Where the cores go: the same decoding costs the same CPU on every side, so what the
        # pipeline spends beyond the single loop is its own (Ray Data's driver side, the raylet,
        # Ray's and Ray Data's actors).
        for name, side in (("single process", plain_loop), ("thread pool", thread_pool), ("Ray Data", pipeline)):
            own, ray_side = cpu_per_image(side, paths)
            print(f"  CPU per image, {name}: {own + ray_side:.2f} ms (this process {own:.2f}, Ray's processes "
                  f"{ray_side:.2f})", flush=True)
        if not args.memory_images:
            ray.shutdown()
            return

        big = make_images(Path(tmp) / "memory", args.memory_images, args.memory_side)
        decoded_u8 = args.memory_images * args.memory_side**2
        ram = psutil.virtual_memory().total
        with PeakMemory() as memory:
            rate, rows = pipeline(big)
        assert rows == len(big)
        print(f"streaming {rows} JPEGs of {args.memory_side}x{args.memory_side} at {rate:.1f} images/s")
        print(f"  decoded size: {decoded_u8 / 1e9:.1f} GB as uint8, {4 * decoded_u8 / 1e9:.1f} GB as float32 "
              f"({4 * decoded_u8 / ram:.1f}x this machine's {ram / 1e9:.0f} GB RAM)")
        print(f"  peak resident memory of driver + Ray processes: {memory.peak / 1e9:.2f} GB "
              f"({4 * decoded_u8 / memory.peak:.0f}x less than the float32 set)")
    ray.shutdown()


if __name__ == "__main__":
    main()
