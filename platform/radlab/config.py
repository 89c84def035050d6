"""The experiment YAML: its schema, loading, `--set` overrides and hardware checks.

Every section rejects unknown keys. Errors carry the file (or the override) and the field path,
one line each, so `radlab validate` can print them as they are.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import ipaddress
import json
import os
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from radlab.errors import RadlabError
from radlab.metric_specs import METRICS
from radlab.presets import PRESETS


class ConfigError(RadlabError, ValueError):
    """A YAML or override that does not describe a valid experiment."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _home(cls, value: Any) -> Any:
        """A path starting with `~` is under the home folder, as in a shell (the folders named as
        text, which may also be hub ids or URLs, are expanded by `with_absolute_paths`)."""
        return value.expanduser() if isinstance(value, Path) else value


class SyntheticData(Section):
    root: Path = Path("data/synthetic")
    n_train: int = Field(3000, ge=1)
    n_val: int = Field(100, ge=1)
    n_test: int = Field(200, ge=1)
    image_size: int = Field(64, ge=32, le=1024)
    seed: int = 0


class DataSource(Section):
    name: str
    manifest: Path
    weight: float = Field(1.0, gt=0)
    text: list[Literal["rule", "llm"]] = ["rule", "llm"]
    image_root: Path | None = Field(None, description="where this source's image paths start (default: data.image_root)")


class DataConfig(Section):
    synthetic: SyntheticData | None = None
    mixture: list[DataSource] = []
    eval_manifest: Path | None = Field(None, description="the test set: read only by evaluation on eval.split test")
    val_manifest: Path | None = Field(None, description="the validation set (checkpoint losses, sweep selection); "
                                      "None: a seeded patient-level carve-out of the training manifests")
    val_fraction: float = Field(0.02, gt=0, lt=0.5, description="the share of training patients carved out for "
                                "validation when there is no val_manifest")
    val_seed: int = Field(0, description="the seed of that carve-out")
    image_root: Path | None = None
    views: list[Literal["AP", "PA", "LATERAL", "LL"]] = ["AP", "PA"]
    max_length: int = Field(2048, ge=16)
    stream: bool = Field(False, description="stages 1-2 decode images in a Ray Data pipeline streamed into the "
                         "workers (parallel, bounded memory) instead of a DataLoader inside each worker")
    cache_mb: int = Field(1024, ge=0, description="each training worker keeps the examples it has prepared "
                          "(decoded images, token ids) in memory up to this many MiB, so later epochs skip "
                          "that work; 0: none")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.synthetic is None) == (not self.mixture):
            raise ValueError("give exactly one of data.synthetic or data.mixture")
        if self.mixture and self.eval_manifest is None:
            raise ValueError("data.eval_manifest is required with data.mixture")
        if self.val_manifest is not None and self.eval_manifest is not None and (
                self.val_manifest.resolve() == self.eval_manifest.resolve()):
            raise ValueError(f"data.val_manifest is the test set {self.eval_manifest}: selecting on the test set "
                             "flatters every result; name a validation manifest or leave it empty for a carve-out")
        if self.mixture and self.eval_manifest is not None and any(
                s.manifest.resolve() == self.eval_manifest.resolve() for s in self.mixture):
            raise ValueError(f"data.mixture trains on the test set {self.eval_manifest}")
        return self


class VisionConfig(Section):
    kind: Literal["clip", "siglip", "vit", "dinov2", "open_clip"] = Field(
        "clip", description="vit / dinov2: a transformers ViT or DINOv2 (with LayerScale), the forms open_clip's "
        "timm towers are imported to (BiomedCLIP: vit; a DINOv2 trunk such as BiomedCLIP-CXR's: dinov2)")
    name: str | None = None
    path: str | None = None
    image_size: int = Field(64, ge=16)
    patch_size: int = Field(16, ge=1)
    hidden_size: int = Field(96, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=8)
    select_layer: int = -1
    frozen: bool = True
    resize: Literal["crop", "squash", "pad"] = Field(
        "crop", description="crop: the short side resized to image_size and the centre kept (open_clip's and "
        "transformers' CLIP transform, LLaVA-Rad's); squash: both sides resized to image_size (SigLIP's "
        "processor); pad: padded to a square with black first. A tower folder's preprocessor_config.json "
        "must agree")

    @model_validator(mode="after")
    def _shapes(self) -> VisionConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not -(self.layers + 1) <= self.select_layer <= self.layers:
            raise ValueError(f"select_layer {self.select_layer} is outside a {self.layers}-layer tower")
        return self

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class LanguageConfig(Section):
    path: str | None = None
    vocab_size: int = Field(512, ge=16, description="the BPE trained on the reports for a language model built "
                            "from this config; a pretrained model (path) brings its own tokenizer")
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    tie_embeddings: bool = True


