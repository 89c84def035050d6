"""Stage 0's dual encoder: the report model's image tower beside a text tower, trained contrastively.

The pair is a transformers `CLIPModel`, saved in the files its `save_pretrained` writes, so an
encoder folder is also a CLIP folder: `model.vision.path: <folder>` plugs its image tower into
stage 1, and `CLIPModel.from_pretrained(<folder>)` (the pair) or `CLIPVisionModel.from_pretrained`
(the image tower) loads it anywhere.

    config.json, model.safetensors   the CLIPModel (both towers, projections, temperature)
    radlab.json                      kind "encoder", the model and stage0 sections, SigLIP bias, step
    tokenizer/                       the tokenizer of the text tower
    train_state.pt                   optimizer, scheduler and step (training checkpoints only)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionModel

from radlab.config import ModelConfig, Stage0Config
from radlab.formats.images import ImageTransform
from radlab.formats.tokenizer import load_tokenizer
from radlab.model.checkpoint import FORMAT, META, atomic_folder, read_meta, read_transform, write_transform
from radlab.model.towers import ModelError, image_transform, vision_config


class DualEncoder(nn.Module):
    """A CLIPModel plus the SigLIP loss's bias; `forward` gives unit-norm embeddings of both sides."""

    def __init__(self, clip: CLIPModel, logit_bias: float = 0.0):
        super().__init__()
        self.clip = clip
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias)))

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Pooled at each report's last token (the </s> the dataset appends). CLIP's own pooling
        # reads eos_token_id == 2 as its legacy "highest token id" rule, which is wrong for
        # tokenizers, like radlab's BPE, whose </s> has id 2.
        hidden = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        pooled = hidden[torch.arange(len(hidden), device=hidden.device), last]
        return F.normalize(self.clip.text_projection(pooled), dim=-1)

    def forward(self, pixel_values, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(pixel_values), self.encode_texts(input_ids, attention_mask)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.clip.logit_scale.detach().exp())


def _text_config(s0: Stage0Config, tokenizer) -> CLIPTextConfig:
    t = s0.text
    if t.path:
        config = CLIPTextConfig.from_pretrained(t.path)
        if config.vocab_size != len(tokenizer):
            raise ModelError(f"stage0.text.path {t.path}: its vocabulary ({config.vocab_size}) is not the "
                             f"tokenizer's ({len(tokenizer)}); set model.tokenizer to the tower's tokenizer")
        return config
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                          num_hidden_layers=t.layers, num_attention_heads=t.heads, max_position_embeddings=t.max_length,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)


def _projection_dim(path: str) -> int | None:
    config = json.loads((Path(path) / "config.json").read_text())
    return config.get("projection_dim") if config.get("model_type") == "clip" else None


def build_encoder(mc: ModelConfig, s0: Stage0Config, tokenizer) -> DualEncoder:
    """A fresh dual encoder: towers from configs, or from the CLIP folders in their `path`s."""
    for field, path in (("model.vision.path", mc.vision.path), ("stage0.text.path", s0.text.path)):
        theirs = _projection_dim(path) if path else None
        if theirs is not None and theirs != s0.projection_dim:
            raise ModelError(f"{field} {path}: its towers project to {theirs}, stage0.projection_dim is "
                             f"{s0.projection_dim}: the towers' embedding sizes must match")
    config = CLIPConfig(text_config=_text_config(s0, tokenizer).to_dict(),
                        vision_config=vision_config(mc).to_dict(), projection_dim=s0.projection_dim,
                        logit_scale_init_value=math.log(1 / s0.temperature))
    clip = CLIPModel(config)
    for path, part, tower in ((mc.vision.path, "vision_model", CLIPVisionModel),
                              (s0.text.path, "text_model", CLIPTextModel)):
        if path:  # a CLIP folder or a single tower's folder
            getattr(clip, part).load_state_dict(tower.from_pretrained(path).state_dict())
    bias = -10.0 if s0.loss == "siglip" else 0.0
    return DualEncoder(clip, bias)


def set_encoder_trainable(encoder: DualEncoder, s0: Stage0Config) -> int:
    """Freeze what stage 0 does not train; return the number of trainable parameters."""
    frozen = [f"vision_model.encoder.layers.{i}." for i in range(s0.freeze_vision_layers)]
    frozen += ["vision_model.embeddings."] if s0.freeze_vision_layers else []
    count = 0
    for name, param in encoder.named_parameters():
        tower_on = ("vision" in s0.train and ("vision_model" in name or "visual_projection" in name)
                    or "text" in s0.train and ("text_model" in name or "text_projection" in name))
        if name == "clip.logit_scale":
            param.requires_grad = s0.learn_temperature
        elif name == "logit_bias":
            param.requires_grad = s0.loss == "siglip" and s0.learn_temperature
        else:
            param.requires_grad = tower_on and not any(key in name for key in frozen)
        count += param.numel() if param.requires_grad else 0
    return count


def save_encoder(dest: Path, encoder: DualEncoder, tokenizer, model_config: ModelConfig, s0: Stage0Config,
                 meta: dict, train_state: dict | None = None) -> Path:
    with atomic_folder(dest, checksums=True) as tmp:
        # The files CLIPModel.save_pretrained writes (config.json, model.safetensors with the same keys
        # and metadata), written directly: save_pretrained unwraps the model through accelerate, which
        # imports DeepSpeed wherever it is installed, 1.3 s at each stage 0 worker's first checkpoint.
        state = {k: v.detach().contiguous() for k, v in encoder.clip.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        encoder.clip.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp / "tokenizer")
        write_transform(tmp, image_transform(model_config.vision))
        info = {"format": FORMAT, "kind": "encoder", "model": model_config.model_dump(mode="json"),
                "stage0": s0.model_dump(mode="json"), "logit_bias": float(encoder.logit_bias.detach()), **meta}
        (tmp / META).write_text(json.dumps(info, indent=2))
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
    return Path(dest)


@dataclass
class LoadedEncoder:
    encoder: DualEncoder
    tokenizer: object
    stage0: Stage0Config
    meta: dict
    transform: ImageTransform


def load_encoder(path: Path) -> LoadedEncoder:
    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") != "encoder":
        raise ModelError(f"{path}: a report model checkpoint, not a stage 0 encoder: retrieval needs a text tower")
    clip = CLIPModel(CLIPConfig.from_pretrained(path))
    clip.load_state_dict(load_file(str(path / "model.safetensors")))
    encoder = DualEncoder(clip, meta["logit_bias"])
    transform, _ = read_transform(path, ModelConfig.model_validate(meta["model"]))
    return LoadedEncoder(encoder, load_tokenizer(path / "tokenizer"), Stage0Config.model_validate(meta["stage0"]), meta,
                         transform)

