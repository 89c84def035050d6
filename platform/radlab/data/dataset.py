"""LLaVA-Rad-style records: reading manifests, mixing sources, and batching for training and
generation. A record is `{id, image, generate_method, indication, view, chexpert_labels,
conversations: [{from: human, value: "<image>\\n..."}, {from: gpt, value: findings}]}`."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from radlab.config import DataConfig, Experiment
from radlab.data import synthetic
from radlab.errors import RadlabError
from radlab.formats.images import ImageError, ImageTransform, load_image
from radlab.formats.prompts import SPLIT_FILES, Encoded, encode_example

log = logging.getLogger(__name__)
METHODS = {"rule": "rule-based", "llm": "gpt4"}
ID_BYTES = 36  # a token id in a Python list: its pointer and its int object


class DataError(RadlabError, ValueError):
    """A manifest or record that cannot be used; the message names the file and line."""


@dataclass
class Example:
    id: str
    image: Path
    human: str
    findings: str
    indication: str
    view: str
    generate_method: str
    labels: frozenset[str] = frozenset()  # the CheXpert observations marked positive
    patient: str = ""  # studies of one patient stay on one side of every split


# MIMIC-CXR's image paths name the patient: files/p10/p10000032/s50414267/<dicom>.jpg
_MIMIC_PATIENT = re.compile(r"(?:^|/)p\d{2}/(p\d+)/")


def patient_of(record: dict) -> str:
    """The record's patient: its patient_id, else the patient folder of a MIMIC-CXR path, else its id."""
    if record.get("patient_id"):
        return str(record["patient_id"])
    found = _MIMIC_PATIENT.search(str(record.get("image", "")))
    return found.group(1) if found else str(record.get("id", ""))


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; errors name the file and line (bad JSON, non-UTF-8 bytes)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    records = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return records


def read_manifest(path: Path) -> list[dict]:
    """Records from a JSON array (as LLaVA-Rad releases them) or a JSONL file."""
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    with open(path, "rb") as fh:
        array = fh.read(4096).lstrip().startswith(b"[")
    if array:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
    return read_jsonl(path)


def to_example(record: dict, image_root: Path, where: str) -> Example:
    try:
        turns = record["conversations"]
        human = next(t["value"] for t in turns if t["from"] == "human")
        findings = next(t["value"] for t in turns if t["from"] == "gpt")
        return Example(
            id=str(record["id"]),
            image=image_root / record["image"],
            human=human,
            findings=findings.strip(),
            indication=record.get("indication") or "",
            view=record.get("view") or "",
            generate_method=record.get("generate_method") or "rule-based",
            labels=frozenset(name for name, value in (record.get("chexpert_labels") or {}).items() if value == 1.0),
            patient=patient_of(record),
        )
    except (KeyError, StopIteration, TypeError) as err:
        raise DataError(f"{where}: record lacks {err} (needs id, image, conversations human+gpt)") from None


def left_out_because(example: Example, views: list[str], methods: list[str] | None) -> str | None:
    """Why a record is not an example of a run, or None: the one rule every reader applies."""
    if not example.findings:
        return "empty findings"
    if example.view and example.view not in views:
        return f"view {example.view} not in data.views"
    if methods and example.generate_method not in methods:
        return f"text {example.generate_method} not in the source's text"
    return None


def load_examples(manifest: Path, image_root: Path | None, views: list[str],
                  methods: list[str] | None = None, left_out: Counter | None = None) -> list[Example]:
    """Examples of one manifest with a non-empty findings text, of the wanted views and methods;
    `left_out` counts the other records by their reason."""
    root = image_root or manifest.parent
    out = []
    for i, record in enumerate(read_manifest(manifest)):
        example = to_example(record, root, f"{manifest} record {i}")
        reason = left_out_because(example, views, methods)
        if reason is None:
            out.append(example)
        elif left_out is not None:
            left_out[reason] += 1
    return out


def synthetic_root(config: DataConfig) -> Path:
    s = config.synthetic
    return synthetic.generate(s.root, s.n_train, s.n_val, s.n_test, s.image_size, s.seed)


