import json
from collections import Counter

import pytest
import torch

from radlab.config import ConfigError, parse_experiment
from radlab.data.dataset import DataError, ReportDataset, load_examples, read_manifest, split_examples
from radlab.data.stats import experiment_cards, left_out_lines
from radlab.formats.batch import collate
from radlab.formats.images import ImageTransform
from radlab.formats.prompts import IGNORE_INDEX, VICUNA_SYSTEM, encode_example, render_prompt

RECORD = {"id": "a", "image": "img.png", "generate_method": "gpt4", "view": "PA", "indication": "cough",
          "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Clear lungs."}]}


def test_label_mask_trains_only_the_findings(tokenizer):
    encoded = encode_example(tokenizer, "vicuna_v1", "<image>\nDescribe.", "No pneumothorax.", 64, 2048)
    trained = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == " No pneumothorax.</s>"
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert encoded.input_ids.count(image_id) == 64
    assert all(label == IGNORE_INDEX for tok, label in zip(encoded.input_ids, encoded.labels) if tok == image_id)
    short = encode_example(tokenizer, "plain", "<image>", "No pneumothorax. " * 20, 64, 80)
    assert short.truncated and len(short.input_ids) == 80


def test_the_plain_template_ends_the_findings_with_a_newline_and_no_eos(tokenizer):
    # As LLaVA's preprocess_plain: <image> + findings + the plain conversation's separator "\n".
    encoded = encode_example(tokenizer, "plain", "<image>\nDescribe.", "No pneumothorax.", 16, 2048)
    trained = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "No pneumothorax.\n"
    assert tokenizer.eos_token_id not in encoded.input_ids
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.labels[0] == IGNORE_INDEX


def test_the_image_last_chat_puts_the_findings_at_one_distance_from_the_image(tokenizer):
    # The same chat turn with <image> at its end: whatever the indication's length, the findings
    # start the same number of tokens after the image; with the image first, they move with it.
    image_id = tokenizer.convert_tokens_to_ids("<image>")

    def gap(template: str, indication: str) -> int:
        human = f"<image>\nProvide a description of the findings given the following indication: {indication}"
        encoded = encode_example(tokenizer, template, human, "No pneumothorax.", 16, 2048)
        last_image = max(i for i, t in enumerate(encoded.input_ids) if t == image_id)
        first_target = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
        return first_target - last_image

    indications = ["cough", "chest pain after a fall from a ladder with shortness of breath"]
    assert len({gap("vicuna_v1_image_last", text) for text in indications}) == 1
    assert len({gap("vicuna_v1", text) for text in indications}) == 2
    prompt = render_prompt("vicuna_v1_image_last", "<image>\nDescribe.")
    assert prompt == f"{VICUNA_SYSTEM} USER: Describe.\n<image> ASSISTANT:"
    assert render_prompt("vicuna_v1", "<image>\nDescribe.") == f"{VICUNA_SYSTEM} USER: <image>\nDescribe. ASSISTANT:"


def test_manifest_forms_and_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([RECORD]))
    (tmp_path / "b.jsonl").write_text(json.dumps(RECORD) + "\n{broken\n")
    assert read_manifest(tmp_path / "a.json")[0]["id"] == "a"
    with pytest.raises(DataError, match=r"b.jsonl:2: not valid JSON"):
        read_manifest(tmp_path / "b.jsonl")
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "absent.jsonl")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "x", "image": "y"}) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl record 0: record lacks 'conversations'"):
        load_examples(tmp_path / "c.jsonl", None, ["PA"])


def test_views_methods_and_mixture_weights(tmp_path):
    records = [dict(RECORD, id=str(i), view="LATERAL" if i == 0 else "PA",
                    generate_method="rule-based" if i % 2 else "gpt4") for i in range(5)]
    records.append(dict(RECORD, id="empty", conversations=[RECORD["conversations"][0], {"from": "gpt", "value": " "}]))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert [e.id for e in load_examples(tmp_path / "m.jsonl", None, ["AP", "PA"])] == ["1", "2", "3", "4"]
    left_out = Counter()
    assert [e.id for e in load_examples(tmp_path / "m.jsonl", None, ["PA"], ["rule-based"], left_out)] == ["1", "3"]
    assert left_out == {"view LATERAL not in data.views": 1, "text gpt4 not in the source's text": 2,
                        "empty findings": 1}
    held_out = {"eval_manifest": str(tmp_path / "test.jsonl"), "val_manifest": str(tmp_path / "val.jsonl")}
    experiment = parse_experiment({"name": "m", "data": {
        "mixture": [{"name": "x", "manifest": str(tmp_path / "m.jsonl"), "weight": 1.5, "text": ["llm"]}],
        **held_out}, "eval": {"metrics": ["rouge_l"]}}, "test")
    assert [e.id for e in split_examples(experiment.data, "train")] == ["2", "4", "2"]
    for name in ("test", "val"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(RECORD) + "\n")
    cards = experiment_cards(experiment.data)
    assert cards[0].profile["left_out"] == {"text rule-based not in the source's text": 2,
                                            "view LATERAL not in data.views": 1, "empty findings": 1}
    assert left_out_lines(cards) == [("x: 4 of 6 records left out (text rule-based not in the source's text: 2, "
                                      "view LATERAL not in data.views: 1, empty findings: 1)")]
    # Two sources with images under different roots.
    experiment = parse_experiment({"name": "m", "data": {
        "mixture": [{"name": "a", "manifest": str(tmp_path / "m.jsonl"), "text": ["llm"]},
                    {"name": "b", "manifest": str(tmp_path / "m.jsonl"), "text": ["llm"], "image_root": "/b"}],
        "image_root": "/a", **held_out}, "eval": {"metrics": ["rouge_l"]}}, "test")
    assert [str(e.image.parent) for e in split_examples(experiment.data, "train")] == ["/a", "/a", "/b", "/b"]


