"""Assembling the LLaVA-style model from the `model:` section.

The model is transformers' `LlavaForConditionalGeneration`: a vision tower, a projector and a
causal LM, so checkpoints stay HF-native. The tower and the LM come from configs (the tiny preset)
or from local folders / hub ids (`path`). Which parts train is decided per stage by `set_trainable`;
LoRA adapters go on the language model only.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from radlab.config import Experiment, LoraConfig, ModelConfig
from radlab.formats.prompts import IMAGE_TOKEN
from radlab.model.memory import language_dtype
from radlab.model.towers import TOWERS, ModelError, vision_config


class LinearProjector(nn.Module):
    """The `linear` projector of LLaVA 1.0: one matrix from image features to LM embeddings."""

    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_width, text_width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(features)


# How far a pretrained model's embedding rows may exceed its tokenizer's size: vocabularies are
# often padded to a multiple of 64 or 128 for speed, never by more.
EMBEDDING_PADDING = 256


def check_tokenizer_fits(mc: ModelConfig, tokenizer, rows: int) -> None:
    """Refuse a tokenizer whose ids do not index the pretrained language model's embedding rows:
    added tokens (<image>, a pad token) may grow the embeddings, a different vocabulary may not."""
    own = tokenizer.vocab_size  # without added tokens
    if own > rows or rows - own > EMBEDDING_PADDING:
        source = f"model.tokenizer {mc.tokenizer}" if mc.tokenizer else "the tokenizer"
        raise ModelError(f"{source} has {own} tokens but model.language.path {mc.language.path} has {rows} "
                         f"embedding rows: leave model.tokenizer empty to use the language model's own tokenizer")


def embedding_rows(language_path: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(language_path).vocab_size


def check_half_weights_stepped(experiment: Experiment) -> None:
    """Refuse a DDP stage that would step a half-precision checkpoint's own weights: the language
    model is held in its folder's dtype, so AdamW would update fp16 or bf16 weights in place (updates
    below their precision lost; under fp16 the gradient scaler refuses the stage's first step).
    DeepSpeed keeps fp32 master weights; LoRA trains fp32 adapters beside the half base."""
    path = experiment.model.language.path
    dtype = language_dtype(path)
    if dtype not in ("float16", "bfloat16") or experiment.ray.deepspeed != "none":
        return
    for name in ("stage1", "stage2"):
        stage = getattr(experiment, name)
        stepped = [part for part in ("language", "embeddings") if part in stage.train]
        if stage.enabled and stepped:
            raise ModelError(f"{name}.train: {' and '.join(stepped)} under DDP would step the {dtype} weights of "
                             f"model.language.path {path} in {dtype}: set ray.deepspeed: zero2 (fp32 master "
                             f"weights) or train LoRA instead ({name}.train: [projector, lora])")


def _text_config(mc: ModelConfig, tokenizer, max_length: int):
    lang = mc.language
    if lang.path:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(lang.path)
        check_tokenizer_fits(mc, tokenizer, config.vocab_size)
        config.vocab_size = max(config.vocab_size, len(tokenizer))
        return config
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=lang.hidden_size, intermediate_size=lang.intermediate_size,
        num_hidden_layers=lang.layers, num_attention_heads=lang.heads, num_key_value_heads=lang.heads,
        max_position_embeddings=max(max_length, 512), tie_word_embeddings=lang.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def build_model(mc: ModelConfig, tokenizer, max_length: int = 2048) -> LlavaForConditionalGeneration:
    """A fresh model for `mc`: random weights, or the tower's and LM's weights where paths are given."""
    vision = vision_config(mc)
    text_config = _text_config(mc, tokenizer, max_length)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=mc.vision.select_layer,
        vision_feature_select_strategy=TOWERS[mc.vision.kind].features,
        projector_hidden_act="gelu",
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    model = around_pretrained(config, mc.projector, mc.language.path) if mc.language.path else \
        assemble(config, mc.projector)
    if mc.vision.path:
        # A CLIP/SigLIP/ViT folder, a vision tower's folder, or a radlab stage 0 encoder.
        tower = TOWERS[mc.vision.kind].model_class.from_pretrained(mc.vision.path)
        model.model.vision_tower.load_state_dict(tower.state_dict())
    return model


def around_pretrained(config: LlavaConfig, projector: str, language_path: str) -> LlavaForConditionalGeneration:
    """The model with the pretrained language model read once from its folder, in the dtype the
    folder holds (Vicuna's fp16: the frozen base at half precision, as the memory plan counts it;
    DeepSpeed casts the rest). The model is first laid out on the meta device, so the language
    model is never also built with random weights to be overwritten, which cost every worker a
    second copy of it and its random initialisation; the tower and projector are then built and
    initialised as `assemble` builds them, in fp32."""
    with torch.device("meta"):
        model = assemble(config, projector)
    lm = AutoModelForCausalLM.from_pretrained(language_path)
    lm.resize_token_embeddings(config.text_config.vocab_size)
    model.model.language_model, model.lm_head = lm.model, lm.lm_head
    model.model.vision_tower = AutoModel.from_config(config.vision_config, dtype=torch.float32)
    model.model.multi_modal_projector = _projector(config, projector)
    model.model.multi_modal_projector.apply(model._init_weights)
    on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if on_meta:
        raise RuntimeError(f"parts left unbuilt around {language_path}: {', '.join(on_meta[:5])}")
    return model


def _projector(config: LlavaConfig, projector: str) -> nn.Module:
    if projector == "linear":
        return LinearProjector(config.vision_config.hidden_size, config.text_config.hidden_size)
    return LlavaMultiModalProjector(config)


def assemble(config: LlavaConfig, projector: str) -> LlavaForConditionalGeneration:
    """The model of a LlavaConfig with randomly initialised weights and the chosen projector."""
    model = LlavaForConditionalGeneration(config)
    if projector == "linear":
        model.model.multi_modal_projector = _projector(config, projector)
    return model


def apply_lora(model: nn.Module, lora: LoraConfig) -> nn.Module:
    """Wrap the model with LoRA adapters on the language model's linear layers only."""
    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, bias="none")
    with warnings.catch_warnings():
        # peft 0.21 asks transformers 5 for `is_gradient_checkpointing`, deprecated there: not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, config)
    touched = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    if not touched or any("language_model" not in n for n in touched):
        raise ModelError(f"lora.target_modules {lora.target_modules!r} must match linear layers of the language model only")
    return model


