import pytest
import torch
from transformers import CLIPModel, CLIPVisionModel

from radlab.config import ModelConfig, Stage0Config
from radlab.model.build import ModelError, build_model
from radlab.model.checkpoint import load_checkpoint, save_checkpoint
from radlab.model.encoder import build_encoder, load_encoder, save_encoder, set_encoder_trainable

TINY = ModelConfig.model_validate({"preset": "tiny"})


def _batch(tokenizer):
    ids = [tokenizer("There is a small left pleural effusion.", add_special_tokens=False)["input_ids"]
           + [tokenizer.eos_token_id], [7, 8, tokenizer.eos_token_id]]
    width = max(map(len, ids))
    return (torch.randn(2, 3, 64, 64), torch.tensor([s + [0] * (width - len(s)) for s in ids]),
            torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids]))


def test_embeddings_are_unit_norm_and_ignore_padding(tokenizer):
    torch.manual_seed(0)
    encoder = build_encoder(TINY, Stage0Config(), tokenizer).eval()
    pixels, ids, mask = _batch(tokenizer)
    images, texts = encoder(pixels, ids, mask)
    assert images.shape == texts.shape == (2, 64)
    assert torch.allclose(images.norm(dim=-1), torch.ones(2)) and torch.allclose(texts.norm(dim=-1), torch.ones(2))
    alone = encoder.encode_texts(ids[1:, :3], mask[1:, :3])   # the short report without its padding
    assert torch.allclose(alone, texts[1:], atol=1e-5)


def test_save_load_round_trip_and_the_tower_plugs_into_the_report_model(tokenizer, tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder(TINY, Stage0Config(loss="siglip"), tokenizer).eval()
    folder = save_encoder(tmp_path / "enc", encoder, tokenizer, TINY, Stage0Config(loss="siglip"), {"step": 3})
    loaded = load_encoder(folder)
    pixels, ids, mask = _batch(tokenizer)
    with torch.no_grad():
        assert all(torch.allclose(a, b) for a, b in zip(encoder(pixels, ids, mask), loaded.encoder.eval()(pixels, ids, mask)))
    assert loaded.encoder.logit_bias.item() == -10.0 and loaded.meta["step"] == 3
    # The folder is a CLIP folder: the pair and its image tower load with transformers, and the
    # tower as model.vision.path.
    clip = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.allclose(clip.get_image_features(pixel_values=pixels).pooler_output,
                              encoder.clip.get_image_features(pixel_values=pixels).pooler_output)
        assert torch.allclose(clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
                              encoder.clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output)
    tower = CLIPVisionModel.from_pretrained(folder)
    assert torch.equal(tower.state_dict()["encoder.layers.0.mlp.fc1.weight"],
                       encoder.clip.vision_model.state_dict()["encoder.layers.0.mlp.fc1.weight"])
    with_tower = ModelConfig.model_validate({"preset": "tiny", "vision": {"path": str(folder)}})
    llava = build_model(with_tower, tokenizer, 256)
    for key, value in encoder.clip.vision_model.state_dict().items():
        assert torch.equal(llava.model.vision_tower.state_dict()[key], value), key


def test_encoder_and_report_checkpoints_are_told_apart(tokenizer, tmp_path):
    encoder = build_encoder(TINY, Stage0Config(), tokenizer)
    enc = save_encoder(tmp_path / "enc", encoder, tokenizer, TINY, Stage0Config(), {})
    with pytest.raises(ModelError, match="stage 0 encoder, not a report model"):
        load_checkpoint(enc)
    report = save_checkpoint(tmp_path / "rep", build_model(TINY, tokenizer, 256), tokenizer, TINY, None, {})
    with pytest.raises(ModelError, match="retrieval needs a text tower"):
        load_encoder(report)


def test_towers_with_other_embedding_sizes_are_refused(tokenizer, tmp_path):
    encoder = build_encoder(TINY, Stage0Config(projection_dim=32), tokenizer)
    folder = save_encoder(tmp_path / "enc", encoder, tokenizer, TINY, Stage0Config(projection_dim=32), {})
    with_tower = ModelConfig.model_validate({"preset": "tiny", "vision": {"path": str(folder)}})
    with pytest.raises(ModelError, match=r"model.vision.path .* project to 32, stage0.projection_dim is 64"):
        build_encoder(with_tower, Stage0Config(projection_dim=64), tokenizer)


def test_trainable_parts_follow_the_stage0_section(tokenizer):
    encoder = build_encoder(TINY, Stage0Config(), tokenizer)
    set_encoder_trainable(encoder, Stage0Config(train=["vision"], freeze_vision_layers=1, learn_temperature=False))
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert "clip.vision_model.encoder.layers.1.mlp.fc1.weight" in trainable
    assert "clip.visual_projection.weight" in trainable
    assert not any("layers.0." in n or "embeddings" in n or "text_" in n for n in trainable)
    assert "clip.logit_scale" not in trainable and "logit_bias" not in trainable
    set_encoder_trainable(encoder, Stage0Config(train=["text"], loss="siglip"))
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert {"clip.logit_scale", "logit_bias", "clip.text_projection.weight"} <= trainable
    assert not any("vision" in n for n in trainable)
