"""Import of the released LLaVA-Rad layout, on a tiny checkpoint written in exactly that layout."""

import io
import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import Dinov2Model, LlamaConfig, LlamaForCausalLM, ViTConfig, ViTModel

from radlab.config import ModelConfig, VisionConfig
from radlab.formats.images import CLIP_MEAN, CLIP_STD, ImageTransform
from radlab.formats.prompts import IGNORE_INDEX, IMAGE_TOKEN, VICUNA_SYSTEM, encode_example, findings_prompt, render_prompt
from radlab.formats.tokenizer import load_tokenizer
from radlab.model.build import ModelError, build_model
from radlab.model.checkpoint import load_checkpoint, save_checkpoint
from radlab.model.llava_rad import import_llava_rad, import_open_clip_vision
from radlab.model.towers import image_transform

WIDTH, LAYERS, PATCH, SIZE = 64, 2, 14, 28
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _timm_keys(vit: ViTModel) -> dict:
    """The weights of a ViT under open_clip's timm names: visual.trunk.*, fused qkv."""
    s = vit.state_dict()
    out = {"cls_token": s["embeddings.cls_token"], "pos_embed": s["embeddings.position_embeddings"],
           "patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"]}
    for i in range(LAYERS):
        a = f"layers.{i}."
        for part in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([s[f"{a}attention.{p}_proj.{part}"] for p in "qkv"])
            out[f"blocks.{i}.attn.proj.{part}"] = s[f"{a}attention.o_proj.{part}"]
            out[f"blocks.{i}.norm1.{part}"] = s[f"{a}layernorm_before.{part}"]
            out[f"blocks.{i}.norm2.{part}"] = s[f"{a}layernorm_after.{part}"]
            out[f"blocks.{i}.mlp.fc1.{part}"] = s[f"{a}mlp.fc1.{part}"]
            out[f"blocks.{i}.mlp.fc2.{part}"] = s[f"{a}mlp.fc2.{part}"]
    return {f"visual.trunk.{k}": v for k, v in out.items()} | {"visual.head.proj.weight": torch.randn(32, WIDTH),
                                                               "text.transformer.dummy": torch.zeros(1)}


@pytest.fixture()
def release(tmp_path):
    base = vicuna_release(tmp_path / "vicuna", FINDINGS + [VICUNA_SYSTEM, "USER: ASSISTANT:"], hidden_size=96)
    lm = LlamaForCausalLM.from_pretrained(base)  # float16, as released
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=1, intermediate_size=128,
                             image_size=SIZE, patch_size=PATCH, qkv_bias=True, layer_norm_eps=1e-6))
    vision = tmp_path / "biomedclipcxr_518"
    vision.mkdir()
    torch.save(_timm_keys(vit), vision / "open_clip_pytorch_model.bin")
    (vision / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 32, "vision_cfg": {
        "timm_model_name": "vit_tiny_test", "image_size": SIZE}}}))
    # The adapter as LLaVA's training script saved it with PEFT 0.4: adapter_config.json and
    # adapter_model.bin (keys without PEFT's adapter name), in the bf16 it trained in.
    adapter = tmp_path / "llava-rad"
    with warnings.catch_warnings():  # peft asks transformers for a property transformers deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(lm, PeftLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_((param.normal_(0, 0.3) if "lora_B" in name else param).bfloat16())
    peft_model.save_pretrained(adapter)
    saved = adapter / "adapter_model.safetensors"
    torch.save({k: v.bfloat16() for k, v in load_file(str(saved)).items()}, adapter / "adapter_model.bin")
    saved.unlink()
    projector = {"base_model.model.model.mm_projector.0.weight": torch.randn(96, WIDTH),
                 "base_model.model.model.mm_projector.0.bias": torch.randn(96),
                 "base_model.model.model.mm_projector.2.weight": torch.randn(96, 96),
                 "base_model.model.model.mm_projector.2.bias": torch.randn(96)}
    torch.save(projector, adapter / "non_lora_trainables.bin")
    return {"adapter": adapter, "base": base, "vision": vision, "vit": vit, "lm": peft_model, "projector": projector}