class ModelConfig(Section):
    preset: Literal["tiny", "llava-rad-7b"] = "tiny"
    vision: VisionConfig = Field(default_factory=VisionConfig)
    projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    tokenizer: str | None = Field(None, description="a tokenizer folder or hub id; None trains one on the data")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        preset = value.get("preset", "tiny")
        if preset not in PRESETS:
            return value
        return deep_merge(PRESETS[preset], value)


class LoraConfig(Section):
    r: int = Field(64, ge=1)
    alpha: int = Field(128, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str = Field(
        r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        description="regex over module names; the default is every linear layer of the LLM but lm_head",
    )


Trainable = Literal["projector", "lora", "embeddings", "language", "vision"]


class StageConfig(Section):
    enabled: bool = True
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    lr: float = Field(1e-3, gt=0)
    global_batch: int = Field(32, ge=1)
    micro_batch: int = Field(8, ge=1)
    train: list[Trainable] = ["projector"]
    lora: LoraConfig | None = None
    template: Literal["plain", "vicuna_v1"] = "vicuna_v1"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    keep_last: int = Field(2, ge=1, description="checkpoints of the stage kept in ray.storage_path, the newest")
    val_examples: int = Field(64, ge=0, description="validation loss on this many val examples at each checkpoint "
                              "(the metric a sweep's ASHA scheduler reads); 0: none")
    gradient_checkpointing: bool = False
    log_every: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _lora_consistent(self) -> StageConfig:
        if "lora" in self.train and self.lora is None:
            raise ValueError("train lists 'lora' but the stage has no lora: {r, alpha, dropout} block")
        if self.lora is not None and "lora" not in self.train:
            raise ValueError("a lora block is given but 'lora' is not in train")
        if "lora" in self.train and "language" in self.train:
            raise ValueError("train lists both 'lora' and 'language': choose LoRA or full fine-tuning")
        return self


def _stage1_default() -> StageConfig:
    return StageConfig(lr=1e-3, global_batch=256, train=["projector"], template="plain")


def _stage2_default() -> StageConfig:
    return StageConfig(lr=1e-4, epochs=3, global_batch=64, train=["projector", "lora"], lora=LoraConfig())


class TextTowerConfig(Section):
    """Stage 0's text tower: a transformer over the report, pooled at its last token."""
    path: str | None = Field(None, description="a CLIP model folder whose text tower to start from")
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_length: int = Field(96, ge=8, description="the tower's context in tokens; longer reports are truncated")


class Stage0Config(Section):
    """Contrastive image-text training of the image tower (the BiomedCLIP-CXR step)."""
    enabled: bool = False
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    lr: float = Field(5e-4, gt=0)
    batch: int = Field(256, ge=2, description="the contrastive batch, spanning all workers")
    loss: Literal["clip", "siglip"] = Field("clip", description="clip: InfoNCE both ways; siglip: pairwise sigmoid")
    temperature: float = Field(0.07, gt=0, description="initial temperature (siglip: 0.1 is usual)")
    learn_temperature: bool = True
    projection_dim: int = Field(64, ge=4, description="the shared embedding size both towers project to")
    train: list[Literal["vision", "text"]] = ["vision", "text"]
    freeze_vision_layers: int = Field(0, ge=0, description="keep the patch embedding and the first N blocks frozen")
    text: TextTowerConfig = Field(default_factory=TextTowerConfig)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    keep_last: int = Field(2, ge=1, description="checkpoints of the stage kept in ray.storage_path, the newest")
    log_every: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _trains_something(self) -> Stage0Config:
        if not self.train:
            raise ValueError("train is empty: name vision, text or both")
        return self


OFFSITE_RPM = 30.0


def is_on_site(url: str | None, site_hosts: Iterable[str] = ()) -> bool:
    """The off-site rule, in one place: a URL whose host is a loopback IP literal, `localhost` (or a
    name under `.localhost`) or one of `site_hosts` stays on site; every other host is off site,
    including names that merely start with "127." or "localhost"."""
    host = (urlparse(url or "").hostname or "").lower()
    return bool(host) and (host in {h.lower() for h in site_hosts} or is_loopback_host(host))


def is_loopback_host(host: str) -> bool:
    """`localhost`, a name under `.localhost`, or a loopback IP literal (IPv4-mapped IPv6 included)."""
    host = host.lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class JudgeConfig(Section):
    """The CheXprompt judge: any OpenAI-compatible endpoint."""
    endpoint: Literal["synthetic-reference", "openai", "azure", "compatible"] = Field(
        "synthetic-reference", description="synthetic-reference: radlab's exact judge for the synthetic set, "
        "served on loopback; compatible: any OpenAI-compatible base_url")
    base_url: str | None = Field(None, description="the server for compatible; the resource URL for azure")
    model: str = Field("gpt-4", description="model name, or the deployment name on Azure")
    api_version: str = "2024-06-01"
    api_key_env: str = "OPENAI_API_KEY"
    allow_offsite: bool = Field(False, description="consent to send reports to an endpoint off this machine")
    site_hosts: list[str] = Field([], description="host names on this site's own network, treated like this "
                                  "machine (reports may go there without allow_offsite)")
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=16)
    requests_per_minute: float | None = Field(None, gt=0, description="None: no limit for a judge on this site, "
                                              f"{OFFSITE_RPM:g} (the published CheXprompt rate) for one off it")
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(4, ge=0)
    retry_base_s: float = Field(1.0, ge=0)
    timeout_s: float = Field(60, gt=0)
    prompt_file: Path | None = Field(None, description="a user prompt with {reference} and {candidate}")
    cache: Path = Path("radlab_runs/judge_cache.sqlite")
    cost_per_1k_input: float = Field(0.0, ge=0)
    cost_per_1k_output: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _endpoint(self, info: ValidationInfo) -> JudgeConfig:
        if self.endpoint in ("compatible", "azure") and not self.base_url:
            raise ValueError(f"endpoint {self.endpoint} needs base_url")
        if self.offsite() and not self.allow_offsite:
            raise ValueError(self.offsite_refusal((info.context or {}).get("consent", "allow_offsite: true")))
        return self

    def offsite(self, base_url: str | None = None) -> bool:
        """Whether requests to this endpoint (at `base_url`, default the configured one) leave the site."""
        if self.endpoint == "synthetic-reference":
            return False
        if self.endpoint in ("openai", "azure"):
            return True
        return not is_on_site(base_url or self.base_url, self.site_hosts)

    @property
    def rate_limit(self) -> float | None:
        """Requests per minute: the configured limit, else none on site and OFFSITE_RPM off it."""
        if self.requests_per_minute is not None:
            return self.requests_per_minute
        return OFFSITE_RPM if self.offsite() else None

    def offsite_refusal(self, consent: str, base_url: str | None = None) -> str:
        where = base_url or self.base_url or "api.openai.com"
        return (f"endpoint {self.endpoint} at {where} is off this machine, so reports (protected health "
                f"information) would leave the site: set {consent} to consent, or list the host in site_hosts "
                f"if it is on your site's network")


