"""The image towers radlab builds, one entry per `model.vision.kind`: its transformers classes,
which of its features LLaVA keeps, and how an image becomes its input. Training, evaluation,
serving, streaming and export all ask here (through a checkpoint's own preprocessor_config.json
once one is trained)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from radlab.config import ModelConfig, VisionConfig
from radlab.errors import RadlabError
from radlab.formats.images import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, ImageTransform


class ModelError(RadlabError, ValueError):
    """A model section that cannot be built, or a checkpoint that does not fit it."""


@dataclass(frozen=True)
class Tower:
    """One kind of tower: its transformers config and model classes; `features` the LLaVA feature
    strategy (`default` drops the CLS token, `full` keeps every token of a tower without one); and
    the normalisation of a tower built from the config (a tower folder's own
    preprocessor_config.json comes first)."""
    config_class: type
    model_class: type
    features: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


TOWERS = {
    "clip": Tower(CLIPVisionConfig, CLIPVisionModel, "default", CLIP_MEAN, CLIP_STD),
    "siglip": Tower(SiglipVisionConfig, SiglipVisionModel, "full", SIGLIP_MEAN, SIGLIP_STD),
    # open_clip's timm towers, imported (`radlab import open-clip-vision`) with their config's mean/std
    "vit": Tower(ViTConfig, ViTModel, "default", CLIP_MEAN, CLIP_STD),
    "dinov2": Tower(Dinov2Config, Dinov2Model, "default", CLIP_MEAN, CLIP_STD),
}

PROCESSOR_FILE = "preprocessor_config.json"


def image_transform(v: VisionConfig) -> ImageTransform:
    """How an image becomes this tower's input: the mean and std of the tower folder's
    preprocessor_config.json where it has one, else the kind's; resized to `image_size` by
    `model.vision.resize`, which must be how that file resizes (a tower trained on squashed images
    fed cropped ones would be silently wrong)."""
    mean, std = TOWERS[v.kind].mean, TOWERS[v.kind].std
    processor = Path(v.path) / PROCESSOR_FILE if v.path else None
    if processor is not None and processor.is_file():
        own = json.loads(processor.read_text())
        mean, std = tuple(own.get("image_mean", mean)), tuple(own.get("image_std", std))
        theirs = ImageTransform.resize_of(own)
        if theirs != v.resize:
            raise ModelError(f"model.vision.resize is {v.resize} but {processor} resizes {theirs}: set "
                             f"model.vision.resize: {theirs}")
    return ImageTransform(v.image_size, mean, std, v.resize)


def vision_config(mc: ModelConfig):
    """The transformers config of the tower: its folder's, or one built from the fields."""
    v = mc.vision
    if v.kind == "open_clip":
        raise ModelError(
            "model.vision.kind open_clip: convert the open_clip tower (BiomedCLIP, BiomedCLIP-CXR) once with "
            "`radlab import open-clip-vision --vision <folder> --out <folder>`, then use the "
            "vision: {kind: ..., path: <folder>} it prints"
        )
    if v.path:
        config = TOWERS[v.kind].config_class.from_pretrained(v.path)
        if config.model_type in ("vit", "dinov2") and config.model_type != v.kind:
            # transformers would build the other architecture from it and drop, say, LayerScale
            raise ModelError(f"model.vision.kind is {v.kind} but {v.path} holds a {config.model_type} tower: "
                             f"set model.vision.kind: {config.model_type}")
        return config
    return tower_config(v)


def tower_config(v: VisionConfig):
    """The transformers config of a tower built from the `model.vision` fields (timm's ViT and
    DINOv2 conventions for `vit` and `dinov2`: qkv bias, LayerNorm eps 1e-6)."""
    shapes = {"hidden_size": v.hidden_size, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
              "image_size": v.image_size, "patch_size": v.patch_size, "num_channels": 3}
    if v.kind == "dinov2":
        if v.intermediate_size % v.hidden_size:
            raise ModelError(f"model.vision.intermediate_size {v.intermediate_size} is not a multiple of hidden_size "
                             f"{v.hidden_size}, as a DINOv2 tower's MLP ratio must be")
        return Dinov2Config(mlp_ratio=v.intermediate_size // v.hidden_size, qkv_bias=True, layer_norm_eps=1e-6,
                            **shapes)
    extra = {"qkv_bias": True, "layer_norm_eps": 1e-6} if v.kind == "vit" else {}
    return TOWERS[v.kind].config_class(intermediate_size=v.intermediate_size, **shapes, **extra)