def test_import_reproduces_the_released_parts(release, tmp_path):
    out = import_llava_rad(release["adapter"], release["base"], release["vision"], tmp_path / "ckpt")
    loaded = load_checkpoint(out)
    assert loaded.model_config.vision.kind == "vit" and loaded.model_config.vision.image_size == SIZE
    assert loaded.lora.r == 4 and loaded.meta["source"] == "llava-rad"
    model = loaded.model.eval()
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model.get_base_model().model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        theirs = release["vit"].eval()(pixel_values=pixels, output_hidden_states=True)
        assert torch.allclose(ours.hidden_states[-2], theirs.hidden_states[-2], atol=1e-5)
        features = torch.randn(1, 3, WIDTH)
        p = release["projector"]
        hidden = torch.nn.functional.gelu(features @ p["base_model.model.model.mm_projector.0.weight"].T
                                          + p["base_model.model.model.mm_projector.0.bias"])
        expected = hidden @ p["base_model.model.model.mm_projector.2.weight"].T + p["base_model.model.model.mm_projector.2.bias"]
        assert torch.allclose(model.get_base_model().model.multi_modal_projector(features), expected, atol=1e-5)
        ids = torch.tensor([[1, 30, 31, 32, 33, 34]])
        text_logits = model(input_ids=ids).logits
        released = release["lm"].eval()(input_ids=ids).logits
        assert torch.allclose(text_logits[..., :400], released, atol=1e-3)  # base + LoRA, as released (+ <image>)


def test_an_open_clip_tower_converts_to_a_vit_folder_the_report_model_loads(release, tmp_path, tokenizer):
    out, kind = import_open_clip_vision(release["vision"], tmp_path / "vit")
    assert kind == "vit"
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        converted = ViTModel.from_pretrained(out).eval()(pixel_values=pixels, output_hidden_states=True)
        original = release["vit"].eval()(pixel_values=pixels, output_hidden_states=True)
        assert torch.allclose(converted.hidden_states[-2], original.hidden_states[-2], atol=1e-5)
    config = ModelConfig.model_validate({"preset": "tiny", "vision": {
        "kind": "vit", "path": str(out), "image_size": SIZE, "patch_size": PATCH, "select_layer": -2}})
    model = build_model(config, tokenizer, 256)
    assert torch.equal(model.model.vision_tower.state_dict()["layers.1.mlp.fc1.weight"],
                       release["vit"].state_dict()["layers.1.mlp.fc1.weight"])


def test_the_open_clip_image_transform_goes_with_the_tower(release, tmp_path):
    """The open_clip config's preprocess_cfg mean and std (open_clip's defaults, CLIP's, where it
    names none) become the converted tower's preprocessor_config.json, which a model on that tower
    and the imported LLaVA-Rad checkpoint use; a resize other than open_clip's default is refused."""
    vision = VisionConfig(kind="vit", image_size=SIZE, patch_size=PATCH)
    out, _ = import_open_clip_vision(release["vision"], tmp_path / "plain")
    assert image_transform(vision.model_copy(update={"path": str(out)})) == ImageTransform(SIZE, CLIP_MEAN, CLIP_STD)
    config = release["vision"] / "open_clip_config.json"
    raw = json.loads(config.read_text())
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    config.write_text(json.dumps({**raw, "preprocess_cfg": {"mean": mean, "std": std}}))
    out, _ = import_open_clip_vision(release["vision"], tmp_path / "own")
    assert image_transform(vision.model_copy(update={"path": str(out)})) == ImageTransform(SIZE, mean, std, "crop")
    checkpoint = import_llava_rad(release["adapter"], release["base"], release["vision"], tmp_path / "ckpt")
    assert load_checkpoint(checkpoint).transform == ImageTransform(SIZE, mean, std, "crop")
    with pytest.raises(ModelError, match=r"model.vision.resize is squash but .*own/preprocessor_config.json resizes "
                                         r"crop: set model.vision.resize: crop"):
        image_transform(vision.model_copy(update={"path": str(out), "resize": "squash"}))
    config.write_text(json.dumps({**raw, "preprocess_cfg": {"resize_mode": "squash"}}))
    with pytest.raises(ModelError, match=r"open_clip_config.json: preprocess_cfg resizes squash/bicubic"):
        import_open_clip_vision(release["vision"], tmp_path / "squashed")


