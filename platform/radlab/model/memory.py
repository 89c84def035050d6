"""Per-GPU memory plans: will a stage, or a serving replica, fit the accelerator it asks for?

An estimate from the model's shapes, in the terms of the ZeRO paper (Rajbhandari et al.) and of
Korthikanti et al.'s activation count, before anything is loaded:
- weights: under DeepSpeed every parameter at the training precision (fp32: 4 bytes, fp16/bf16:
  2); under DDP, which casts nothing, each part as it is built: a pretrained language model in the
  dtype its config.json gives (transformers' `dtype="auto"`; at the training precision where it
  says none), one built from a config, the tower, projector and LoRA adapters in fp32;
- gradients: the trainable parameters at the training precision under DeepSpeed, sharded across
  the workers under ZeRO-2; in fp32 under DDP (its trainable parameters are fp32: half-precision
  weights may not train there, see `check_half_weights_stepped`);
- optimizer states: AdamW's two moments plus, under DeepSpeed in mixed precision, an fp32 master
  copy (12 bytes per trainable parameter, 8 without it), sharded under ZeRO-2;
- activations per sequence of `data.max_length` tokens (the longest a padded batch can be):
  34·s·h + 5·a·s² bytes per layer at 16 bits (no FlashAttention on V100), or only each layer's
  input with gradient checkpointing plus one layer recomputed; and the logits in 16 and 32 bits;
- a fixed 1 GiB for the CUDA context, NCCL buffers and allocator slack.
Serving: the weights at the serving dtype, LoRA merged, and the KV cache of a full batch.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from radlab.config import ACCELERATOR_GIB, Experiment, ModelConfig, StageConfig

GiB = 1024 ** 3
OVERHEAD = 1 * GiB
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class Shape:
    """The sizes a memory estimate needs, read from the configs (a local config.json wins)."""
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool
    vision_params: int
    vision_width: int
    image_tokens: int
    projector_params: int

    @property
    def language_params(self) -> int:
        h, kv = self.hidden, self.hidden * self.kv_heads // self.heads
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * per_layer + h

    @property
    def total_params(self) -> int:
        return self.language_params + self.vision_params + self.projector_params

    def lora_params(self, r: int) -> int:
        h, kv, inter = self.hidden, self.hidden * self.kv_heads // self.heads, self.intermediate
        pairs = {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h), "gate": (h, inter), "up": (h, inter),
                 "down": (inter, h)}
        return self.layers * sum(r * (a + b) for a, b in pairs.values())


def language_config(path: str | None) -> dict:
    """The config.json of the pretrained language model at `path`, which is what gets loaded: a
    folder's own, or a hub id's from the Hugging Face cache or hub (a hub id with another model's
    shapes than the preset's is planned as what it is). {} for a model built from a config, or a hub
    id that can be reached from neither (the run cannot load it either; the YAML's shapes are
    planned)."""
    if not path:
        return {}
    if (Path(path) / "config.json").is_file():
        return json.loads((Path(path) / "config.json").read_text())
    if Path(path).expanduser().exists() or path.startswith(("/", ".", "~")) or "://" in path:
        return {}
    return _hub_config(path)


@functools.lru_cache(maxsize=16)  # one lookup per hub id and process, not one per plan
def _hub_config(repo_id: str) -> dict:
    """The hub id's config.json from the Hugging Face cache, else from the hub when one request
    reaches it: hf_hub_download alone retries an unreachable hub five times (23 s of waiting and
    warnings on a machine without internet) before saying the file is not cached."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    try:
        return json.loads(Path(hf_hub_download(repo_id, "config.json", local_files_only=True)).read_text())
    except (OSError, ValueError):  # not cached here; not a repo id
        pass
    # Whatever stops this one request (offline, no network, no such repository) means the hub cannot
    # be read now. Its network errors are those of huggingface_hub's HTTP client, a library that
    # changes between its releases (httpx, httpx2), so they are not named here.
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"))  # one request, not retried
    except Exception:  # noqa: BLE001
        return {}
    try:
        return json.loads(Path(hf_hub_download(repo_id, "config.json")).read_text())
    except (OSError, ValueError):
        return {}


def language_dtype(language_path: str | None) -> str | None:
    """The dtype a pretrained language model's config.json gives its weights ("float16" for
    Vicuna), or None (built from a config, not said, or not reachable)."""
    own = language_config(language_path)
    return own.get("dtype") or own.get("torch_dtype")


def model_shape(model: ModelConfig) -> Shape:
    lang, vision = model.language, model.vision
    own = language_config(lang.path)
    hidden = own.get("hidden_size", lang.hidden_size)
    heads = own.get("num_attention_heads", lang.heads)
    d, inner = vision.hidden_size, vision.intermediate_size
    patch = 3 * vision.patch_size ** 2 * d + d + (vision.num_image_tokens + 1) * d
    vision_params = patch + vision.layers * (4 * d * d + 2 * d * inner + 9 * d + inner) + 2 * d
    projector = d * hidden + hidden + (hidden * hidden + hidden if model.projector == "mlp2x_gelu" else 0)
    return Shape(vocab=own.get("vocab_size", lang.vocab_size), hidden=hidden,
                 layers=own.get("num_hidden_layers", lang.layers), heads=heads,
                 kv_heads=own.get("num_key_value_heads") or heads,
                 intermediate=own.get("intermediate_size", lang.intermediate_size),
                 tied=own.get("tie_word_embeddings", lang.tie_embeddings), vision_params=vision_params,
                 vision_width=d, image_tokens=vision.num_image_tokens, projector_params=projector)


@dataclass
class Plan:
    """One memory estimate: bytes by part, against the accelerator's memory."""
    name: str
    capacity: float
    parts: dict[str, float] = field(default_factory=dict)
    fix: str = ""

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GiB:.1f}" for name, value in self.parts.items())
        verdict = "fits" if self.fits else "DOES NOT FIT"
        return f"{self.name}: {self.total / GiB:.1f} of {self.capacity / GiB:.0f} GiB per GPU ({parts}) {verdict}"


