"""Importing the released LLaVA-Rad checkpoint into a radlab checkpoint.

The release is read from three folders:

    adapter/   adapter_config.json, adapter_model.safetensors (or .bin): PEFT LoRA over the Vicuna
               base, keys `base_model.model.model.layers.N....lora_A.weight`; non_lora_trainables.bin:
               the projector, keys `base_model.model.model.mm_projector.{0,2}.{weight,bias}`
    base/      the Vicuna-7B v1.5 folder (LlamaForCausalLM and its tokenizer)
    vision/    BiomedCLIP-CXR, an open_clip model whose image tower is a timm ViT (`visual.trunk.*`):
               the release's biomedclipcxr_518.json (an open_clip model config) and
               biomedclipcxr_518_checkpoint.pt (an open_clip training checkpoint, weights under
               `state_dict`, `module.` prefixed), or the Hub's open_clip_config.json and
               open_clip_pytorch_model.bin

microsoft/llava-rad on the Hugging Face Hub holds the adapter and BiomedCLIP-CXR in one folder,
which is then both `adapter/` and `vision/`.

The timm ViT is remapped onto transformers' ViTModel, or onto Dinov2Model when its blocks carry
LayerScale (a DINOv2 trunk): the same computation (CLS token, biased patch embedding, pre-norm
blocks with fused qkv split into q, k, v, LayerScale), so no open_clip package is needed. The
open_clip config's image transform (its preprocess_cfg mean and std; the short side resized and
the centre cropped) goes with the tower as its preprocessor_config.json. The result loads,
evaluates, serves and fine-tunes like any radlab checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, Dinov2Config, Dinov2Model, ViTConfig, ViTModel

from radlab.config import LanguageConfig, LoraConfig, ModelConfig, VisionConfig
from radlab.formats.images import CLIP_MEAN, CLIP_STD, ImageTransform
from radlab.formats.tokenizer import load_tokenizer
from radlab.model.build import apply_lora, build_model
from radlab.model.checkpoint import atomic_folder, save_checkpoint, write_transform
from radlab.model.towers import ModelError, tower_config

# timm's ViT widths and their head counts (for heads, which the weights do not show).
TIMM_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# Per tower kind: transformers' name of the blocks, and of each timm block part.
_BLOCKS = {"vit": "layers", "dinov2": "encoder.layer"}
_BLOCK = {
    "vit": {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
    "dinov2": {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1",
               "mlp.fc2": "mlp.fc2"},
}


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path}: not found (the LLaVA-Rad release layout is described in radlab.model.llava_rad)")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever the file holds, the error names it
        raise ModelError(f"{path}: not a readable weights file ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]})") from None


def tower_from_open_clip(state: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], dict]:
    """transformers weights and the `model.vision` fields (kind, shapes) of an open_clip model's
    `visual.trunk.*` (timm) weights: a ViTModel, or a Dinov2Model for a trunk with LayerScale."""
    trunk = {k.removeprefix("visual.trunk."): v for k, v in state.items() if k.startswith("visual.trunk.")}
    if "cls_token" not in trunk or "patch_embed.proj.weight" not in trunk:
        raise ModelError(f"{where}: no timm ViT image tower (visual.trunk.cls_token, ...) in this open_clip checkpoint")
    out = {"embeddings.cls_token": trunk["cls_token"], "embeddings.position_embeddings": trunk["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": trunk["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": trunk["patch_embed.proj.bias"],
           "layernorm.weight": trunk["norm.weight"], "layernorm.bias": trunk["norm.bias"]}
    layers = 1 + max(int(m[1]) for k in trunk if (m := re.match(r"blocks\.(\d+)\.", k)))
    kind = "dinov2" if "blocks.0.ls1.gamma" in trunk else "vit"
    width = trunk["cls_token"].shape[-1]
    mapped = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
              "norm.bias"}
    if kind == "dinov2":
        out["embeddings.mask_token"] = torch.zeros(1, width)  # DINOv2's masked-image training only
    for i in range(layers):
        block, ours_block = f"blocks.{i}.", f"{_BLOCKS[kind]}.{i}."
        for part in ("weight", "bias"):
            q, k, v = trunk[f"{block}attn.qkv.{part}"].chunk(3)
            out |= {f"{ours_block}attention.q_proj.{part}": q, f"{ours_block}attention.k_proj.{part}": k,
                    f"{ours_block}attention.v_proj.{part}": v}
            for theirs, ours in _BLOCK[kind].items():
                out[f"{ours_block}{ours}.{part}"] = trunk[f"{block}{theirs}.{part}"]
            mapped |= {f"{block}{name}.{part}" for name in ("attn.qkv", *_BLOCK[kind])}
        if kind == "dinov2":
            for scale in (1, 2):
                out[f"{ours_block}layer_scale{scale}.lambda1"] = trunk[f"{block}ls{scale}.gamma"]
                mapped.add(f"{block}ls{scale}.gamma")
    # Every trunk weight must land somewhere: one left out (register tokens, say) would silently
    # change the features the language model sees.
    unmapped = sorted(set(trunk) - mapped)
    if unmapped:
        raise ModelError(f"{where}: {len(unmapped)} weights of the timm image tower have no place in transformers' "
                         f"{'Dinov2Model' if kind == 'dinov2' else 'ViTModel'} ({', '.join(unmapped[:3])}): radlab "
                         "cannot convert this trunk without changing its features")
    shapes = {"kind": kind, "hidden_size": width, "layers": layers,
              "heads": TIMM_HEADS.get(width, max(1, width // 64)),
              "intermediate_size": trunk["blocks.0.mlp.fc1.weight"].shape[0],
              "patch_size": trunk["patch_embed.proj.weight"].shape[-1]}
    return out, shapes


def _is_open_clip_config(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    model_cfg = raw.get("model_cfg", raw) if isinstance(raw, dict) else None
    return isinstance(model_cfg, dict) and isinstance(model_cfg.get("vision_cfg"), dict)


def _open_clip_config_file(vision: Path) -> Path:
    """The Hub's open_clip_config.json, else the folder's one JSON file, else its one open_clip model
    config (a JSON with vision_cfg) among others: microsoft/llava-rad holds BiomedCLIP-CXR's
    biomedclipcxr_518.json beside the adapter's adapter_config.json and LLaVA's config.json."""
    if (vision / "open_clip_config.json").is_file():
        return vision / "open_clip_config.json"
    found = sorted(vision.glob("*.json"))
    configs = found if len(found) == 1 else [path for path in found if _is_open_clip_config(path)]
    if len(configs) != 1:
        raise ModelError(f"{vision}: expected open_clip_config.json or one open_clip model config (*.json with "
                         f"vision_cfg), found {', '.join(p.name for p in configs or found) or 'none'}")
    return configs[0]


def _open_clip_checkpoint(vision: Path, config_file: Path) -> Path:
    """The Hub's open_clip_pytorch_model.bin, else the folder's one weights file, else the one named
    after the config (biomedclipcxr_518_checkpoint.pt beside biomedclipcxr_518.json, where
    microsoft/llava-rad also holds adapter_model.bin and non_lora_trainables.bin)."""
    if (vision / "open_clip_pytorch_model.bin").is_file():
        return vision / "open_clip_pytorch_model.bin"
    found = sorted({p for pattern in ("*.pt", "*.bin", "*.safetensors") for p in vision.glob(pattern)})
    named = [path for path in found if path.name.startswith(config_file.stem)]
    chosen = found if len(found) == 1 else named
    if len(chosen) != 1:
        raise ModelError(f"{vision}: expected open_clip_pytorch_model.bin, one checkpoint (*.pt, *.bin, "
                         f"*.safetensors) or one named after {config_file.name}, found "
                         f"{', '.join(p.name for p in found) or 'none'}")
    return chosen[0]


def _open_clip_tower(vision: Path) -> tuple[ViTConfig | Dinov2Config, dict[str, torch.Tensor], dict, ImageTransform]:
    """The transformers config, weights, `model.vision` fields and image transform of an open_clip
    folder's image tower."""
    config_file = _open_clip_config_file(vision)
    try:
        raw = json.loads(_read(config_file))
    except json.JSONDecodeError as err:
        raise ModelError(f"{config_file}: not valid JSON ({err})") from None
    model_cfg = raw.get("model_cfg", raw) if isinstance(raw, dict) else {}
    vision_cfg = model_cfg.get("vision_cfg", {}) if isinstance(model_cfg, dict) else {}
    image_size = vision_cfg.get("image_size") if isinstance(vision_cfg, dict) else None
    if not isinstance(image_size, int):
        raise ModelError(f"{config_file}: vision_cfg.image_size is missing")
    checkpoint = _open_clip_checkpoint(vision, config_file)
    state = _torch_load(checkpoint)
    state = state.get("state_dict", state)  # an open_clip training checkpoint, as open_clip loads it
    state = {k.removeprefix("module."): v for k, v in state.items()}
    tower, shapes = tower_from_open_clip(state, str(checkpoint))
    fields = {**shapes, "image_size": image_size, "name": vision_cfg.get("timm_model_name")}
    return tower_config(VisionConfig(**fields)), tower, fields, _open_clip_transform(raw, model_cfg, config_file,
                                                                                     image_size)


