import torch

from radlab.config import parse_experiment
from radlab.data.synthetic import Finding, write_findings
from radlab.evaluation.generate import generate_findings
from radlab.evaluation.grounding import attribute_misses, flip_scores, grounding_checks, lateral_sentences
from radlab.model.build import build_model
from radlab.model.towers import image_transform

from ..conftest import experiment_dict

LEFT = write_findings([Finding("effusion", "left", None, "small"), Finding("nodule", "right", "upper")])
MIRRORED = write_findings([Finding("effusion", "right", None, "small"), Finding("nodule", "left", "upper")])


def test_lateral_sentences_name_one_side_each():
    assert lateral_sentences("There is a small left pleural effusion. Both lungs, left and right, are clear. "
                             "No pneumothorax.") == [("there is a small <side> pleural effusion.", "left")]


def test_flip_consistency_counts_sentences_whose_side_follows_the_mirror():
    assert flip_scores([LEFT], [MIRRORED]) == [[1.0, 1.0]]
    assert flip_scores([LEFT], [LEFT]) == [[0.0, 0.0]]  # a model that writes the same side either way
    # One finding followed the mirror, the other was dropped: half.
    assert flip_scores([LEFT], [write_findings([Finding("effusion", "right", None, "small")])]) == [[1.0, 0.0]]
    assert flip_scores([write_findings([])], [write_findings([])]) == [[]]


def test_attribute_misses_read_each_reference_finding():
    reference = write_findings([Finding("consolidation", "left", "lower", "moderate"), Finding("pneumothorax", "right",
                                                                                               None, "large")])
    candidate = write_findings([Finding("consolidation", "right", "lower", "small")])
    misses, report_of = attribute_misses([write_findings([]), reference], [LEFT, candidate])
    assert report_of == [1, 1]  # two findings, both in the second report (the first has none)
    assert {a: list(v) for a, v in misses.items()} == {
        "finding": [0.0, 1.0],  # the pneumothorax is missed
        "side": [1.0, 0.0], "zone": [0.0, 0.0], "severity": [1.0, 0.0]}


def test_a_model_that_ignores_the_image_is_caught(tokenizer, synthetic_root, tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, eval={"limit": 3, "max_new_tokens": 8}), "t")
    model = build_model(experiment.model, tokenizer).eval()
    with torch.no_grad():  # a projector that maps every image to the same embeddings
        for parameter in model.model.multi_modal_projector.parameters():
            parameter.zero_()
    transform = image_transform(experiment.model.vision)
    predictions = generate_findings(model, tokenizer, experiment, transform, "test", 3, template="vicuna_v1")
    metrics, table = grounding_checks(model, tokenizer, "vicuna_v1", experiment, transform, predictions)
    assert metrics["grounding/blank_image_identical_share"] == 1.0
    assert metrics["grounding/blank_image_rouge_l"] == 100.0
    assert table["blank_image"] == table["generated"] == [p["candidate"] for p in predictions]
    assert {"grounding/attribute_errors/finding", "grounding/blank_image_rouge_l_ci_low",
            "grounding/attribute_errors/side_ci_high", "grounding/blank_image_identical_share_ci_low"} <= metrics.keys()