_PARTS = {
    "projector": ("multi_modal_projector",),
    "vision": ("vision_tower",),
    "language": ("language_model", "lm_head"),
    "lora": ("lora_",),
    # the language model's token embeddings: beside LoRA, for tokens a language model built from a
    # config has never been trained on (the chat template's, after a stage 1 on the plain one)
    "embeddings": ("embed_tokens",),
}


def llava_config(model: nn.Module) -> LlavaConfig:
    """The LlavaConfig of a model, through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def _unused_vision_keys(model: nn.Module) -> list[str]:
    """Vision weights LLaVA never uses: blocks after the selected layer and the final norm.
    Training them would leave DDP waiting for gradients that never come."""
    config = llava_config(model)
    layers = config.vision_config.num_hidden_layers
    used = config.vision_feature_layer % (layers + 1)
    return ["vision_tower.post_layernorm", "vision_tower.head", "vision_tower.layernorm", "vision_tower.pooler",
            "vision_tower.embeddings.mask_token"] + [
        f"vision_tower.{block}.{i}." for i in range(used, layers) for block in ("encoder.layers", "layers",
                                                                                "encoder.layer")]


def set_trainable(model: nn.Module, train: list[str]) -> int:
    """Freeze everything but the named parts; return the number of trainable parameters."""
    keys = [key for part in train for key in _PARTS[part]]
    unused = _unused_vision_keys(model) if "vision" in train else []
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad = any(key in name for key in keys) and not any(key in name for key in unused)
        count += param.numel() if param.requires_grad else 0
    return count


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
