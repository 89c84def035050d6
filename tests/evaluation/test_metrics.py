import pytest

from radlab.config import EvalConfig
from radlab.data.synthetic import Finding, write_findings
from radlab.evaluation.metrics import SCORERS, bleu, label_f1, normalise, rouge_l, score_of, text_and_clinical
from radlab.metric_specs import METRICS, SCORES


def test_identical_texts_score_full_marks():
    pairs = [("No pneumothorax. Small left effusion.", "No pneumothorax. Small left effusion.")] * 3
    assert rouge_l(pairs, 50)["text/rouge_l_f1"] == pytest.approx(100)
    assert bleu(pairs)["text/sacrebleu_bleu4"] == pytest.approx(100)


def test_rouge_l_hand_checked():
    # LCS of "a b c d" and "a c d e" is "a c d": P = R = 3/4, F1 = 0.75
    assert rouge_l([("a b c d", "a c d e")], 10)["text/rouge_l_f1"] == pytest.approx(75)


def test_phi_placeholders_are_normalised_alike():
    assert normalise("Dr. ___ saw XXXX.") == "Dr. PHI saw PHI."


def test_label_f1_hand_checked():
    e = Finding("effusion", "left", None, "small")
    n = Finding("nodule", "right", "upper")
    pairs = [(write_findings([e]), write_findings([e])),       # effusion TP
             (write_findings([e]), write_findings([n])),       # effusion FN, nodule FP
             (write_findings([]), write_findings([]))]
    out = label_f1(pairs)
    assert out["clinical/label_f1_micro"] == pytest.approx(100 * 2 / (2 + 1 + 1))
    assert out["clinical/label_f1_effusion"] == pytest.approx(100 * 2 / 3)
    assert out["clinical/label_f1_nodule"] == 0 and out["clinical/label_f1_pneumothorax"] == 100


def test_clinical_metrics_without_weights_are_skipped_with_a_reason():
    cfg = EvalConfig(metrics=["rouge_l", "chexbert_f1", "radgraph_f1", "label_f1"], bootstrap=10)
    values, skipped, *_ = text_and_clinical([("a", "a")], cfg, False)
    assert "text/rouge_l_f1" in values and "synthetic" in skipped["label_f1"]
    assert "chexbert_weights" in skipped["chexbert_f1"] and "radgraph_python" in skipped["radgraph_f1"]


def tiny_bert(folder):
    """A BERT built from a config with a local WordPiece vocabulary (no hub download)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "phi", *"the heart size is normal lungs are clear "
             "small left right pleural effusion no pneumothorax".split()]
    (folder / "vocab.txt").write_text("\n".join(words))
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), model_max_length=512).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    return folder


def test_bertscore_with_a_local_encoder_and_skipped_without(tmp_path):
    model = tiny_bert(tmp_path / "bert")
    same = [("the heart size is normal .", "the heart size is normal .")] * 2
    cfg = EvalConfig(metrics=["bertscore"], bootstrap=10, bertscore_model=model)
    values, skipped, per_report, _ = text_and_clinical(same, cfg, False)
    assert not skipped and values["text/bertscore_f1"] == pytest.approx(100, abs=1e-3)
    assert per_report["bertscore_f1"] == pytest.approx([100, 100], abs=1e-3)
    different = [("the heart size is normal .", "small left pleural effusion .")]
    values, *_ = text_and_clinical(different, cfg.model_copy(update={"bertscore_layers": 1}), False)
    assert values["text/bertscore_f1"] < 99
    values, skipped, *_ = text_and_clinical(same, cfg.model_copy(update={"bertscore_model": None}), False)
    assert not values and "eval.bertscore_model" in skipped["bertscore"]
    _, skipped, *_ = text_and_clinical(same, cfg.model_copy(update={"bertscore_model": tmp_path / "absent"}), False)
    assert "eval.bertscore_model: no encoder folder at" in skipped["bertscore"]


def test_corpus_metrics_carry_intervals_that_hold_their_point():
    e, n = Finding("effusion", "left", None, "small"), Finding("nodule", "right", "upper")
    pairs = [(write_findings([e]), write_findings([e])), (write_findings([e]), write_findings([n])),
             (write_findings([n]), write_findings([n])), (write_findings([]), write_findings([e]))] * 5
    out = bleu(pairs, 200) | label_f1(pairs, 200)
    for key in ("text/sacrebleu_bleu4", "text/sacrebleu_bleu1", "clinical/label_f1_micro", "clinical/label_f1_macro",
                "clinical/label_f1_effusion", "clinical/label_f1_nodule"):
        assert out[f"{key}_ci_low"] <= out[key] <= out[f"{key}_ci_high"], key
        assert out[f"{key}_ci_low"] < out[f"{key}_ci_high"], key  # the reports differ, so resamples do
    from sacrebleu.metrics import BLEU  # the point is sacrebleu's own corpus score
    assert out["text/sacrebleu_bleu4"] == pytest.approx(BLEU().corpus_score([c for _, c in pairs],
                                                                            [[r for r, _ in pairs]]).score)


def test_the_registry_is_the_one_list_of_metrics_and_scores():
    from typing import get_args

    from radlab.config import EvalConfig, Metric

    assert get_args(Metric) == tuple(METRICS)  # the config's choices are the registry's names
    assert set(SCORERS) == {name for name, spec in METRICS.items() if spec.scorer}
    assert all(spec.scores for spec in METRICS.values())
    with pytest.raises(ValueError, match="rouge_l"):
        EvalConfig(metrics=["rouge"])  # a name not in the registry is refused, listing the names
    assert score_of("chexprompt/significant_mean") == ("chexprompt", SCORES["chexprompt/significant_mean"])
    assert score_of("chexprompt/significant/false_finding")[1].higher_is_better is False
    assert score_of("clinical/radgraph_f1") == ("radgraph_f1", SCORES["clinical/radgraph_f1"])
    assert score_of("accuracy") is None and score_of("chexprompt/significant/typo") is None