def _open_clip_transform(raw: dict, model_cfg: dict, config_file: Path, size: int) -> ImageTransform:
    """open_clip's image transform of the config: its `preprocess_cfg` mean and std (open_clip's
    defaults, CLIP's, where it names none); a resize other than open_clip's default (the short side,
    bicubic, then the centre crop) is refused rather than approximated."""
    preprocess = raw.get("preprocess_cfg") or model_cfg.get("preprocess_cfg") or {}
    mode, interpolation = preprocess.get("resize_mode", "shortest"), preprocess.get("interpolation", "bicubic")
    if mode != "shortest" or interpolation != "bicubic":
        raise ModelError(f"{config_file}: preprocess_cfg resizes {mode}/{interpolation}; radlab's towers take the "
                         "short side resized bicubic and the centre crop (open_clip's default)")
    return ImageTransform(size, tuple(preprocess.get("mean", CLIP_MEAN)), tuple(preprocess.get("std", CLIP_STD)))


def import_open_clip_vision(vision: Path, out: Path) -> tuple[Path, str]:
    """Write an open_clip image tower as a transformers ViT or Dinov2 folder; return it and the
    `model.vision.kind` it is (BiomedCLIP: vit, BiomedCLIP-CXR: dinov2)."""
    config, tower, fields, transform = _open_clip_tower(Path(vision))
    model = ViTModel(config, add_pooling_layer=False) if fields["kind"] == "vit" else Dinov2Model(config)
    model.load_state_dict(tower)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        write_transform(tmp, transform)
    return Path(out), fields["kind"]


