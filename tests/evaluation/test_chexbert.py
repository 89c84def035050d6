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
    CHEXBERT_F1,
    disagreements,
    f1_statistics,
    label_codes,
    label_reports,
    load_labeler,
    positive,
)
from radlab.evaluation.metrics import text_and_clinical


def f1_from_labels(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Every F1-CheXbert variant of two label arrays."""
    summed = f1_statistics(reference, candidate).sum(0)
    return {key: score(summed) for key, score in CHEXBERT_F1.items()}


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
    values, skipped, *_ = text_and_clinical(pairs, EvalConfig(metrics=["rouge_l", "chexbert_f1"], bootstrap=10), False)
    assert "text/rouge_l_f1" in values and "eval.chexbert_weights" in skipped["chexbert_f1"]
    torch.save({"model_state_dict": {"module.head.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    cfg = EvalConfig(metrics=["rouge_l", "chexbert_f1"], bootstrap=10, chexbert_weights=tmp_path / "other.pth",
                     chexbert_bert=labeler[1])
    values, skipped, *_ = text_and_clinical(pairs, cfg, False)
    assert "text/rouge_l_f1" in values and str(tmp_path / "other.pth") in skipped["chexbert_f1"]
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    skipped = text_and_clinical(pairs, cfg.model_copy(update={"chexbert_weights": tmp_path / "garbage.pth"}),
                                False).skipped
    assert str(tmp_path / "garbage.pth") in skipped["chexbert_f1"]
    skipped = text_and_clinical(pairs, cfg.model_copy(update={"chexbert_bert": tmp_path}), False).skipped
    assert f"eval.chexbert_bert: {tmp_path}" in skipped["chexbert_f1"]
    values, _, per_report, labels = text_and_clinical(pairs, cfg.model_copy(update={"chexbert_weights": labeler[0]}),
                                                      False)
    assert values["clinical/chexbert_f1_micro_14"] == pytest.approx(100)
    assert per_report == {"rouge_l_f1": [100.0], "chexbert_disagreements": [0]}
    # What a paired test needs: each side's 14 classes, as the labeler read them.
    read = label_codes(chexbert_labels(pairs, *labeler)[0])
    assert labels == {"labels/chexbert_reference": read, "labels/chexbert_candidate": read} and len(read[0]) == 14
    chexbert = [k for k in values if k.startswith("clinical/chexbert") and not k.endswith(("_ci_low", "_ci_high"))]
    assert len(chexbert) == 8 and all(values[f"{k}_ci_low"] <= values[k] <= values[f"{k}_ci_high"] for k in chexbert)


def test_every_f1_variant_is_scikit_learns_from_summed_report_statistics():
    """The F1s are computed from each report's true and false positives and negatives (what pairs
    two systems report by report); each equals scikit-learn's f1_score on the labels."""
    from sklearn.metrics import f1_score

    from radlab.evaluation.chexbert import FIVE

    rng = np.random.default_rng(5)
    reference, candidate = rng.integers(0, 4, (2, 50, len(OBSERVATIONS)))
    reference[:, -1], candidate[:, -1] = reference[:, -1] % 2, candidate[:, -1] % 2
    candidate[:, 0] = BLANK  # an observation the candidate never reports: macro counts its F1 as 0
    scores = f1_from_labels(reference, candidate)
    five = [OBSERVATIONS.index(name) for name in FIVE]
    for suffix, uncertain_positive in (("", False), ("_plus", True)):
        truth, guess = positive(reference, uncertain_positive), positive(candidate, uncertain_positive)
        for n, columns in (("14", slice(None)), ("5", five)):
            for average in ("micro", "macro"):
                expected = 100 * f1_score(truth[:, columns], guess[:, columns], average=average, zero_division=0)
                assert scores[f"clinical/chexbert{suffix}_f1_{average}_{n}"] == pytest.approx(expected)
    assert len(scores) == 8


