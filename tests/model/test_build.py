import pytest
import torch

from radlab.config import LoraConfig, ModelConfig
from radlab.model.build import ModelError, apply_lora, build_model, count_parameters, set_trainable


def tiny(**fields) -> ModelConfig:
    return ModelConfig.model_validate({"preset": "tiny", **fields})


def inputs(tokenizer, batch=2):
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[tokenizer.bos_token_id] + [image_id] * tiny().vision.num_image_tokens + [5, 6, 7]] * batch)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(batch, 3, 64, 64)}


def test_forward_and_generate_shapes(tokenizer):
    model = build_model(tiny(), tokenizer).eval()
    batch = inputs(tokenizer)
    logits = model(**batch).logits
    assert logits.shape == (2, 20, len(tokenizer))
    out = model.generate(**batch, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out.shape == (2, 25)
    total, _ = count_parameters(model)
    assert 0.5e6 < total < 1.5e6


def test_generation_with_and_without_kv_cache_agrees(tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny(), tokenizer).eval()
    batch = inputs(tokenizer, 1)
    cached = model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_image_changes_the_output(tokenizer):
    model = build_model(tiny(), tokenizer).eval()
    a, b = inputs(tokenizer, 1), inputs(tokenizer, 1)
    b["input_ids"] = a["input_ids"]
    assert not torch.allclose(model(**a).logits[0, -1], model(**b).logits[0, -1])


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_stage_freeze_rules(tokenizer):
    model = build_model(tiny(), tokenizer)
    set_trainable(model, ["projector"])
    names = trainable_names(model)
    assert names and all("multi_modal_projector" in n for n in names)
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    set_trainable(model, ["projector", "lora"])
    names = trainable_names(model)
    lora = {n for n in names if "lora_" in n}
    assert lora and all("language_model" in n for n in lora)
    assert names - lora and all("multi_modal_projector" in n for n in names - lora)
    assert not any("vision_tower" in n for n in names)
    set_trainable(model, ["projector", "lora", "embeddings"])
    assert {n for n in trainable_names(model) - names} == {
        "base_model.model.model.language_model.embed_tokens.weight"}


def test_lora_regex_must_stay_in_the_language_model(tokenizer):
    model = build_model(tiny(), tokenizer)
    with pytest.raises(ModelError, match="language model only"):
        apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=r".*\.(q_proj|v_proj)"))


def test_linear_projector(tokenizer):
    model = build_model(tiny(projector="linear"), tokenizer)
    projector = model.model.multi_modal_projector
    assert [type(m).__name__ for m in projector.children()] == ["Linear"]
    assert model(**inputs(tokenizer)).logits.shape[1] == 20


def test_open_clip_tower_is_a_clear_error(tokenizer):
    paper = ModelConfig.model_validate({"preset": "llava-rad-7b"})
    assert paper.vision.num_image_tokens == 1369 and paper.vision.kind == "dinov2"
    with pytest.raises(ModelError, match="radlab import open-clip-vision"):
        build_model(ModelConfig.model_validate({"preset": "tiny", "vision": {"kind": "open_clip"}}), tokenizer)