def test_the_release_as_one_folder_imports(release, tmp_path):
    """microsoft/llava-rad as downloaded: the adapter, the projector, LLaVA's config.json and
    BiomedCLIP-CXR under the release's names (biomedclipcxr_518.json, an open_clip model config at
    the top level, and biomedclipcxr_518_checkpoint.pt, a training checkpoint) in one folder, named
    as both --adapter and --vision: the tower's files are found among the adapter's."""
    folder = release["adapter"]
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
                                                    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2}))
    model_cfg = json.loads((release["vision"] / "open_clip_config.json").read_text())["model_cfg"]
    (folder / "biomedclipcxr_518.json").write_text(json.dumps(model_cfg))
    weights = torch.load(release["vision"] / "open_clip_pytorch_model.bin", weights_only=True)
    torch.save({"epoch": 10, "state_dict": {f"module.{k}": v for k, v in weights.items()}},
               folder / "biomedclipcxr_518_checkpoint.pt")
    one = load_checkpoint(import_llava_rad(folder, release["base"], folder, tmp_path / "one"))
    apart = load_checkpoint(import_llava_rad(release["adapter"], release["base"], release["vision"], tmp_path / "apart"))
    assert one.model_config == apart.model_config
    ours, theirs = one.model.state_dict(), apart.model.state_dict()  # the same import, weight for weight
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    (folder / "biomedclipcxr_518_checkpoint.pt").rename(folder / "tower.pt")
    with pytest.raises(ModelError, match=r"one named after biomedclipcxr_518.json, found adapter_model.bin, "
                                         r"non_lora_trainables.bin, tower.pt"):
        import_open_clip_vision(folder, tmp_path / "vit")


