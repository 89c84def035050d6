"""Export a radlab report model as a transformers-native LLaVA folder.

The folder loads with `LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor`
alone: config, safetensors (LoRA merged into the language model), tokenizer with the chat
template of the checkpoint's last stage (checked to give the prompt ids radlab trains with), and a
processor whose image side is the checkpoint's own transform (the short side resized to the
tower's size and the centre kept, or both sides resized; the tower's mean and std).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from transformers import LlavaProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from radlab.formats.prompts import IMAGE_TOKEN, VICUNA_SYSTEM, encode_prompt, render_prompt
from radlab.model.build import ModelError, llava_config
from radlab.model.checkpoint import atomic_folder, load_checkpoint

PROBE = "Provide a description of the findings in the radiology image."


def chat_template(template: str, bos: bool, junction: str) -> str:
    """radlab's prompt (`formats.prompts.render_prompt`) as a chat template for `apply_chat_template`:
    the user turn's <image> and text in the template's order, then the assistant's findings. `bos`:
    a BOS token, for a tokenizer that does not add one itself. `junction`: text after <image> that
    makes transformers' whole-text tokenization give radlab's ids: radlab, as LLaVA's
    tokenizer_image_token, tokenizes the text after <image> as a piece of its own, which a
    SentencePiece tokenizer starts with "▁"."""
    start = "{{ bos_token }}" if bos else ""
    if template == "plain":
        return start + IMAGE_TOKEN
    text = ("{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
            "{% endfor %}")
    if template == "vicuna_v1_image_last":
        user = text + "{{ '\\n' }}" + IMAGE_TOKEN + junction  # transformers' trim_blocks drops a newline after a tag
    else:
        user = IMAGE_TOKEN + junction + "\n" + text
    return (start + VICUNA_SYSTEM + " {% for message in messages %}{% if message['role'] == 'user' %}USER: "
            + user + " ASSISTANT:{% else %}"
            "{% for part in message['content'] %}{% if part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
            "{% endfor %}{{ eos_token }}{% endif %}{% endfor %}")


def matching_processor(checkpoint: Path, tokenizer, image_processor, config, template: str,
                       num_image_tokens: int) -> LlavaProcessor:
    """The LlavaProcessor whose chat template gives, for a probe prompt, the ids radlab trains and
    generates with; ModelError where no template does."""
    bos = tokenizer("x").input_ids[:1] != [tokenizer.bos_token_id]  # the tokenizer does not add BOS itself
    expected = encode_prompt(tokenizer, render_prompt(template, PROBE), num_image_tokens)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROBE}]}]
    siglip = config.vision_config.model_type.startswith("siglip")
    for junction in ("", " "):
        tokenizer.chat_template = chat_template(template, bos, junction)
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=config.vision_config.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy, image_token=IMAGE_TOKEN,
            num_additional_image_tokens=0 if siglip else 1, chat_template=tokenizer.chat_template)
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        ids = processor(images=Image.new("RGB", (48, 40)), text=text)["input_ids"][0]  # any image: it is resized
        if list(ids) == expected:
            return processor
    raise ModelError(f"{checkpoint}: transformers' LLaVA processor cannot tokenize the prompt as radlab does with "
                     "this tokenizer; keep radlab's format for this model")


def export_hf(checkpoint: Path, out: Path, merge_lora: bool = True) -> Path:
    """Write `checkpoint` as a transformers LLaVA folder at `out` (atomically); return `out`."""
    loaded = load_checkpoint(checkpoint)
    if loaded.model_config.projector != "mlp2x_gelu":
        raise ModelError(f"{checkpoint}: projector {loaded.model_config.projector} has no transformers LLaVA "
                         "equivalent (its projector is mlp2x_gelu); keep radlab's format for this model")
    transform = loaded.transform
    if transform.resize == "pad":
        raise ModelError(f"{checkpoint}: trained on images padded to a square (model.vision.resize pad), "
                         "which transformers' CLIP image processor does not do; keep radlab's format for this model")
    model = loaded.model
    if loaded.lora is not None:
        if not merge_lora:
            raise ModelError(f"{checkpoint}: a LoRA model exports to transformers only merged (--merge-lora)")
        model = model.merge_and_unload()
    config = llava_config(model)
    settings = {k: v for k, v in transform.processor_config().items()
                if k in ("size", "crop_size", "do_center_crop", "resample", "image_mean", "image_std")}
    image_processor = CLIPImageProcessorPil(**settings)
    tokenizer = loaded.tokenizer
    processor = matching_processor(checkpoint, tokenizer, image_processor, config, loaded.template,
                                   loaded.model_config.vision.num_image_tokens)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.suppress_tokens = [config.image_token_id]  # as radlab generates: never <image>
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out)