def test_tuned_encoder_trains_only_the_layers_llava_reads(tokenizer):
    model = build_model(tiny(vision={"select_layer": -2}), tokenizer)
    set_trainable(model, ["vision"])
    names = trainable_names(model)
    assert any("encoder.layers.0." in n for n in names)
    assert not any("encoder.layers.1." in n or "post_layernorm" in n for n in names)
    batch = inputs(tokenizer)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _llama_folder(path, vocab_size: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_pretrained_language_model_brings_its_own_tokenizer(tokenizer, tmp_path, synthetic_root):
    from radlab.config import parse_experiment
    from radlab.formats.tokenizer import load_tokenizer
    from radlab.pipeline import prepare_tokenizer

    from ..conftest import experiment_dict

    own = _llama_folder(tmp_path / "lm", tokenizer.vocab_size, tokenizer)
    raw = experiment_dict(synthetic_root, tmp_path, model={"language": {"path": str(own)}})
    folder = prepare_tokenizer(parse_experiment(raw, "t"), "digest")
    assert load_tokenizer(folder).get_vocab() == load_tokenizer(own).get_vocab()  # not a BPE trained on the reports
    model = build_model(parse_experiment(raw, "t").model, load_tokenizer(folder))
    assert model.get_input_embeddings().weight.shape[0] >= len(load_tokenizer(folder))


def test_the_tokenizer_is_prepared_on_the_driver_when_the_runs_are_kept_behind_a_url(tmp_path, synthetic_root,
                                                                                      monkeypatch):
    """With ray.storage_path on s3:// the tokenizer folder is the driver's own (the workers get its
    files with their job), not a folder named after the URL in the working directory."""
    import tempfile

    from radlab.config import parse_experiment
    from radlab.formats.tokenizer import TokenizerFiles, load_tokenizer
    from radlab.pipeline import prepare_tokenizer

    from ..conftest import experiment_dict

    (tmp_path / "scratch").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    monkeypatch.chdir(tmp_path / "work")
    raw = experiment_dict(synthetic_root, tmp_path, ray={"storage_path": "s3://bucket/radlab/ray"})
    folder = prepare_tokenizer(parse_experiment(raw, "t"), "digest")
    assert folder.is_relative_to(tmp_path / "scratch" / "radlab" / "tokenizers")
    assert list((tmp_path / "work").iterdir()) == []
    carried = TokenizerFiles.read(folder)
    assert "tokenizer.json" in carried.files
    assert carried.load().get_vocab() == load_tokenizer(folder).get_vocab()


def test_trials_that_prepare_the_same_tokenizer_at_once_each_read_a_whole_one(tmp_path, synthetic_root):
    """Sweep trials starting together train the same tokenizer into the same folder: none of them
    reads another's half-written files, and no temporary folder is left beside it."""
    from concurrent.futures import ThreadPoolExecutor

    from radlab.config import parse_experiment
    from radlab.formats.tokenizer import TokenizerFiles
    from radlab.pipeline import prepare_tokenizer

    from ..conftest import experiment_dict

    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path), "t")

    def prepare_and_read(_):
        return TokenizerFiles.read(prepare_tokenizer(experiment, "digest")).load().get_vocab()

    with ThreadPoolExecutor(6) as pool:
        vocabularies = list(pool.map(prepare_and_read, range(12)))
    assert all(vocabulary == vocabularies[0] for vocabulary in vocabularies)
    assert [path.name for path in (tmp_path / "ray" / "tokenizers").iterdir()] == [prepare_tokenizer(experiment, "digest").name]


def test_a_tokenizer_trained_on_the_reports_has_the_vocabulary_size_asked_for(tmp_path, synthetic_root):
    """model.language.vocab_size reaches the BPE trained on the reports: a tokenizer trained for
    another size on the same data is not reused for it."""
    from radlab.config import parse_experiment
    from radlab.formats.tokenizer import load_tokenizer
    from radlab.pipeline import prepare_tokenizer

    from ..conftest import experiment_dict

    sizes = {}
    for vocab_size in (300, 400):
        raw = experiment_dict(synthetic_root, tmp_path, model={"language": {"vocab_size": vocab_size}})
        sizes[vocab_size] = len(load_tokenizer(prepare_tokenizer(parse_experiment(raw, "t"), "digest")))
    assert sizes == {300: 300, 400: 400}


def test_a_tokenizer_folder_an_interrupted_save_left_is_refused_naming_it(tmp_path, synthetic_root):
    from radlab.config import parse_experiment
    from radlab.errors import RadlabError
    from radlab.pipeline import prepare_tokenizer

    from ..conftest import experiment_dict

    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path), "t")
    folder = prepare_tokenizer(experiment, "digest")
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(RadlabError, match=rf"{folder} holds no tokenizer_config.json .*remove the folder"):
        prepare_tokenizer(experiment, "digest")