def test_corrupt_image_is_skipped_and_counted(synthetic_root, tokenizer, tmp_path):
    examples = load_examples(synthetic_root / "train.jsonl", synthetic_root, ["AP", "PA"])[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    examples[1].image = broken
    dataset = ReportDataset(examples, tokenizer, "plain", 64, ImageTransform(64), 512)
    batch = collate([dataset[i] for i in range(3)], tokenizer.pad_token_id)
    assert batch["skipped"] == 1
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape == (2, 3, 64, 64)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    left = collate([dataset[0], dataset[2]], tokenizer.pad_token_id, left_pad=True)
    assert (left["attention_mask"][:, -1] == 1).all()


def test_prepared_examples_are_kept_up_to_the_cache_size(synthetic_root, tokenizer, tmp_path):
    """The examples a cache keeps come back identical after their images are gone; the ones past
    its size are read again (here: no longer there, skipped)."""
    originals = load_examples(synthetic_root / "train.jsonl", synthetic_root, ["AP", "PA"])[:4]
    for example in originals:
        copy = tmp_path / example.image.name
        copy.write_bytes(example.image.read_bytes())
        example.image = copy
    plain = ReportDataset(originals, tokenizer, "plain", 64, ImageTransform(64), 512)
    first = [plain[i] for i in range(4)]
    two = sum(64 * 64 + 36 * (len(item["input_ids"]) + len(item["labels"])) for item in first[:2])  # uint8 image, ids
    cached = ReportDataset(originals, tokenizer, "plain", 64, ImageTransform(64), 512, cache_bytes=two)
    assert all(torch.equal(cached[i]["pixel_values"], first[i]["pixel_values"]) for i in range(4))
    assert sorted(cached.decoded) == [0, 1] and sorted(cached.encoded) == [0, 1]
    for example in originals:
        example.image.unlink()
    again = [cached[i] for i in range(4)]
    for kept, item in zip(again[:2], first[:2]):
        assert torch.equal(kept["pixel_values"], item["pixel_values"]) and kept["input_ids"] == item["input_ids"]
        assert kept["labels"] == item["labels"]
    assert again[2:] == [None, None] and [plain[i] for i in range(4)] == [None] * 4


def _mimic_records(patients: int, studies: int = 2) -> list[dict]:
    return [dict(RECORD, id=f"{p}-{s}", generate_method="rule-based",
                 image=f"mimic/files/p10/p100{p:05d}/s5{p:04d}{s:03d}/img{s}.jpg")
            for p in range(patients) for s in range(studies)]


def test_validation_is_a_patient_level_carve_out_and_never_the_test_set(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in _mimic_records(200)))
    raw = {"name": "m", "data": {"mixture": [{"name": "mimic", "manifest": str(train)}],
                                 "eval_manifest": str(test), "val_fraction": 0.1},
           "eval": {"metrics": ["rouge_l"]}}
    data = parse_experiment(raw, "t").data
    # The test manifest does not even exist: training and validation never open it.
    val, training = split_examples(data, "val"), split_examples(data, "train")
    assert 20 <= len(val) <= 60 and len(val) + len(training) == 400
    assert {e.patient for e in val}.isdisjoint({e.patient for e in training})
    assert all(e.patient.startswith("p100") for e in val)
    assert [e.id for e in split_examples(data, "val")] == [e.id for e in val]  # seeded: the same every time
    reseeded = parse_experiment(raw | {"data": {**raw["data"], "val_seed": 1}}, "t").data
    assert {e.id for e in split_examples(reseeded, "val")} != {e.id for e in val}
    with pytest.raises(DataError, match="test.jsonl"):
        split_examples(data, "test")


@pytest.mark.parametrize("data, message", [
    ({"val_manifest": "TEST"}, "data.val_manifest is the test set"),
    ({"mixture": [{"name": "x", "manifest": "TEST"}]}, "data.mixture trains on the test set"),
])
def test_selecting_or_training_on_the_test_set_is_refused(tmp_path, data, message):
    test = str(tmp_path / "test.jsonl")
    data = {k: (test if v == "TEST" else [dict(s, manifest=test) for s in v] if isinstance(v, list) else v)
            for k, v in data.items()}
    raw = {"name": "m", "data": {"mixture": [{"name": "x", "manifest": str(tmp_path / "m.jsonl")}],
                                 "eval_manifest": test, **data}, "eval": {"metrics": ["rouge_l"]}}
    with pytest.raises(ConfigError, match=message):
        parse_experiment(raw, "t")