Metric = Literal[tuple(METRICS)]  # the metric registry's names


class EvalConfig(Section):
    enabled: bool = True
    split: Literal["val", "test"] = "test"
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1, description="judge only the first N reports")
    show: int = Field(4, ge=0, description="generations printed and logged as examples")
    metrics: list[Metric] = ["chexprompt", "rouge_l", "bleu", "label_f1"]
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    compare_untrained: bool | None = Field(None, description="also score the untrained model side by side, with "
                                           "a paired test; None: on for a judge on this site, off for an off-site "
                                           "judge (it doubles the paid calls)")
    max_failed_share: float = Field(0.05, ge=0, le=1, description="the evaluation fails (exit status 2, no model "
                                    "registered) when more than this share of judgments failed")
    bootstrap: int = Field(1000, ge=10, description="resamples for the 95% intervals")
    grounding: bool | None = Field(None, description="generate again on mirrored and on blank images: flip "
                                   "consistency and image reliance (and, on the synthetic set, errors per "
                                   "attribute); None: on for the synthetic set, off elsewhere (it triples "
                                   "generation)")
    chexbert_weights: Path | None = Field(None, description="the CheXbert labeler's chexbert.pth (StanfordAIMI "
                                          "RRG_scorers) for F1-CheXbert")
    chexbert_bert: Path | None = Field(None, description="a local bert-base-uncased folder: the labeler's "
                                       "tokenizer and BERT config")
    radgraph_python: Path | None = Field(None, description="an interpreter with the radgraph package (pip install "
                                         "radgraph==0.1.18 transformers==4.57.6), which cannot run beside "
                                         "radlab's transformers; F1-RadGraph runs there")
    radgraph_weights: Path | None = Field(None, description="an extracted RRG_scorers RadGraph archive: config.json, "
                                          "vocabulary/, weights.th")
    radgraph_model: Literal["radgraph", "radgraph-xl", "modern-radgraph-xl", "echograph"] = Field(
        "radgraph", description="the RadGraph release in radgraph_weights (each tokenizes reports its own way)")
    radgraph_bert: Path | None = Field(None, description="a local folder of the BERT the RadGraph config names "
                                       "(nothing is downloaded); None keeps the config's own model_name")
    bertscore_model: Path | None = Field(None, description="a local transformers encoder folder for BERTScore "
                                         "(e.g. a downloaded distilroberta-base); BERTScore is skipped without it")
    bertscore_layers: int | None = Field(None, ge=1, description="the layer BERTScore reads (default: the last)")

    @property
    def compares_untrained(self) -> bool:
        return self.compare_untrained if self.compare_untrained is not None else not self.judge.offsite()