def test_a_tokenizer_that_does_not_match_the_embeddings_is_refused(tokenizer, tmp_path, synthetic_root):
    from radlab.config import parse_experiment
    from radlab.pipeline import prepare_tokenizer

    from ..conftest import experiment_dict

    vicuna_sized = _llama_folder(tmp_path / "vicuna", 32000, tokenizer)
    with pytest.raises(ModelError, match=rf"has {tokenizer.vocab_size} tokens but model.language.path .*vicuna has "
                                         r"32000 embedding rows: leave model.tokenizer empty"):
        build_model(tiny(language={"path": str(vicuna_sized)}), tokenizer)
    raw = experiment_dict(synthetic_root, tmp_path, model={"language": {"path": str(vicuna_sized)}})
    with pytest.raises(ModelError, match="32000 embedding rows"):
        prepare_tokenizer(parse_experiment(raw, "t"), "digest")


def test_a_pretrained_language_model_computes_as_transformers_loads_it(tokenizer, tmp_path):
    """Built around a pretrained language model saved in fp16 (as Vicuna's weights are), the model
    holds it in fp16 as transformers' own LlamaForCausalLM loads it from the same folder, computes
    what that model computes, and builds and initialises the tower and projector in fp32; nothing
    is left on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path / "vicuna"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2)).to(torch.float16).save_pretrained(folder)
    model = build_model(tiny(language={"path": str(folder)}, projector="mlp2x_gelu"), tokenizer).eval()
    reference = LlamaForCausalLM.from_pretrained(folder).eval()
    assert {p.dtype for p in model.model.language_model.parameters()} == {torch.float16} == {reference.dtype}
    assert {p.dtype for p in [*model.model.vision_tower.parameters(),
                              *model.model.multi_modal_projector.parameters()]} == {torch.float32}
    assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    ids = tokenizer("There is a small left pleural effusion.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    projector = model.model.multi_modal_projector.linear_1
    assert 0.01 < projector.weight.std().item() < 0.03 and not projector.bias.any()
    batch = inputs(tokenizer)  # the image path, outside autocast: the head shares the base's dtype
    loss = model.train()(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss) and projector.weight.grad.abs().sum() > 0


def test_a_ddp_stage_may_not_step_half_precision_weights(tokenizer, tmp_path, synthetic_root):
    """Vicuna's folder holds fp16 weights, which the model keeps: full fine-tuning under DDP would
    step them in fp16. Refused by `radlab validate` and before a run starts, with what to set;
    LoRA, DeepSpeed and an fp32 folder are not."""
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM
    from typer.testing import CliRunner

    from radlab.cli import app
    from radlab.config import parse_experiment
    from radlab.model.build import check_half_weights_stepped

    from ..conftest import experiment_dict

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(tmp_path / "vicuna")
    LlamaForCausalLM(config).save_pretrained(tmp_path / "fp32")

    def experiment(folder, **sections):
        raw = experiment_dict(synthetic_root, tmp_path, model={"language": {"path": str(tmp_path / folder)}},
                              stage1={"train": ["projector"]})
        return parse_experiment({**raw, **{k: {**raw.get(k, {}), **v} for k, v in sections.items()}}, "t")

    full = {"stage2": {"train": ["projector", "language"], "lora": None}}
    with pytest.raises(ModelError, match=r"stage2.train: language under DDP would step the float16 weights of "
                                         r"model.language.path .*vicuna in float16: set ray.deepspeed: zero2"):
        check_half_weights_stepped(experiment("vicuna", **full))
    with pytest.raises(ModelError, match=r"stage1.train: language and embeddings under DDP"):
        check_half_weights_stepped(experiment("vicuna", stage1={"train": ["projector", "language", "embeddings"]}))
    check_half_weights_stepped(experiment("vicuna"))  # the projector, then LoRA
    check_half_weights_stepped(experiment("vicuna", ray={"deepspeed": "zero2"}, **full))
    check_half_weights_stepped(experiment("fp32", **full))
    raw = experiment_dict(synthetic_root, tmp_path, model={"language": {"path": str(tmp_path / "vicuna")}},
                          stage1={"train": ["projector"]}, **full)
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and "stage2.train: language under DDP" in result.output