def _trainable(shape: Shape, stage: StageConfig, vision_tuned: bool) -> int:
    count = 0
    if "projector" in stage.train:
        count += shape.projector_params
    if "language" in stage.train:
        count += shape.language_params
    if "lora" in stage.train and stage.lora is not None:
        count += shape.lora_params(stage.lora.r)
    if "vision" in stage.train or vision_tuned:
        count += shape.vision_params
    return count


def activation_bytes(shape: Shape, tokens: int, checkpointing: bool) -> float:
    """One sequence's activations at 16 bits, with the logits kept for the loss."""
    s, h, a = tokens, shape.hidden, shape.heads
    layer = 34 * s * h + 5 * a * s * s
    layers = shape.layers * 2 * s * h + layer if checkpointing else shape.layers * layer
    logits = s * shape.vocab * (2 + 4 + 4)  # 16-bit logits, their fp32 upcast for the loss, its gradient
    return layers + logits


def gpu_capacity(experiment: Experiment) -> float:
    ray = experiment.ray
    gib = ray.gpu_memory_gb or ACCELERATOR_GIB.get(ray.accelerator or "", (0,))[0]
    return gib * GiB


def stage_plan(experiment: Experiment, stage_name: str) -> Plan:
    stage: StageConfig = getattr(experiment, stage_name)
    ray = experiment.ray
    shape = model_shape(experiment.model)
    width = 4 if ray.precision == "fp32" else 2
    world = ray.min_workers or ray.workers
    sharded = world if ray.deepspeed == "zero2" else 1  # ZeRO-2 shards gradients and optimizer states
    trainable = _trainable(shape, stage, not experiment.model.vision.frozen)
    optimizer_bytes = 8 if ray.precision == "fp32" else 12
    weights = shape.total_params * width
    if ray.deepspeed == "none":
        language = experiment.model.language
        held = {"float16": 2, "bfloat16": 2, "float32": 4}.get(language_dtype(language.path),
                                                               width if language.path else 4)
        lora = shape.lora_params(stage.lora.r) if "lora" in stage.train and stage.lora is not None else 0
        weights = shape.language_params * held + (shape.vision_params + shape.projector_params + lora) * 4
        width, optimizer_bytes = 4, 8
    parts = {
        "weights": weights,
        "gradients": trainable * width / sharded,
        "optimizer": trainable * optimizer_bytes / sharded,
        "activations": stage.micro_batch * activation_bytes(shape, experiment.data.max_length,
                                                              stage.gradient_checkpointing),
        "overhead": OVERHEAD,
    }
    fix = (f"lower {stage_name}.micro_batch (now {stage.micro_batch})"
           + ("" if stage.gradient_checkpointing else f", set {stage_name}.gradient_checkpointing: true")
           + " or name a larger GPU in ray.gpu_memory_gb")
    return Plan(stage_name, gpu_capacity(experiment), parts, fix)


def serving_plan(model: ModelConfig, batch: int, prompt_tokens: int, new_tokens: int, dtype_bytes: int,
                 capacity_gib: float) -> Plan:
    """A replica: merged weights, and the KV cache and last-token logits of a full batch."""
    shape = model_shape(model)
    tokens = shape.image_tokens + prompt_tokens + new_tokens
    kv = 2 * shape.layers * (shape.hidden * shape.kv_heads // shape.heads) * tokens * batch * dtype_bytes
    parts = {"weights": shape.total_params * dtype_bytes, "kv_cache": kv,
             "prefill": batch * (shape.image_tokens + prompt_tokens) * shape.hidden * 34 * dtype_bytes // 2
             + batch * shape.vocab * 4, "overhead": OVERHEAD}
    return Plan("serving", capacity_gib * GiB, parts, "lower max_batch_size or serve on a larger GPU")


def experiment_plans(experiment: Experiment) -> list[Plan]:
    """The plan of every enabled report-model stage, where the accelerator's memory is known."""
    if not experiment.ray.use_gpu or not gpu_capacity(experiment):
        return []
    return [stage_plan(experiment, name) for name in ("stage1", "stage2") if getattr(experiment, name).enabled]
