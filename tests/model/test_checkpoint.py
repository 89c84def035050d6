import pytest
import torch
from safetensors.torch import load_file

from radlab.config import LoraConfig
from radlab.formats.images import ImageTransform
from radlab.model.build import ModelError, apply_lora, build_model, set_trainable
from radlab.model.checkpoint import is_resume_point, load_checkpoint, load_trainable, save_checkpoint

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
    with pytest.raises(ModelError, match=r"different model \(model.language.hidden_size is 128 in the checkpoint, 64 "
                                         r"here\): set model.language.hidden_size: 128 to use it"):
        load_checkpoint(tmp_path / "ckpt", expect=other)
    named = tiny(vision={"name": "biomedclip_cxr_518"})  # a field the checkpoint left unset: YAML's null
    with pytest.raises(ModelError, match=r"model.vision.name is null in the checkpoint, biomedclip_cxr_518 here\): "
                                         r"set model.vision.name: null to use it"):
        load_checkpoint(tmp_path / "ckpt", expect=named)
    with pytest.raises(ModelError, match="not a radlab checkpoint"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_keeps_the_image_transform_it_was_trained_with(tokenizer, tmp_path):
    """Its preprocessor_config.json; a checkpoint written before radlab saved one padded its images
    to a square with CLIP's statistics, and says so (model.vision.resize pad), so that a stage
    continuing it with cropped images is refused as a different model."""
    padded = tiny(vision={"resize": "pad"})
    save_checkpoint(tmp_path / "pad", build_model(padded, tokenizer), tokenizer, padded, None, {})
    assert load_checkpoint(tmp_path / "pad").transform == ImageTransform(64, resize="pad")
    folder = save_checkpoint(tmp_path / "old", build_model(tiny(), tokenizer), tokenizer, tiny(), None, {})
    assert load_checkpoint(folder).transform == ImageTransform(64, resize="crop")
    (folder / "preprocessor_config.json").unlink()
    old = load_checkpoint(folder)
    assert old.transform == ImageTransform(64, resize="pad") and old.model_config.vision.resize == "pad"
    with pytest.raises(ModelError, match=r"model.vision.resize is pad in the checkpoint, crop here\): set "
                                         r"model.vision.resize: pad to use it"):
        load_checkpoint(folder, expect=tiny())


def test_a_checkpoint_keeps_the_prompt_template_it_was_trained_on(tokenizer, tmp_path):
    """Evaluation, serving and the export prompt a model with the template it was trained on, read
    from the checkpoint, whatever the experiment they run in says."""
    model = build_model(tiny(), tokenizer)
    folder = save_checkpoint(tmp_path / "last", model, tokenizer, tiny(), None, {"template": "vicuna_v1_image_last"})
    assert load_checkpoint(folder).template == "vicuna_v1_image_last"
    unrecorded = save_checkpoint(tmp_path / "unrecorded", model, tokenizer, tiny(), None, {})
    assert load_checkpoint(unrecorded).template == "vicuna_v1"


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


def test_a_resume_point_holds_only_what_trains_and_goes_back_over_the_model_the_stage_began_from(
        tokenizer, tmp_path):
    lora = LoraConfig(r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    model = apply_lora(build_model(tiny(), tokenizer), lora).eval()
    set_trainable(model, ["projector", "lora"])
    with torch.no_grad():  # training moved what trains
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.normal_()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, tiny(), lora, {"stage": "stage2", "step": 3},
                    trainable_only=True)
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    trains = {name for name, param in model.named_parameters() if param.requires_grad}
    assert set(saved) == trains and all("lora_" in k or "multi_modal_projector" in k for k in saved)
    assert sum(v.numel() for v in saved.values()) < sum(v.numel() for v in model.state_dict().values()) / 3
    assert is_resume_point(tmp_path / "ckpt")
    with pytest.raises(ModelError, match=r"a resume point of stage2 \(step 3\) holding only the weights it trains"):
        load_checkpoint(tmp_path / "ckpt")

    torch.manual_seed(0)  # the stage's start, rebuilt as it began
    again = apply_lora(build_model(tiny(), tokenizer), lora).eval()
    load_trainable(again, tmp_path / "ckpt")
    batch = inputs(tokenizer)
    assert torch.equal(model(**batch).logits, again(**batch).logits)

    other = apply_lora(build_model(tiny(language={"hidden_size": 64}), tokenizer), lora)
    with pytest.raises(ModelError, match="saved weights do not fit the stage's model"):
        load_trainable(other, tmp_path / "ckpt")


def test_processes_that_write_the_same_folder_at_once_each_put_theirs_in_place(tmp_path):
    """Sweep trials that share a stage 0 copy its encoder out to the same folder when they end: a
    copy that appears between one's look and its rename is moved aside, not an error, and nothing
    is left beside the folder."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from radlab.model.checkpoint import atomic_folder

    for attempt in range(5):
        dest = tmp_path / f"encoder-{attempt}"
        together = threading.Barrier(8)

        def write(i: int) -> None:
            with atomic_folder(dest) as tmp:
                (tmp / "model.safetensors").write_bytes(bytes([i]) * 100_000)
                together.wait()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(8)))
        written = (dest / "model.safetensors").read_bytes()
        assert len(written) == 100_000 and len(set(written)) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"encoder-{attempt}" for attempt in range(5)]
