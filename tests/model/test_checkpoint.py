import pytest
import torch

from radlab.config import LoraConfig
from radlab.model.build import ModelError, apply_lora, build_model
from radlab.model.checkpoint import load_checkpoint, save_checkpoint

from .test_build import inputs, tiny


def test_round_trip_with_lora_gives_the_same_logits(tokenizer, tmp_path):
    lora = LoraConfig(r=4, alpha=8, dropout=0.0)
    model = apply_lora(build_model(tiny(), tokenizer), lora).eval()
    with torch.no_grad():  # make the adapters non-trivial
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, tiny(), lora, {"stage": "stage2", "step": 3})
    loaded = load_checkpoint(tmp_path / "ckpt", expect=tiny())
    batch = inputs(tokenizer)
    assert loaded.meta["step"] == 3 and loaded.lora == lora
    assert torch.allclose(model(**batch).logits, loaded.model.eval()(**batch).logits, atol=1e-6)


def test_checkpoint_of_another_model_is_refused(tokenizer, tmp_path):
    save_checkpoint(tmp_path / "ckpt", build_model(tiny(), tokenizer), tokenizer, tiny(), None, {})
    other = tiny(language={"hidden_size": 64})
    with pytest.raises(ModelError, match=r"different model \(model.language.hidden_size differ\)"):
        load_checkpoint(tmp_path / "ckpt", expect=other)
    with pytest.raises(ModelError, match="not a radlab checkpoint"):
        load_checkpoint(tmp_path)


def test_failed_write_leaves_the_previous_checkpoint_intact(tokenizer, tmp_path):
    model = build_model(tiny(), tokenizer)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, tiny(), None, {"step": 1})

    class BrokenTokenizer:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", model, BrokenTokenizer(), tiny(), None, {"step": 2})
    assert load_checkpoint(tmp_path / "ckpt").meta["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