def import_llava_rad(adapter: Path, base: Path, vision: Path, out: Path, max_length: int = 2048) -> Path:
    adapter, base, vision = Path(adapter), Path(base), Path(vision)
    _, tower, shapes, transform = _open_clip_tower(vision)
    lm = AutoConfig.from_pretrained(base)
    model_config = ModelConfig(
        preset="llava-rad-7b", projector="mlp2x_gelu", tokenizer=str(base),
        vision=VisionConfig(select_layer=-2, frozen=True, **shapes),
        language=LanguageConfig(path=str(base), hidden_size=lm.hidden_size, layers=lm.num_hidden_layers,
                                heads=lm.num_attention_heads, intermediate_size=lm.intermediate_size,
                                tie_embeddings=bool(lm.tie_word_embeddings)))
    tokenizer = load_tokenizer(base)
    with torch.random.fork_rng():  # what the release does not hold (<image>'s rows) drawn alike each time
        torch.manual_seed(0)
        model = build_model(model_config, tokenizer, max_length)
    result = model.model.vision_tower.load_state_dict(tower, strict=False)
    if result.unexpected_keys or [k for k in result.missing_keys if not k.startswith("pooler.")]:
        raise ModelError(f"{vision}: the image tower does not fit a {shapes['kind']} tower of {shapes}: "
                         f"missing {result.missing_keys[:2]}, unexpected {result.unexpected_keys[:2]}")
    projector = _torch_load(adapter / "non_lora_trainables.bin")
    mapped = {}
    for key, value in projector.items():
        match = re.search(r"mm_projector\.([02])\.(weight|bias)$", key)
        if match:
            mapped[f"linear_{1 if match[1] == '0' else 2}.{match[2]}"] = value
    if len(mapped) != 4:
        raise ModelError(f"{adapter / 'non_lora_trainables.bin'}: expected mm_projector.0 and .2 weights and biases "
                         f"of an mlp2x_gelu projector, found {sorted(projector)[:4]}")
    model.model.multi_modal_projector.load_state_dict(mapped)
    peft_config = json.loads(_read(adapter / "adapter_config.json"))
    targets = peft_config.get("target_modules") or []
    targets = targets if isinstance(targets, list) else [targets]
    lora = LoraConfig(r=peft_config["r"], alpha=peft_config["lora_alpha"], dropout=peft_config.get("lora_dropout", 0.0),
                      target_modules=rf".*language_model.*\.({'|'.join(sorted(targets))})")
    model = apply_lora(model, lora)
    weights = adapter / "adapter_model.safetensors"
    adapters = _torch_load(weights if weights.is_file() else adapter / "adapter_model.bin")
    ours = {}
    for key, value in adapters.items():
        rest = key.removeprefix("base_model.model.model.")
        rest = re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", rest)
        ours[f"base_model.model.model.language_model.{rest}"] = value
    result = model.load_state_dict(ours, strict=False)
    untouched = sorted({k for k in model.state_dict() if "lora_" in k} - set(ours))
    if result.unexpected_keys or untouched:
        raise ModelError(f"{adapter}: the adapter does not fit the base: weights for no layer "
                         f"{result.unexpected_keys[:2]}, layers without weights {untouched[:2]}")
    return save_checkpoint(out, model, tokenizer, model_config, lora,
                           {"stage": "imported", "step": 0, "template": "vicuna_v1", "source": "llava-rad"},
                           transform=transform)


def _read(path: Path) -> str:
    if not path.is_file():
        raise ModelError(f"{path}: not found (the LLaVA-Rad release layout is described in radlab.model.llava_rad)")
    return path.read_text()
