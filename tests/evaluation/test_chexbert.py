import numpy as np
import pytest
import torch

from radlab.config import EvalConfig
from radlab.data.synthetic import chexpert_labels, draw_findings, write_findings
from radlab.evaluation.chexbert import (
    BLANK,
    NEGATIVE,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    CheXbert,
    chexbert_labels,
    disagreements,
    f1_from_labels,
    label_reports,
    load_labeler,
    positive,
)
from radlab.evaluation.metrics import text_and_clinical


def reports(seed: int, n: int) -> tuple[list[str], np.ndarray]:
    """Synthetic findings texts and their exact presence labels in the labeler's observation order."""
    rng = np.random.default_rng(seed)
    drawn = [draw_findings(rng) for _ in range(n)]
    present = np.array([[chexpert_labels(f)[name] == 1.0 for name in OBSERVATIONS] for f in drawn])
    return [write_findings(f) for f in drawn], present


@pytest.fixture(scope="module")
def labeler(tmp_path_factory):
    """A tiny labeler trained here on synthetic reports, saved the way the StanfordAIMI release
    ships chexbert.pth (model_state_dict, keys under `module.`, the old position_ids buffer) beside a
    BERT folder with its own WordPiece vocabulary: the stand-in for the real weights."""
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertConfig, BertTokenizerFast

    folder = tmp_path_factory.mktemp("chexbert")
    texts, present = reports(0, 384)
    words = sorted({w for t in texts for w, _ in BertPreTokenizer().pre_tokenize_str(t.lower())})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    bert = folder / "bert"
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), model_max_length=128).save_pretrained(bert)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    config.save_pretrained(bert)
    torch.manual_seed(0)
    model = CheXbert(config)
    tokenizer = BertTokenizerFast.from_pretrained(bert)
    targets = torch.tensor(np.where(present, POSITIVE, BLANK))
    targets[:, -1] = torch.tensor(present[:, -1]).long()  # No Finding: yes/no
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(200):
        rows = torch.randint(len(texts), (32,))
        batch = tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt")
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = sum(torch.nn.functional.cross_entropy(head, targets[rows, i]) for i, head in enumerate(logits))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.bert.embeddings.position_ids"] = torch.arange(128)[None]
    torch.save({"epoch": 1, "model_state_dict": state}, folder / "chexbert.pth")
    return folder / "chexbert.pth", bert


def test_the_labeler_loads_from_the_release_format_and_reads_findings(labeler):
    model, tokenizer = load_labeler(*labeler)
    texts, present = reports(1, 64)
    assert (positive(label_reports(model, tokenizer, texts), False) == present).all(axis=1).mean() >= 0.95


def test_f1_chexbert_agrees_with_the_exact_labels(labeler):
    from sklearn.metrics import f1_score

    texts, present = reports(2, 64)
    pairs = list(zip(texts, texts[1:] + texts[:1]))
    scores = f1_from_labels(*chexbert_labels(pairs, *labeler))
    exact = f1_score(present, np.roll(present, -1, axis=0), average="micro", zero_division=0) * 100
    assert scores["clinical/chexbert_f1_micro_14"] == pytest.approx(exact, abs=5)
    same = chexbert_labels([(t, t) for t in texts], *labeler)
    assert f1_from_labels(*same)["clinical/chexbert_f1_micro_14"] == pytest.approx(100)
    assert (disagreements(*same) == 0).all()


def test_uncertain_counts_as_negative_and_as_positive_under_plus():
    reference = np.full((2, len(OBSERVATIONS)), BLANK)
    candidate = reference.copy()
    cardiomegaly, fracture = OBSERVATIONS.index("Cardiomegaly"), OBSERVATIONS.index("Fracture")
    reference[0, cardiomegaly] = POSITIVE
    candidate[0, cardiomegaly] = UNCERTAIN
    reference[1, fracture] = candidate[1, fracture] = POSITIVE
    reference[1, cardiomegaly] = NEGATIVE
    scores = f1_from_labels(reference, candidate)
    assert scores["clinical/chexbert_f1_micro_14"] == pytest.approx(100 * 2 / 3)  # tp 1 (fracture), fn 1
    assert scores["clinical/chexbert_plus_f1_micro_14"] == pytest.approx(100)
    assert scores["clinical/chexbert_f1_micro_5"] == 0  # fracture is not one of the five
    assert scores["clinical/chexbert_plus_f1_macro_5"] == pytest.approx(100 / 5)  # 1 of 5 observations seen
    assert disagreements(reference, candidate).tolist() == [1, 0]  # uncertain cardiomegaly counts as absent


def test_missing_or_wrong_scorer_files_skip_the_metric_and_keep_the_rest(tmp_path, labeler):
    pairs = [("No pneumothorax.", "No pneumothorax.")]
    values, skipped, _ = text_and_clinical(pairs, EvalConfig(metrics=["rouge_l", "chexbert_f1"], bootstrap=10), False)
    assert "text/rouge_l_f1" in values and "eval.chexbert_weights" in skipped["chexbert_f1"]
    torch.save({"model_state_dict": {"module.head.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    cfg = EvalConfig(metrics=["rouge_l", "chexbert_f1"], bootstrap=10, chexbert_weights=tmp_path / "other.pth",
                     chexbert_bert=labeler[1])
    values, skipped, _ = text_and_clinical(pairs, cfg, False)
    assert "text/rouge_l_f1" in values and str(tmp_path / "other.pth") in skipped["chexbert_f1"]
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    _, skipped, _ = text_and_clinical(pairs, cfg.model_copy(update={"chexbert_weights": tmp_path / "garbage.pth"}), False)
    assert str(tmp_path / "garbage.pth") in skipped["chexbert_f1"]
    _, skipped, _ = text_and_clinical(pairs, cfg.model_copy(update={"chexbert_bert": tmp_path}), False)
    assert f"eval.chexbert_bert: {tmp_path}" in skipped["chexbert_f1"]
    values, _, per_report = text_and_clinical(pairs, cfg.model_copy(update={"chexbert_weights": labeler[0]}), False)
    assert values["clinical/chexbert_f1_micro_14"] == pytest.approx(100)
    assert per_report == {"rouge_l_f1": [100.0], "chexbert_disagreements": [0]}
    chexbert = [k for k in values if k.startswith("clinical/chexbert") and not k.endswith(("_ci_low", "_ci_high"))]
    assert len(chexbert) == 8 and all(values[f"{k}_ci_low"] <= values[k] <= values[f"{k}_ci_high"] for k in chexbert)
