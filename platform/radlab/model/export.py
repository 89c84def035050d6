"""Export a radlab report model as a transformers-native LLaVA folder.

The folder loads with `LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor`
alone: config, safetensors (LoRA merged into the language model), tokenizer with the chat
template of the checkpoint's last stage, and a processor whose image side is the checkpoint's own
transform (the short side resized to the tower's size, the centre kept, the tower's mean and std).
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlavaProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from radlab.formats.prompts import IMAGE_TOKEN, VICUNA_SYSTEM
from radlab.model.build import ModelError, llava_config
from radlab.model.checkpoint import atomic_folder, load_checkpoint

# The templates of radlab.formats.prompts.render_prompt, for `apply_chat_template`: the user turn's
# text after "<image>\n", then the assistant's findings.
CHAT_TEMPLATES = {
    "vicuna_v1": (
        "{{ bos_token }}" + VICUNA_SYSTEM + " "
        "{% for message in messages %}{% if message['role'] == 'user' %}USER: <image>\n"
        "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %} ASSISTANT:{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
        "{% endfor %}{{ eos_token }}{% endif %}{% endfor %}"
    ),
    "plain": "{{ bos_token }}<image>",
}


def export_hf(checkpoint: Path, out: Path, merge_lora: bool = True) -> Path:
    """Write `checkpoint` as a transformers LLaVA folder at `out` (atomically); return `out`."""
    loaded = load_checkpoint(checkpoint)
    if loaded.model_config.projector != "mlp2x_gelu":
        raise ModelError(f"{checkpoint}: projector {loaded.model_config.projector} has no transformers LLaVA "
                         "equivalent (its projector is mlp2x_gelu); keep radlab's format for this model")
    transform = loaded.transform
    if transform.resize != "crop":
        raise ModelError(f"{checkpoint}: trained on images padded to a square (model.vision.resize {transform.resize}), "
                         "which transformers' CLIP image processor does not do; keep radlab's format for this model")
    model = loaded.model
    if loaded.lora is not None:
        if not merge_lora:
            raise ModelError(f"{checkpoint}: a LoRA model exports to transformers only merged (--merge-lora)")
        model = model.merge_and_unload()
    config = llava_config(model)
    vision = config.vision_config
    siglip = vision.model_type.startswith("siglip")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": transform.size}, crop_size={"height": transform.size, "width": transform.size},
        do_center_crop=True, resample=3, image_mean=list(transform.mean), image_std=list(transform.std))
    tokenizer = loaded.tokenizer
    tokenizer.chat_template = CHAT_TEMPLATES[loaded.meta.get("template", "vicuna_v1")]
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy, image_token=IMAGE_TOKEN,
        num_additional_image_tokens=0 if siglip else 1, chat_template=tokenizer.chat_template)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out)