def test_two_systems_f1_chexbert_is_compared_through_each_reports_labels():
    """F1-CheXbert has no per-report score: two systems are paired through the labels read off each
    report (as a per-report table logs them), a study's images drawn and swapped together."""
    from radlab.evaluation.compare import compare_corpus, patients_by_id

    rng = np.random.default_rng(8)
    reference = np.where(rng.random((60, len(OBSERVATIONS))) < 0.3, POSITIVE, BLANK)
    reference[:, -1] = (reference[:, :-1] == BLANK).all(1)
    close = np.where(rng.random((60, 1)) < 0.85, reference, rng.permutation(reference))
    far = rng.permutation(reference)

    def reports(candidate):
        return [{"id": f"s{i}", "reference": "r", "candidate": "c", "labels/chexbert_reference": ref,
                 "labels/chexbert_candidate": cand}
                for i, (ref, cand) in enumerate(zip(label_codes(reference), label_codes(candidate)))]

    metrics = ["clinical/chexbert_f1_micro_14", "clinical/chexbert_f1_macro_5"]
    rows = compare_corpus(reports(close), reports(far), metrics, 300)
    for row in rows:
        expected = f1_from_labels(reference, close)[row["metric"]] - f1_from_labels(reference, far)[row["metric"]]
        assert row["n"] == 60 and row["difference"] == pytest.approx(expected)
        assert 0 < row["ci_low"] < row["difference"] < row["ci_high"] and row["p_value"] < 0.05

    def doubled(system):  # each study's two images: two reports of one patient
        return [{**p, "id": f"{p['id']}-{view}", "patient": p["id"]} for p in system for view in ("AP", "PA")]

    twice = compare_corpus(doubled(reports(close)), doubled(reports(far)), metrics, 300,
                           patients_by_id(doubled(reports(close))))
    assert all(double | {"n": 60} == pytest.approx(row) for double, row in zip(twice, rows))
    same = compare_corpus(reports(close), reports(close), metrics, 300)
    assert all(row["difference"] == 0 and row["p_value"] == 1.0 for row in same)
    unlabelled = [{**p, "labels/chexbert_candidate": None} for p in reports(far)[:10]] + reports(far)[10:]
    assert compare_corpus(reports(close), unlabelled, metrics[:1], 300)[0]["n"] == 50  # only reports both labelled


def test_radlab_eval_compares_two_prediction_files_on_f1_chexbert(labeler, tmp_path, monkeypatch):
    """`radlab eval --predictions --baseline` with the labeler configured: the per-report table
    logs each side's labels and the paired comparison has an F1-CheXbert row that finds the better file."""
    import json
    from pathlib import Path

    import yaml
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from radlab.cli import app

    monkeypatch.chdir(tmp_path)
    texts, _ = reports(4, 40)
    rng = np.random.default_rng(4)
    lines = {"refs": [{"id": i, "reference": t} for i, t in enumerate(texts)],
             "close": [{"id": i, "candidate": t if rng.random() < 0.9 else texts[0]} for i, t in enumerate(texts)],
             "far": [{"id": i, "candidate": texts[j]} for i, j in enumerate(rng.permutation(len(texts)))]}
    for name, records in lines.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({"name": "eval", "data": {"synthetic": {}}, "eval": {
        "metrics": ["rouge_l", "chexbert_f1"], "bootstrap": 200, "chexbert_weights": str(labeler[0]),
        "chexbert_bert": str(labeler[1])}}))
    result = CliRunner().invoke(app, ["eval", "eval.yaml", "--predictions", "close.jsonl", "--baseline", "far.jsonl",
                                      "--references", "refs.jsonl"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{tmp_path}/radlab_runs/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("eval").experiment_id])[0]
    metrics = run.data.metrics
    assert metrics["predictions_vs_baseline/clinical/chexbert_f1_micro_14/difference"] == pytest.approx(
        metrics["clinical/chexbert_f1_micro_14"] - metrics["baseline/clinical/chexbert_f1_micro_14"])
    assert metrics["predictions_vs_baseline/clinical/chexbert_f1_micro_14/p_value"] < 0.05
    assert "clinical/chexbert_f1_micro_14" in result.output
    logged = client.download_artifacts(run.info.run_id, "eval/trained/per_report.json", str(tmp_path))
    table = json.loads(Path(logged).read_text())
    codes = [row[table["columns"].index("labels/chexbert_reference")] for row in table["data"]]
    assert [len(code) for code in codes] == [14] * len(texts)