class TrackingConfig(Section):
    uri: str | None = Field(None, description="None: $MLFLOW_TRACKING_URI, else a local sqlite store")
    artifact_root: str = "radlab_runs/mlartifacts"
    register_as: str | None = "radlab"


# The memory of each accelerator's variants, smallest first: the smallest is ray.gpu_memory_gb's
# default, a larger one is asked of Ray by its label.
ACCELERATOR_GIB = {"V100": (16, 32), "T4": (16,), "L4": (24,), "A100": (40, 80), "H100": (80, 94)}


# The URL schemes pyarrow resolves to a filesystem, and so Ray Train (and radlab's own records) can
# keep runs in.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this machine's CPU computes in bf16 natively (the avx512_bf16 or amx_bf16 flag of
    Linux's /proc/cpuinfo); elsewhere, or without the file, False."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


class RayConfig(Section):
    address: str | None = Field(None, description="None starts an embedded local Ray; 'auto' or ray://host:10001 joins one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray")
    workers: int = Field(2, ge=1)
    min_workers: int | None = Field(None, ge=1, description="elastic training: when nodes are lost, go on with as "
                                    "few as this many workers (None: always `workers`, waiting for replacements)")
    node_wait_s: float = Field(600, gt=0, description="how long a restart waits for its workers' resources "
                               "(a replacement node) before it counts as a failure")
    cpus_per_worker: float | None = Field(None, gt=0, description="None: on an embedded Ray without GPUs, this "
                                          "machine's cores shared among the workers; otherwise 1")
    use_gpu: bool = False
    accelerator: Literal["V100", "A100", "H100", "L4", "T4"] | None = None
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "fp32", description="auto: the half precision the hardware trains in natively (bf16 on a CPU with "
        "avx512_bf16 or AMX and on GPUs from A100 on, fp16 on V100 and T4), else fp32")
    gpu_memory_gb: float | None = Field(None, gt=0, description="memory of each GPU, for the memory plan "
                                        "(default: the accelerator's smallest variant, e.g. V100 16); above it, "
                                        "the smallest variant that holds it is asked of Ray as "
                                        "accelerator_type:<accelerator>-<gb>G")
    deepspeed: Literal["none", "zero2", "zero3"] = "none"
    storage_path: str = Field("radlab_runs/ray", description="a folder (NFS on a cluster) or a URL: "
                              + ", ".join(f"{scheme}://" for scheme in STORAGE_SCHEMES))
    max_failures: int = Field(2, ge=0)

    @field_validator("storage_path")
    @classmethod
    def _storage(cls, value: str) -> str:
        scheme, url, _ = value.partition("://")
        if url and scheme not in STORAGE_SCHEMES:
            raise ValueError(f"{scheme}:// is no storage Ray Train keeps runs in; use a folder or one of "
                             + ", ".join(f"{known}://" for known in STORAGE_SCHEMES))
        if not url and re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", value):
            raise ValueError(f"{value} is a URL without its '//' (it would be a local folder named "
                             f"{value.split('/')[0]}); write {value.replace(':/', '://', 1)}")
        return value

    @property
    def placement_accelerator(self) -> str | None:
        """The accelerator type each worker asks Ray for: a variant larger than the accelerator's
        smallest carries its memory in Ray's own naming ("A100-80G", "V100-32G"), a label its nodes
        declare, so that a plan made for 32 GB never lands on a 16 GB V100. A plan for less than a
        variant holds (30 GB, say) asks for the smallest variant that holds it."""
        if not (self.accelerator and self.gpu_memory_gb):
            return self.accelerator
        variants = ACCELERATOR_GIB[self.accelerator]
        if self.gpu_memory_gb <= variants[0]:
            return self.accelerator
        return f"{self.accelerator}-{next(gib for gib in variants if gib >= self.gpu_memory_gb)}G"

    @property
    def joins_cluster(self) -> bool:
        """Whether the run joins a running Ray (`address`, or the RAY_ADDRESS a Ray job's driver
        gets) rather than starting one on this machine."""
        return self.address is not None or bool(os.environ.get("RAY_ADDRESS"))

    def default_cpus_per_worker(self, sharing_workers: int) -> float:
        """On an embedded Ray without GPUs, this machine's cores shared among `sharing_workers`;
        otherwise 1."""
        embedded_cpu = not self.joins_cluster and not self.use_gpu
        cores = self.num_cpus or os.cpu_count() or 1
        return float(max(1, cores // sharing_workers)) if embedded_cpu else 1.0

    def auto_precision(self) -> str:
        """What `precision: auto` resolves to, from the hardware the workers run on: GPUs by
        `accelerator`, the embedded Ray's CPUs by this machine's (emulated bf16 is slower than fp32).
        A cluster's CPUs are not this machine's: there it stays `auto` until the run has joined the
        cluster and asked its nodes (`radlab.runtime.cluster_precision`)."""
        if self.use_gpu:
            if self.accelerator is None:
                raise ValueError("precision auto on GPUs needs ray.accelerator (bf16 from A100 on, fp16 on V100 "
                                 "and T4); or set ray.precision")
            return "fp16" if self.accelerator in ("V100", "T4") else "bf16"
        if self.joins_cluster:
            return "auto"
        return "bf16" if cpu_has_native_bf16() else "fp32"

    @model_validator(mode="after")
    def _hardware(self) -> RayConfig:
        if self.cpus_per_worker is None:
            self.cpus_per_worker = self.default_cpus_per_worker(self.workers)
        if self.precision == "auto" and (resolved := self.auto_precision()) != "auto":
            self.precision = resolved
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"min_workers {self.min_workers} exceeds workers {self.workers}")
        if self.precision == "bf16" and self.accelerator in ("V100", "T4"):
            raise ValueError(f"precision bf16: {self.accelerator} has no bf16; use fp16")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs use_gpu: true (CPUs train in fp32 or bf16)")
        if self.accelerator and not self.use_gpu:
            raise ValueError(f"accelerator {self.accelerator} needs use_gpu: true")
        if self.accelerator and self.gpu_memory_gb and self.gpu_memory_gb > ACCELERATOR_GIB[self.accelerator][-1]:
            raise ValueError(f"gpu_memory_gb {self.gpu_memory_gb:g}: no {self.accelerator} has more than "
                             f"{ACCELERATOR_GIB[self.accelerator][-1]} GB; set the memory of the GPUs you have")
        if self.deepspeed == "zero3":
            raise ValueError("deepspeed zero3: a checkpoint would hold only rank 0's partition of the weights "
                             "(radlab does not gather ZeRO-3's parameters); use zero2, the LLaVA-Rad recipe's")
        if self.deepspeed != "none" and self.precision == "fp16" and not self.use_gpu:
            raise ValueError("deepspeed with fp16 needs GPUs")
        return self


class SearchRange(Section):
    """One hyperparameter range searched with Optuna inside each grid cell."""
    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        given = [k for k in ("loguniform", "uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of loguniform: [low, high], uniform: [low, high], choice: [...]")
        bounds = self.loguniform or self.uniform
        if bounds is not None and not (0 < bounds[0] < bounds[1] if self.loguniform else bounds[0] < bounds[1]):
            raise ValueError(f"range {list(bounds)} must have low < high (and low > 0 for loguniform)")
        return self


class SearchConfig(Section):
    params: dict[str, SearchRange]
    samples: int = Field(4, ge=1, description="Optuna trials per grid cell")
    seed: int = 0


class Objective(Section):
    metric: str = "chexprompt/significant_mean"
    mode: Literal["min", "max"] = "min"


class SchedulerConfig(Section):
    """ASHA: trials report the validation loss at each checkpoint; the worse ones stop early."""
    kind: Literal["asha"] = "asha"
    metric: str = Field("val_loss", description="a metric every checkpoint reports")
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1, description="checkpoints a trial runs before it can be stopped")
    reduction_factor: int = Field(2, ge=2)
    max_t: int = Field(100, ge=1, description="checkpoints after which no trial is compared any more")


class SweepConfig(Section):
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="config path -> values; the grid")
    search: SearchConfig | None = None
    objective: Objective = Field(default_factory=Objective)
    scheduler: SchedulerConfig | None = Field(None, description="early stopping; with it, searched parameters "
                                              "are sampled at random (Optuna reads only the final objective)")
    max_concurrent_trials: int = Field(1, ge=1)
    max_failures: int = Field(1, ge=0, description="retries of a trial that failed by a fault (a mistake is not retried)")
    alias: str = Field("champion", description="registry alias moved to the best trial when it beats the holder "
                                               "in a paired test on the reports both were evaluated on")

    @model_validator(mode="after")
    def _axes(self) -> SweepConfig:
        for path, values in self.axes.items():
            if not values:
                raise ValueError(f"axes.{path}: an axis needs at least one value")
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"axes.{path}: repeated values {values}")
        if self.search:
            both = set(self.axes) & set(self.search.params)
            if both:
                raise ValueError(f"{sorted(both)} is both a grid axis and a searched parameter")
        if not self.axes and not self.search:
            raise ValueError("a sweep needs axes, a search, or both")
        return self