def test_import_names_what_is_missing_or_wrong(release, tmp_path):
    (release["adapter"] / "non_lora_trainables.bin").unlink()
    with pytest.raises(ModelError, match="non_lora_trainables.bin: not found"):
        import_llava_rad(release["adapter"], release["base"], release["vision"], tmp_path / "ckpt")
    weights = release["vision"] / "open_clip_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    torch.save(state | {"visual.trunk.reg_token": torch.zeros(1, 4, WIDTH)}, weights)  # register tokens
    with pytest.raises(ModelError, match=r"1 weights of the timm image tower have no place in transformers' ViTModel "
                                         r"\(reg_token\)"):
        import_open_clip_vision(release["vision"], tmp_path / "vit")
    config = release["vision"] / "open_clip_config.json"
    config.rename(release["vision"] / "a.json")
    (release["vision"] / "b.json").write_text((release["vision"] / "a.json").read_text())
    with pytest.raises(ModelError, match=r"expected open_clip_config.json or one open_clip model config "
                                         r"\(\*.json with vision_cfg\), found a.json, b.json"):
        import_open_clip_vision(release["vision"], tmp_path / "vit")
    (release["vision"] / "b.json").unlink()
    (release["vision"] / "a.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"a.json: not valid JSON"):
        import_open_clip_vision(release["vision"], tmp_path / "vit")
    (release["vision"] / "a.json").unlink()
    config.write_text(json.dumps({"model_cfg": {"vision_cfg": {"image_size": SIZE}}}))
    weights.write_bytes(b"truncated")
    with pytest.raises(ModelError, match=r"open_clip_pytorch_model.bin: not a readable weights file"):
        import_open_clip_vision(release["vision"], tmp_path / "vit")
    torch.save({"visual.proj": torch.zeros(2)}, weights)
    with pytest.raises(ModelError, match="no timm ViT image tower"):
        import_llava_rad(release["adapter"], release["base"], release["vision"], tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


TIMM_TOWERS = Path(__file__).parent / "timm_towers"  # written by timm itself: see make.py there


def open_clip_folder(tmp_path: Path, name: str) -> Path:
    """An open_clip folder holding one of the timm-made trunks: the plain ViT under the Hub's names,
    the DINOv2 one as LLaVA-Rad releases BiomedCLIP-CXR (an open_clip model config and a training
    checkpoint, weights under state_dict with DDP's module. prefix)."""
    made = json.loads((TIMM_TOWERS / "made_with.json").read_text())
    folder = tmp_path / name
    folder.mkdir()
    trunk = load_file(str(TIMM_TOWERS / f"{name}_trunk.safetensors"))
    vision_cfg = {"timm_model_name": f"tiny_{name}", "timm_model_pretrained": False, "image_size": made["size"]}
    if name == "vit":
        torch.save(trunk, folder / "open_clip_pytorch_model.bin")
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": vision_cfg}}))
    else:
        torch.save({"epoch": 10, "name": "biomedclipcxr", "state_dict": {f"module.{k}": v for k, v in trunk.items()}},
                   folder / "biomedclipcxr_518_checkpoint.pt")
        (folder / "biomedclipcxr_518.json").write_text(json.dumps({"embed_dim": 32, "vision_cfg": vision_cfg}))
    return folder


@pytest.mark.parametrize("name, cls", [("vit", ViTModel), ("dinov2", Dinov2Model)])
def test_a_converted_timm_tower_gives_the_features_timm_computes(tmp_path, tokenizer, name, cls):
    """Against timm's own forward (recorded by timm in timm_towers/), not a round trip: the output of
    the second-to-last block without CLS, as LLaVA-Rad takes it; a plain ViT and a DINOv2 trunk with
    LayerScale. The report model built on the converted folder computes the same features."""
    out, kind = import_open_clip_vision(open_clip_folder(tmp_path, name), tmp_path / "converted")
    assert kind == name
    recorded = load_file(str(TIMM_TOWERS / f"{name}_features.safetensors"))
    with torch.no_grad():
        hidden = cls.from_pretrained(out).eval()(pixel_values=recorded["pixels"], output_hidden_states=True)
    assert torch.allclose(hidden.hidden_states[-2][:, 1:], recorded["features"], atol=1e-4)
    made = json.loads((TIMM_TOWERS / "made_with.json").read_text())
    config = ModelConfig.model_validate({"preset": "tiny", "vision": {
        "kind": name, "path": str(out), "image_size": made["size"], "patch_size": made["patch"],
        "hidden_size": made["width"], "layers": made["depth"], "heads": made["heads"], "select_layer": -2}})
    model = build_model(config, tokenizer, 256).eval()
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=recorded["pixels"], vision_feature_layer=-2,
                                                  vision_feature_select_strategy="default")
    projected = model.model.multi_modal_projector(recorded["features"])
    other = "vit" if name == "dinov2" else "dinov2"
    with pytest.raises(ModelError, match=f"model.vision.kind is {other} but .* holds a {name} tower: "
                                         f"set model.vision.kind: {name}"):
        build_model(config.model_copy(update={"vision": config.vision.model_copy(update={"kind": other})}), tokenizer)
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    assert torch.allclose(torch.stack(list(features)), projected, atol=1e-4)


def vicuna_release(folder: Path, texts: list[str], vocab_size: int = 400, hidden_size: int = 64) -> Path:
    """A Vicuna-7B v1.5 folder as lmsys releases it, tiny: a SentencePiece `tokenizer.model` (BPE
    with Llama 2's trainer settings: byte fallback, split digits, a dummy prefix, whitespace kept,
    <unk> <s> </s> as ids 0-2, no pad) and its tokenizer_config.json (LlamaTokenizer, legacy false,
    no pad token) and special_tokens_map.json, config.json (pad_token_id 0, float16),
    generation_config.json, and fp16 weights in two `pytorch_model-0000N-of-00002.bin` shards with
    `pytorch_model.bin.index.json`. No tokenizer.json, no safetensors: the release has neither."""
    import sentencepiece

    folder.mkdir(parents=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 20), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    token = {"__type": "AddedToken", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": False,
        "model_max_length": 4096, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", **{k: token | {"content": v} for k, v in specials.items()}}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {k: {"content": v, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
         for k, v in specials.items()}))
    # config.json with the release's keys (written by transformers 4.31: torch_dtype, not dtype), tiny shapes.
    (folder / "config.json").write_text(json.dumps({
        "_name_or_path": "vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": hidden_size, "initializer_range": 0.02, "intermediate_size": 2 * hidden_size,
        "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 4, "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.31.0", "use_cache": True,
        "vocab_size": vocab_size}, indent=2))
    torch.manual_seed(0)
    config = LlamaConfig.from_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 1, "do_sample": True, "eos_token_id": 2, "max_length": 4096, "pad_token_id": 0,
        "temperature": 0.9, "top_p": 0.6}))
    weights = {k: v.half() for k, v in LlamaForCausalLM(config).state_dict().items()}
    names = list(weights)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file, keys in shards.items():
        torch.save({k: weights[k] for k in keys}, folder / file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in weights.values())},
        "weight_map": {k: file for file, keys in shards.items() for k in keys}}))
    return folder


