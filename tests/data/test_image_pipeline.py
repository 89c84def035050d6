"""The Ray Data image pipeline on a real Ray runtime: decoding in Ray tasks, Parquet shards, and
streaming into a Ray Train run."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from radlab.config import parse_experiment
from radlab.data.dataset import ReportDataset, load_examples
from radlab.data.image_pipeline import image_dataset, preprocess_folder, streamed_batches, task_sizes
from radlab.data.ingest import mimic
from radlab.data.ingest.common import ingest
from radlab.formats.batch import collate
from radlab.formats.images import SIGLIP_MEAN, SIGLIP_STD, ImageTransform, load_image
from radlab.model.checkpoint import load_train_state
from radlab.train.stages import StageJob, run_stage

from ..conftest import experiment_dict
from tests.data.ingest.layouts import mimic as mimic_layout


def test_pipeline_decodes_like_the_plain_loader_and_keeps_errors(ray_session, synthetic_root, tmp_path):
    paths = sorted((synthetic_root / "images" / "train").glob("*.png"))[:20]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = sorted(image_dataset([*map(str, paths), str(broken)], ImageTransform(32)).take_all(), key=lambda r: r["index"])
    assert [r["index"] for r in rows] == list(range(21))
    for row, path in zip(rows, paths):
        assert row["error"] == "" and np.array_equal(row["pixels"], ImageTransform(32).pixels(load_image(path)))
    assert "broken.png: not a readable" in rows[-1]["error"]


def test_streamed_batches_equal_the_dataloader_batches(ray_session, synthetic_root, tokenizer):
    examples = load_examples(synthetic_root / "train.jsonl", synthetic_root, ["AP", "PA"])[:8]
    transform = ImageTransform(64, SIGLIP_MEAN, SIGLIP_STD)  # a tower's own statistics reach the streamed batches
    dataset = ReportDataset(examples, tokenizer, "vicuna_v1", 16, transform, 512)
    shard = image_dataset([str(e.image) for e in examples], transform).iterator()
    streamed = list(streamed_batches(shard, dataset, 8, tokenizer.pad_token_id, seed=0, epoch=0))
    assert len(streamed) == 1
    order = streamed[0]["input_ids"].tolist()
    direct = collate([dataset[i] for i in range(8)], tokenizer.pad_token_id)
    # The same examples (shuffled locally): match them by their token rows.
    index = [direct["input_ids"].tolist().index(row) for row in order]
    assert sorted(index) == list(range(8))
    assert torch.allclose(streamed[0]["pixel_values"],
                          direct["pixel_values"][index])


def test_a_streamed_epoch_repeats_batch_for_batch(ray_session, synthetic_root, tokenizer):
    """A resumed streamed stage skips the batches it already trained on: right only when each
    worker's shard (split as Ray Train splits it, order preserved) yields the same batches in the
    same order every time the epoch is read again, however its decode tasks finish; another epoch or
    training seed shuffles otherwise."""
    from concurrent.futures import ThreadPoolExecutor

    from ray.data import DataContext

    examples = load_examples(synthetic_root / "train.jsonl", synthetic_root, ["AP", "PA"])[:40]
    dataset = ReportDataset(examples, tokenizer, "vicuna_v1", 16, ImageTransform(64), 512)
    options = DataContext.get_current().execution_options
    kept, options.preserve_order = options.preserve_order, True

    def read(seed: int, epoch: int) -> list[list[torch.Tensor]]:
        images = [str(e.image) for e in examples]
        shards = image_dataset(images, ImageTransform(32), batch=4).streaming_split(2, equal=True)  # tasks of at most 4 images
        with ThreadPoolExecutor(2) as pool:  # a split streams only while every worker reads
            return list(pool.map(lambda shard: [b["input_ids"] for b in streamed_batches(
                shard, dataset, 4, tokenizer.pad_token_id, seed, epoch)], shards))

    try:
        first, again, next_epoch, other_seed = read(0, 0), read(0, 0), read(0, 1), read(1, 0)
    finally:
        options.preserve_order = kept
    assert [len(worker) for worker in first] == [5, 5]
    assert all(torch.equal(a, b) for w1, w2 in zip(first, again) for a, b in zip(w1, w2))
    for other in (next_epoch, other_seed):
        assert not all(torch.equal(a, b) for w1, w2 in zip(first, other) for a, b in zip(w1, w2))


def test_preprocess_writes_shards_and_counts_unreadable_images(ray_session, tmp_path):
    jpg, reports = mimic_layout(tmp_path / "mimic")
    ingest(mimic.read(jpg, reports, ["AP", "PA"]), tmp_path / "ds", "mimic-cxr")
    (jpg / "files/p10/p10000032/s53189527/d3.jpg").write_bytes(b"\xff\xd8 truncated")
    summary = preprocess_folder(tmp_path / "ds", jpg, ImageTransform(48), tmp_path / "shards")
    assert summary["splits"] == {"train": {"images": 2, "unreadable": 1}, "test": {"images": 1, "unreadable": 0}}
    assert "d3.jpg" in summary["unreadable_examples"][0]
    table = pq.read_table(tmp_path / "shards" / "train")
    good = next(r for r in table.to_pylist() if r["image"].endswith("d1.jpg"))
    assert np.array_equal(np.asarray(good["pixels"]), ImageTransform(48).pixels(load_image(jpg / good["image"])))
    assert json.loads((tmp_path / "shards" / "preprocess_summary.json").read_text())["size"] == 48


def test_a_tiny_stage_trains_from_the_streamed_pipeline(ray_session, synthetic_root, tokenizer_files, tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, data={"stream": True}), "t")
    checkpoint = run_stage(StageJob(experiment, "stage1", tokenizer_files)).checkpoint
    with checkpoint.as_directory() as folder:
        state = load_train_state(Path(folder))
    assert state["step"] == 4 and state["samples"] == 4 * 8 and state["skipped"] == 0


def test_tasks_fill_the_cores_in_whole_waves():
    assert task_sizes(2000, 2, 256) == (8, 250)
    assert task_sizes(100, 16, 256) == (16, 7)
    assert task_sizes(10, 2, 4) == (4, 3)
    assert task_sizes(0, 2, 256) == (2, 1)
