"""The `model` section: image tower, projector, language model and tokenizer (a preset fills in
what is not given), and the LoRA block a stage may carry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from radlab.config.base import Section, deep_merge
from radlab.presets import PRESETS


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