FINDINGS = ["Mild pulmonary edema.", "Clear lungs.", "Small left pleural effusion.", "Right pneumothorax.",
            "Heart size is normal.", "Low lung volumes with bibasilar atelectasis."]


def llava_ids(pieces, image_id: int, num_image_tokens: int, text: str) -> list[int]:
    """LLaVA's tokenizer_image_token: each chunk around <image> encoded whole, BOS once, the image in between."""
    before, after = text.split(IMAGE_TOKEN)
    return [1] + pieces.encode(before) + [image_id] * num_image_tokens + pieces.encode(after)


@pytest.mark.parametrize("legacy", [False, True, None])
def test_the_findings_are_encoded_as_in_the_whole_conversation_whatever_legacy_says(tmp_path, legacy):
    """radlab encodes the prompt and " {findings}" apart; SentencePiece alone would start the latter
    with a lone "▁" (its dummy prefix before the space) where the whole conversation has "▁Small".
    With a vocabulary that holds the findings' words whole, and tokenizer_config.json's `legacy`
    false, true or absent, the ids are those of the conversation encoded whole."""
    import sentencepiece

    folder = vicuna_release(tmp_path / "vicuna", FINDINGS + [VICUNA_SYSTEM, "USER: ASSISTANT:"], vocab_size=700)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("legacy")
    (folder / "tokenizer_config.json").write_text(json.dumps(config | ({} if legacy is None else {"legacy": legacy})))
    tokenizer = load_tokenizer(folder)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    findings = "Small left pleural effusion."
    assert pieces.encode(f" {findings}", out_type=str)[:2] == ["▁", "▁Small"]  # the lone "▁" to avoid
    human = findings_prompt("cough")
    chat = encode_example(tokenizer, "vicuna_v1", human, findings, 2, 2048)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert chat.input_ids == llava_ids(pieces, image_id, 2, f"{VICUNA_SYSTEM} USER: {human} ASSISTANT: {findings}") + [2]
    assert tokenizer.convert_ids_to_tokens([t for t in chat.labels if t != IGNORE_INDEX])[:2] == ["▁Small", "▁left"]