def is_carved_out(patient: str, config: DataConfig) -> bool:
    """Whether a training patient belongs to the validation carve-out (seeded, stable across runs)."""
    digest = hashlib.sha256(f"{config.val_seed}:{patient}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x100000000 < config.val_fraction


def split_examples(config: DataConfig, split: str) -> list[Example]:
    """The examples of a split ('train', 'val' or 'test'). The test split is the eval manifest and
    nothing else reads it; 'val' is the val manifest or, without one, the carve-out of the training
    patients, which 'train' then leaves out. A mixture's weights scale each source (0.5 takes every
    other record, 2.0 repeats it twice) so a mixture is deterministic."""
    if split not in SPLIT_FILES:
        raise DataError(f"unknown split {split!r} (train, val or test)")
    if config.synthetic is not None:
        root = synthetic_root(config)
        return load_examples(root / SPLIT_FILES[split], root, config.views)
    if split == "test":
        return load_examples(config.eval_manifest, config.image_root, config.views)
    if split == "val" and config.val_manifest is not None:
        return load_examples(config.val_manifest, config.image_root, config.views)
    carve = config.val_manifest is None
    out: list[Example] = []
    for source in config.mixture:
        examples = load_examples(source.manifest, source.image_root or config.image_root, config.views,
                                 [METHODS[t] for t in source.text])
        if carve:
            examples = [e for e in examples if is_carved_out(e.patient, config) == (split == "val")]
        if split == "val":
            out += examples
            continue
        whole, part = divmod(source.weight, 1.0)
        out += examples * int(whole) + examples[: round(part * len(examples))]
    if split == "val":  # a record reached through two sources (one manifest named twice) is validated once
        seen: set[str] = set()
        out = [e for e in out if not (e.id in seen or seen.add(e.id))]
    return out


def training_texts(config: DataConfig) -> list[str]:
    """The texts a local tokenizer is trained on: every findings section, and the distinct prompts
    repeated in proportion so that their words become single tokens too."""
    examples = split_examples(config, "train")
    prompts = sorted({e.human for e in examples})
    return [e.findings for e in examples] + prompts * max(1, len(examples) // (20 * len(prompts)))


class ImageDataset(Dataset):
    """Examples with their images; an image that will not decode yields None, which the collate
    functions drop and count. What an example costs to prepare (its decoded image, its encoding) is
    kept in memory up to `cache_bytes`, first come first kept, so that the epochs after the first
    skip that work for the examples kept. (A dict, not functools' caches: those bound entries, not
    bytes, and an image's bytes depend on the tower's size.)"""

    def __init__(self, examples: list[Example], transform: ImageTransform, cache_bytes: int = 0):
        self.examples = examples
        self.transform = transform
        self.cache_left = cache_bytes
        self.decoded: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def keeps(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit in the cache; if so, they are counted against it."""
        if nbytes > self.cache_left:
            return False
        self.cache_left -= nbytes
        return True

    def pixels(self, index: int) -> torch.Tensor | None:
        decoded = self.decoded.get(index)
        if decoded is None:
            example = self.examples[index]
            try:
                decoded = self.transform.pixels(load_image(example.image))
            except ImageError as err:
                log.warning("skipping example %s: %s", example.id, err)
                return None
            if self.keeps(decoded.nbytes):
                self.decoded[index] = decoded
        return self.transform.normalise(decoded)


class ReportDataset(ImageDataset):
    """(image, prompt, findings) examples encoded for one stage's template."""

    def __init__(self, examples: list[Example], tokenizer, template: str, num_image_tokens: int,
                 transform: ImageTransform, max_length: int, cache_bytes: int = 0):
        super().__init__(examples, transform, cache_bytes)
        self.tokenizer = tokenizer
        self.template = template
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.encoded: dict[int, Encoded] = {}

    def __getitem__(self, index: int) -> dict | None:
        pixels = self.pixels(index)
        return None if pixels is None else self.item(index, pixels)

    def item(self, index: int, pixels: torch.Tensor) -> dict:
        """Example `index` with its already decoded image."""
        encoded = self.encoded.get(index)
        if encoded is None:
            example = self.examples[index]
            encoded = encode_example(self.tokenizer, self.template, example.human, example.findings,
                                     self.num_image_tokens, self.max_length)
            if self.keeps(ID_BYTES * (len(encoded.input_ids) + len(encoded.labels))):
                self.encoded[index] = encoded
        return {"input_ids": encoded.input_ids, "labels": encoded.labels, "pixel_values": pixels,
                "truncated": encoded.truncated}


def stage_dataset(experiment: Experiment, tokenizer, split: str, template: str,
                  transform: ImageTransform) -> ReportDataset:
    """A split's examples encoded for `template`, their images by the tower's `transform`, kept in
    memory up to `data.cache_mb`."""
    return ReportDataset(split_examples(experiment.data, split), tokenizer, template,
                         experiment.model.vision.num_image_tokens, transform, experiment.data.max_length,
                         experiment.data.cache_mb * 2**20)


def manifest_digest(config: DataConfig) -> str:
    """A hash of the training manifests' bytes: logged so a run names the exact data it saw, and part
    of each stage's key, so a manifest edited in place is trained on afresh. Read once per version of
    the files (their sizes and modification times), as a run asks for it several times."""
    paths = ([synthetic_root(config) / SPLIT_FILES["train"]] if config.synthetic
             else [Path(s.manifest) for s in config.mixture])
    versions = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: manifest not found")
        stat = path.stat()
        versions.append((str(path), stat.st_size, stat.st_mtime_ns))
    return _bytes_digest(tuple(versions))


@functools.lru_cache(maxsize=16)
def _bytes_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _size, _modified in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def images_digest(config: DataConfig) -> str:
    """A hash of the training images' paths and sizes, part of each stage's key: images written again
    at the same paths (exported anew at another resolution, windowing or quality, which changes their
    sizes) are trained on afresh, while the same set copied elsewhere and mounted at the same path
    (new modification times) is reused. Read once per process for each version of the manifests."""
    return _sizes_digest(manifest_digest(config), config.model_dump_json())


@functools.lru_cache(maxsize=16)
def _sizes_digest(manifests: str, config_json: str) -> str:
    """The digest of the training images' paths and sizes. `manifests`, the manifests' digest, is
    there for the cache: a manifest edited in place is read again."""
    paths = sorted({str(e.image) for e in split_examples(DataConfig.model_validate_json(config_json), "train")})

    def sizes_of(chunk: list[str]) -> list[int | None]:
        sizes = []
        for path in chunk:
            try:
                sizes.append(Path(path).stat().st_size)
            except OSError:
                sizes.append(None)  # a missing image is read, and counted as unreadable, by training itself
        return sizes

    # Threads, each over a chunk: on a shared file system each size is a round trip to the server.
    with ThreadPoolExecutor(32) as pool:
        sizes = [size for chunk in pool.map(sizes_of, [paths[i:i + 1024] for i in range(0, len(paths), 1024)])
                 for size in chunk]
    return hashlib.sha256(json.dumps(list(zip(paths, sizes))).encode()).hexdigest()[:16]