class Experiment(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataConfig
    model: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate({}))
    stage0: Stage0Config = Field(default_factory=Stage0Config)
    stage1: StageConfig = Field(default_factory=_stage1_default)
    stage2: StageConfig = Field(default_factory=_stage2_default)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    sweep: SweepConfig | None = None
    seed: int = Field(0, ge=0, description="training's seed: the weights a stage builds and the order of its batches "
                      "(the synthetic set has its own, data.synthetic.seed); a sweep axis for repeated runs")

    @model_validator(mode="after")
    def _cross_checks(self) -> Experiment:
        if not (self.stage0.enabled or self.stage1.enabled or self.stage2.enabled):
            raise ValueError("stage0, stage1 and stage2 are all disabled: nothing to train")
        if self.stage0.enabled:
            self._stage0_checks()
        for name in ("stage1", "stage2"):
            stage = getattr(self, name)
            per_step = stage.micro_batch * self.ray.workers
            if stage.enabled and stage.global_batch % per_step:
                raise ValueError(f"{name}.global_batch {stage.global_batch} is not a multiple of {name}.micro_batch "
                                 f"{stage.micro_batch} x ray.workers {self.ray.workers} = {per_step}: change one of them")
        if self.sweep is not None and self.eval.enabled and self.eval.split == "test":
            raise ValueError("eval.split: a sweep picks its champion on its trials' evaluations, so they must not "
                             "see the test set: set eval.split: val (then `radlab eval` the champion on test)")
        if (self.data.mixture and "chexprompt" in self.eval.metrics
                and self.eval.judge.endpoint == "synthetic-reference"):
            raise ValueError("eval.judge.endpoint: the synthetic-reference judge only knows the synthetic set; "
                             "name an openai, azure or compatible judge for real data")
        if self.data.synthetic and self.model.vision.image_size != self.data.synthetic.image_size:
            raise ValueError(
                f"model.vision.image_size {self.model.vision.image_size} differs from "
                f"data.synthetic.image_size {self.data.synthetic.image_size}"
            )
        return self

    def _stage0_checks(self) -> None:
        s0, vision = self.stage0, self.model.vision
        for world in range(self.ray.min_workers or self.ray.workers, self.ray.workers + 1):
            if s0.batch % world:
                raise ValueError(f"stage0.batch {s0.batch} does not divide across {world} workers "
                                 f"(ray.workers {self.ray.workers}, min_workers {self.ray.min_workers})")
        if vision.kind != "clip":
            raise ValueError(f"stage0 trains a clip image tower; model.vision.kind is {vision.kind}")
        if s0.freeze_vision_layers > vision.layers:
            raise ValueError(f"stage0.freeze_vision_layers {s0.freeze_vision_layers} exceeds "
                             f"model.vision.layers {vision.layers}")
        if "vision" not in s0.train and s0.freeze_vision_layers:
            raise ValueError("stage0.freeze_vision_layers is set but vision is not in stage0.train")

    @property
    def trains_report_model(self) -> bool:
        return self.stage1.enabled or self.stage2.enabled

    @property
    def runs_grounding(self) -> bool:
        return self.eval.grounding if self.eval.grounding is not None else self.data.synthetic is not None

    def digest(self) -> str:
        """A short hash of the resolved config: the key that ties reruns to their runs."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _absolute(section: Section, base: Path) -> None:
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(section, name, (base / value).resolve())
        elif isinstance(value, Section):
            _absolute(value, base)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Section):
                    _absolute(item, base)


def _home(value: str) -> str:
    return os.path.expanduser(value) if value.startswith("~") else value


def _local_path(value: str | None, base: Path) -> str | None:
    """A folder name that exists relative to `base` (or under `~`), made absolute; hub ids and URLs
    stay as they are."""
    if value is None or "://" in value:
        return value
    value = _home(value)
    if Path(value).is_absolute() or not (base / value).exists():
        return value
    return str((base / value).resolve())


def with_absolute_paths(experiment: Experiment, base: Path | None = None) -> Experiment:
    """A copy whose relative paths are resolved against `base` (the driver's working directory):
    Ray Train workers and Tune trials run in folders of their own, so every path is resolved once,
    on the driver, before any of them starts."""
    base = (base or Path.cwd()).resolve()
    out = experiment.model_copy(deep=True)
    _absolute(out, base)
    model = out.model
    model.tokenizer = _local_path(model.tokenizer, base)
    model.vision.path = _local_path(model.vision.path, base)
    model.language.path = _local_path(model.language.path, base)
    out.stage0.text.path = _local_path(out.stage0.text.path, base)
    if "://" not in out.ray.storage_path:
        out.ray.storage_path = str((base / _home(out.ray.storage_path)).resolve())
    if "://" not in out.tracking.artifact_root:
        out.tracking.artifact_root = str((base / _home(out.tracking.artifact_root)).resolve())
    out.tracking.uri = absolute_store(out.tracking.uri, base)
    return out


def absolute_store(uri: str | None, base: Path) -> str | None:
    """A tracking store on this filesystem (`sqlite:///runs.db`, `sqlite:///~/runs.db`, a bare
    folder) made absolute: the workers log to it from folders of their own, where a relative one
    would be another, empty store. Servers (http://, databricks, ...) stay as they are."""
    servers = ("databricks", "databricks-uc")
    if uri is None:
        return None
    if uri.startswith("sqlite:///"):
        path = _home(uri.removeprefix("sqlite:///"))
        return path if path == ":memory:" else f"sqlite:///{(base / path).resolve()}"
    if "://" not in uri and uri not in servers and ":" not in uri.split("/")[0]:
        return str((base / _home(uri)).resolve())
    return uri


def _looks_local(value: str | None) -> bool:
    return bool(value) and "://" not in value and (value.startswith(("/", ".", "~")) or Path(value).exists())


def missing_inputs(experiment: Experiment) -> list[str]:
    """What this machine lacks to run the experiment: files and folders the YAML names (hub ids
    are not checked) and the judge's API key variable. One line each, naming the field."""
    data, model, cfg = experiment.data, experiment.model, experiment.eval
    paths: list[tuple[str, Path | None]] = [(f"data.mixture.{i}.manifest", source.manifest)
                                            for i, source in enumerate(data.mixture)]
    paths += [(f"data.mixture.{i}.image_root", source.image_root) for i, source in enumerate(data.mixture)]
    paths += [("data.val_manifest", data.val_manifest), ("data.eval_manifest", data.eval_manifest),
              ("data.image_root", data.image_root)]
    paths += [(f"model.{name}", Path(value).expanduser()) for name, value in (
        ("language.path", model.language.path), ("vision.path", model.vision.path), ("tokenizer", model.tokenizer),
        ("stage0.text.path", experiment.stage0.text.path)) if _looks_local(value)]
    if cfg.enabled:
        paths += [(f"eval.{name}", getattr(cfg, name)) for name in (
            "chexbert_weights", "chexbert_bert", "radgraph_python", "radgraph_weights", "radgraph_bert",
            "bertscore_model")]
        paths.append(("eval.judge.prompt_file", cfg.judge.prompt_file))
    problems = [f"{field}: {path} does not exist" for field, path in paths if path is not None and not path.exists()]
    judge = cfg.judge
    if (cfg.enabled and "chexprompt" in cfg.metrics and judge.endpoint in ("openai", "azure")
            and not os.environ.get(judge.api_key_env)):
        problems.append(f"eval.judge.api_key_env: {judge.api_key_env} is not set in this environment")
    return problems


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(raw: dict, assignment: str) -> dict:
    """Apply one `a.b.c=value` (value parsed as YAML; list items by index) to a raw config dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected path=value, e.g. stage2.lr=5e-5")
    path, _, text = assignment.partition("=")
    keys = path.strip().split(".")
    value = yaml.safe_load(text) if text.strip() else None
    out = copy.deepcopy(raw)
    node: Any = out
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {assignment}: {'.'.join(keys[:i + 1])}: no such list item")
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {assignment}: {'.'.join(keys[:i + 1])} is not a section")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {assignment}: {path}: no such list item")
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _section_at(path: list, root: type[Section] = None) -> type[Section] | None:
    """The section class at a field path of an experiment (list items by index), if any."""
    current = root or Experiment
    for part in path:
        if str(part).isdigit():
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        candidates += [arg for c in candidates for arg in typing.get_args(c)]
        sections = [c for c in candidates if isinstance(c, type) and issubclass(c, Section)]
        if not sections:
            return None
        current = sections[0]
    return current


def _did_you_mean(loc: list) -> str:
    section = _section_at(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1) if section else []
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-")) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean([p for p in e["loc"] if not str(p).startswith("function-")])
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{where}: {loc}: {msg}")
    return "\n".join(lines)


def parse_section(cls: type[Section], values: dict, where: str, context: dict | None = None):
    """One section built from values given elsewhere (command-line options); errors as ConfigError."""
    try:
        return cls.model_validate(values, context=context)
    except ValidationError as err:
        raise ConfigError(_describe(err, where)) from None


def parse_experiment(raw: dict, where: str) -> Experiment:
    try:
        return Experiment.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, where)) from None


def read_yaml(path: Path, error: type[RadlabError] = ConfigError):
    """A YAML file's content; `error` naming the file for one that cannot be read, is not UTF-8
    text or not YAML."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"{path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read, override and validate an experiment YAML; raise ConfigError naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (name, data, model, ...)")
    parse_experiment(raw, str(path))
    for assignment in overrides:
        raw = apply_override(raw, assignment)
    # Validated together: fields that must agree (global_batch, micro_batch, workers) can change at once.
    return parse_experiment(raw, f"{path} ({' '.join(f'--set {a}' for a in overrides)})" if overrides else str(path))


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into dotted keys, the form MLflow params take."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(value) if isinstance(value, list) else str(value)}
