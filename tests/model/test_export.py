import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from radlab.config import LoraConfig, ModelConfig
from radlab.formats.images import load_image
from radlab.formats.prompts import encode_prompt, findings_prompt, render_prompt
from radlab.formats.tokenizer import load_tokenizer
from radlab.model.build import ModelError, apply_lora, build_model, llava_config
from radlab.model.checkpoint import load_checkpoint, save_checkpoint
from radlab.model.export import export_hf, matching_processor
from radlab.model.generation import generate_texts

from .test_llava_rad import FINDINGS, vicuna_release

TINY = ModelConfig.model_validate({"preset": "tiny"})
HUMAN = "Provide a description of the findings in the radiology image."
LORA = LoraConfig(r=4, alpha=8, dropout=0.0)


@pytest.fixture()
def lora_checkpoint(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = apply_lora(build_model(TINY, tokenizer, 256), LORA)
    with torch.no_grad():   # LoRA B starts at zero; give the adapters weight so merging matters
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    folder = save_checkpoint(tmp_path / "ckpt", model, tokenizer, TINY, LORA, {"template": "vicuna_v1"})
    return model.eval(), folder


@pytest.mark.parametrize("template", ["vicuna_v1", "vicuna_v1_image_last"])
def test_export_loads_in_transformers_and_generates_the_same_tokens(lora_checkpoint, tokenizer, synthetic_root, tmp_path,
                                                                    template):
    model, folder = lora_checkpoint
    if template != "vicuna_v1":
        folder = save_checkpoint(tmp_path / template, model, tokenizer, TINY, LORA, {"template": template})
    out = export_hf(folder, tmp_path / "hf")
    exported = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    # Not square (64 x 40), so that the processor must resize the short side and crop as radlab does.
    image = load_image(synthetic_root / "images/test/000000.png").crop((0, 0, 64, 40))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": HUMAN}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image.convert("RGB"), text=prompt, return_tensors="pt")
    # The processor reproduces radlab's inputs: the same ids (image tokens expanded) and pixels.
    ours = encode_prompt(tokenizer, render_prompt(template, HUMAN), 16)
    assert inputs["input_ids"][0].tolist() == ours
    pixels = load_checkpoint(folder).transform(image)
    assert torch.allclose(inputs["pixel_values"][0], pixels, atol=1e-5)
    with torch.no_grad():
        theirs = exported.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = generate_texts(model, tokenizer, [pixels], [HUMAN], template, 12)
    assert processor.decode(theirs[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == expected[0]
    assert expected[0]
    # <image> is never generated, in transformers as in radlab
    assert exported.generation_config.suppress_tokens == [tokenizer.convert_tokens_to_ids("<image>")]


@pytest.mark.parametrize("template", ["vicuna_v1", "vicuna_v1_image_last"])
def test_the_exported_chat_template_gives_radlabs_ids_with_the_released_vicuna_tokenizer(tokenizer, tmp_path, template):
    """Vicuna's SentencePiece tokenizer (lmsys' files, tiny) starts a piece after <image> with "▁":
    the processor the export writes must still give the ids radlab trains with, in either order."""
    vicuna = load_tokenizer(vicuna_release(tmp_path / "vicuna", FINDINGS + [HUMAN]))
    tokens = TINY.vision.num_image_tokens
    processor = matching_processor(tmp_path, vicuna, CLIPImageProcessorPil(size={"shortest_edge": 64},
                                                                            crop_size={"height": 64, "width": 64}),
                                   llava_config(build_model(TINY, tokenizer, 256)), template, tokens)
    human = findings_prompt("cough")
    text = human.removeprefix("<image>\n")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(images=Image.new("RGB", (64, 64)), text=prompt)["input_ids"][0]
    assert list(ids) == encode_prompt(vicuna, render_prompt(template, human), tokens)


def test_merged_lora_equals_the_adapters(lora_checkpoint, tmp_path):
    model, folder = lora_checkpoint
    exported = LlavaForConditionalGeneration.from_pretrained(export_hf(folder, tmp_path / "hf")).eval()
    ids = torch.tensor([[1] + [4] * 16 + [40, 41, 42, 43]])
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        merged = exported(input_ids=ids, pixel_values=pixels).logits
        adapters = model(input_ids=ids, pixel_values=pixels).logits
        base = model.get_base_model()
        with model.disable_adapter():
            without = base(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(merged, adapters, atol=1e-4)
    assert not torch.allclose(merged, without, atol=1e-2)     # the adapters did change the model


def test_projectors_without_a_transformers_equivalent_are_refused(tokenizer, tmp_path):
    linear = ModelConfig.model_validate({"preset": "tiny", "projector": "linear"})
    folder = save_checkpoint(tmp_path / "ckpt", build_model(linear, tokenizer, 256), tokenizer, linear, None, {})
    with pytest.raises(ModelError, match="projector linear has no transformers LLaVA equivalent"):
        export_hf(folder, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    padded = ModelConfig.model_validate({"preset": "tiny", "vision": {"resize": "pad"}})
    folder = save_checkpoint(tmp_path / "pad", build_model(padded, tokenizer, 256), tokenizer, padded, None, {})
    with pytest.raises(ModelError, match=r"padded to a square \(model.vision.resize pad\), which transformers' CLIP"):
        export_hf(folder, tmp_path / "hf")


def test_cli_export_and_its_errors(lora_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from radlab.cli import app

    _, folder = lora_checkpoint
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(folder), "--format", "hf", "--merge-lora", "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").config.model_type == "llava"
    result = runner.invoke(app, ["export", str(folder), "--no-merge-lora", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "only merged (--merge-lora)" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "absent"), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "not a radlab checkpoint" in result.output
