"""Decoding and resizing radiographs as a Ray Data pipeline: images are read, decoded (DICOM, JPEG,
PNG) and resized by the tower's transform in parallel Ray tasks, block by block, so a
400K-image set streams through bounded memory. The pipeline either feeds Ray Train workers
directly (`data.stream: true`) or is written once as Parquet shards (`radlab data preprocess`).
An image that does not decode is a row with its error, counted, never a crash."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from radlab.formats.images import ImageError, ImageTransform, load_image

# Images per Ray Data task: each task costs ~20 ms of scheduling and block bookkeeping, as much as
# decoding a couple of radiographs, so tasks are large (256 x 518 px is a 69 MB block).
BATCH = 256
DECODE_THREADS = 2


def _decode(path: str, transform: ImageTransform) -> tuple[np.ndarray | None, str]:
    try:
        return transform.pixels(load_image(path)), ""
    except ImageError as err:
        return None, str(err)


def decode_batch(batch: dict[str, np.ndarray], transform: ImageTransform) -> dict[str, np.ndarray]:
    """A Ray Data batch of {index, image path} -> {index, pixels (n, size, size) uint8, error}.
    Images decode on DECODE_THREADS threads: Pillow releases the GIL while it decodes and resizes,
    so a task keeps a core busy while Ray Data moves the previous block."""
    paths = [str(p) for p in batch["image"]]
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        decoded = list(pool.map(_decode, paths, [transform] * len(paths)))
    pixels = np.zeros((len(paths), transform.size, transform.size), np.uint8)
    for i, (image, _) in enumerate(decoded):
        if image is not None:
            pixels[i] = image
    return {"index": batch["index"], "pixels": pixels, "error": np.array([e for _, e in decoded], dtype=object)}


def image_dataset(images: list[str], transform: ImageTransform, batch: int = BATCH):
    """The lazy Ray Dataset of `images` (paths), decoded and resized by `transform` in tasks of
    `batch` images; rows keep their list index."""
    import ray.data

    # Absolute: Ray Data's tasks do not run in the driver's working directory.
    items = [{"index": i, "image": str(Path(path).absolute())} for i, path in enumerate(images)]
    tasks, per_task = task_sizes(len(items), int(ray.cluster_resources().get("CPU", 1)), batch)
    return ray.data.from_items(items, override_num_blocks=min(tasks, 200)).map_batches(
        decode_batch, fn_kwargs={"transform": transform}, batch_size=per_task, batch_format="numpy")


def task_sizes(images: int, cores: int, batch: int = BATCH) -> tuple[int, int]:
    """(tasks, images per task): at most `batch` images per task, and a whole number of waves over
    the cores, so that no wave runs half empty (2,000 images on 2 cores: 8 tasks of 250, not 7 of
    256 and one of 208)."""
    cores = max(1, cores)
    tasks = cores * max(1, math.ceil(images / (cores * batch)))
    return tasks, max(1, math.ceil(images / tasks))


def streamed_batches(shard, dataset, micro_batch: int, pad_id: int, seed: int, epoch: int):
    """One epoch of collated training batches from a Ray Train worker's shard of `image_dataset`,
    shuffled locally by the training `seed` and the epoch; the text of each row comes from `dataset`
    (a ReportDataset over the same example list, with the same transform)."""
    from radlab.formats.batch import collate

    shuffle_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    for batch in shard.iter_batches(batch_size=micro_batch, batch_format="numpy",
                                    local_shuffle_buffer_size=4 * micro_batch, local_shuffle_seed=shuffle_seed):
        items = [None if error else dataset.item(int(index), dataset.transform.normalise(pixels))
                 for index, pixels, error in zip(batch["index"], batch["pixels"], batch["error"])]
        yield collate(items, pad_id)


def preprocess_folder(folder: Path, image_root: Path, transform: ImageTransform, out: Path) -> dict:
    """Write the images of every split manifest (each image once, however many records name it),
    decoded and resized by `transform`, as Parquet shards under `out/<split>/` with the columns image (the path as
    the manifest writes it), pixels and error; and a summary of what did not decode."""
    from pyarrow import dataset as pads

    from radlab.data.dataset import read_manifest
    from radlab.formats.prompts import SPLIT_FILES

    summary: dict = {"size": transform.size, "resize": transform.resize, "splits": {}, "unreadable_examples": []}
    for split, file in SPLIT_FILES.items():
        if not (folder / file).is_file():
            continue
        images = np.array(sorted({r["image"] for r in read_manifest(folder / file)}), dtype=object)
        if not len(images):
            continue

        def named(batch: dict[str, np.ndarray], images=images) -> dict[str, np.ndarray]:
            return {"image": images[batch["index"]], "pixels": batch["pixels"], "error": batch["error"]}

        target = (out / split).absolute()
        image_dataset([image_root / image for image in images], transform).map_batches(
            named, batch_format="numpy").write_parquet(str(target))
        errors = [e for e in pads.dataset(str(target), format="parquet").to_table(columns=["error"])
                  .column("error").to_pylist() if e]
        summary["splits"][split] = {"images": len(images), "unreadable": len(errors)}
        summary["unreadable_examples"] += errors[: 5 - len(summary["unreadable_examples"])]
    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocess_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