def test_the_released_vicuna_folder_trains_on_the_ids_and_labels_llava_rad_trains_on(tmp_path):
    """The release's tokenizer.model read by transformers: a stage 2 example's ids and labels are those
    LLaVA-Rad's preprocess_v1 builds (the whole conversation encoded by SentencePiece itself, the
    instruction masked up to "ASSISTANT:", the findings and </s> trained), a stage 1 example's those of
    preprocess_plain, and generation's prompt ends at "ASSISTANT:". The fp16 shards become the report
    model's language model in fp16, which computes what transformers' own Llama computes on the folder,
    and so does the model loaded from a checkpoint of it."""
    import sentencepiece

    folder = vicuna_release(tmp_path / "vicuna-7b-v1.5", FINDINGS + [VICUNA_SYSTEM, "USER: ASSISTANT:"])
    tokenizer = load_tokenizer(folder)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    image_id, n = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), 3
    assert tokenizer.pad_token == "<unk>" and image_id == len(pieces)  # pad = unk; <image> after the 400
    human, findings = findings_prompt("___ year old with cough // eval 2"), "Small left pleural effusion."

    chat = encode_example(tokenizer, "vicuna_v1", human, findings, n, 2048)
    conversation = f"{VICUNA_SYSTEM} USER: {human} ASSISTANT: {findings}"
    expected = llava_ids(pieces, image_id, n, conversation) + [2]
    instruction = len(llava_ids(pieces, image_id, n, conversation.split(" ASSISTANT: ")[0] + " ASSISTANT: ")) - 2
    assert chat.input_ids == expected
    assert chat.labels == [IGNORE_INDEX] * (1 + instruction) + expected[1 + instruction:]
    assert tokenizer.decode([t for t in chat.labels if t != IGNORE_INDEX]) == f"{findings}</s>"

    plain = encode_example(tokenizer, "plain", human, findings, n, 2048)
    expected = llava_ids(pieces, image_id, n, f"{IMAGE_TOKEN}{findings}\n")
    assert plain.input_ids == expected and plain.labels == [IGNORE_INDEX] * (1 + n) + expected[1 + n:]
    prompt = render_prompt("vicuna_v1", human)
    assert prompt.endswith("ASSISTANT:") and chat.input_ids[: len(llava_ids(pieces, image_id, n, prompt))] == \
        llava_ids(pieces, image_id, n, prompt)

    model = build_model(ModelConfig.model_validate({"preset": "tiny", "language": {"path": str(folder)}}), tokenizer)
    language = model.model.language_model
    assert language.embed_tokens.weight.dtype == torch.float16 and language.embed_tokens.weight.shape[0] == 401
    reference = LlamaForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([chat.input_ids[:5] + chat.input_ids[-6:]])
    with torch.no_grad():
        ours = model.lm_head(language(input_ids=ids).last_hidden_state)
        theirs = reference(input_ids=ids).logits
    assert reference.dtype == torch.float16 and torch.allclose(ours[..., :400].float(), theirs.float(), atol=1e-3)

    # A stage's checkpoint of it loads as it was saved, every weight in its own dtype (the lm_head too:
    # a float32 one would not take the float16 hidden states), and computes the same logits.
    saved = save_checkpoint(tmp_path / "stage1", model, tokenizer, ModelConfig.model_validate(
        {"preset": "tiny", "language": {"path": str(folder)}}), None, {"stage": "stage1"})
    loaded = load_checkpoint(saved).model
    assert {n: p.dtype for n, p in loaded.named_parameters()} == {n: p.dtype for n, p in model.named_parameters()}
    with torch.no_grad():
        again = loaded.lm_head(loaded.model.language_model(input_ids=ids).last_hidden_state)
    assert torch.equal(again, ours)
