import numpy as np
import pytest
import torch

from radlab.evaluation.compare import compare_systems
from radlab.evaluation.retrieval import (ReadOut, auroc_metrics, compare_auroc, hits_at, retrieval_hits,
                                        zero_shot_scores)


def test_recall_at_k_counts_a_relevant_item_in_the_top_k():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.7, 0.6]])
    relevant = torch.eye(3, dtype=torch.bool)
    # Row 0 ranks 0 first; row 1 ranks 2, 1, 0 (its match second); row 2 ranks 1, 2, 0 (second).
    hits = hits_at(similarity, relevant, ks=(1, 2, 3))
    assert {k: list(hit) for k, hit in hits.items()} == {1: [1.0, 0.0, 0.0], 2: [1.0, 1.0, 1.0], 3: [1.0, 1.0, 1.0]}


def test_verbatim_copies_and_equal_labels_count_as_hits():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    reports = ["normal", "normal", "effusion"]
    labels = [frozenset(), frozenset(), frozenset({"Pleural Effusion"})]
    metrics = {name: hit.mean() for name, hit in retrieval_hits(images, texts, reports, labels).items()}
    # Image 0 retrieves report 1, a verbatim copy of its own: a hit. Image 2 retrieves report 0: a miss.
    assert metrics["retrieval/i2t_R1"] == pytest.approx(2 / 3)
    assert metrics["retrieval/label_i2t_R1"] == pytest.approx(2 / 3)
    assert "retrieval/i2t_R5" not in metrics      # K above the number of reports is left out


class _Oracle(torch.nn.Module):
    """Embeds the effusion prompts along the first axis, everything else along the second."""

    def encode_texts(self, input_ids, attention_mask):
        effusion = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        return torch.stack([effusion[0] if i == 0 else effusion[1] for i in range(len(input_ids))])


def test_zero_shot_auroc_skips_findings_with_one_class(tokenizer):
    images = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.8, 0.3]])
    labels = [frozenset({"Pleural Effusion"}), frozenset(), frozenset({"Pleural Effusion"})]
    out = auroc_metrics(zero_shot_scores(_Oracle(), images, labels, tokenizer, 32))
    assert out["zero_shot/auroc/Pleural Effusion"] == 1.0
    assert "zero_shot/auroc/Pneumothorax" not in out          # no positive case in the split
    assert "zero_shot/auroc/No Finding" not in out             # "No Finding" is not a positive label here


def test_recall_intervals_draw_patients_and_two_encoders_compare_pair_by_pair():
    """Each Recall@K is the mean of one hit per pair; its interval draws each patient's pairs
    together (a study's two images retrieve alike), and two encoders on the same pairs are compared
    pair by pair."""
    rng = np.random.default_rng(4)
    hits = rng.integers(0, 2, 60).astype(float)
    once = ReadOut({"retrieval/i2t_R1": hits.mean()}, {"retrieval/i2t_R1": hits}, [f"s{k}" for k in range(60)],
                   [f"p{k}" for k in range(60)])
    twice = ReadOut({"retrieval/i2t_R1": hits.mean()}, {"retrieval/i2t_R1": np.repeat(hits, 2)},
                    [f"s{k // 2}-{k % 2}" for k in range(120)], [f"p{k // 2}" for k in range(120)])
    assert twice.intervals(300) == once.intervals(300)
    low, high = once.intervals(300).values()
    assert low < hits.mean() < high
    assert once.per_pair()["s3"] == {"retrieval/i2t_R1": hits[3]}

    better = ReadOut({}, {"retrieval/i2t_R1": np.maximum(hits, rng.random(60) < 0.5)}, once.ids, once.patients)
    (row,) = compare_systems(better.per_pair(), once.per_pair(), 300, dict(zip(once.ids, once.patients)))
    assert row["metric"] == "retrieval/i2t_R1" and row["difference"] > 0 and row["p_value"] < 0.05


def test_the_mean_zero_shot_auroc_has_an_interval_that_draws_patients():
    rng = np.random.default_rng(5)
    truth = rng.random(80) < 0.4
    score = truth + rng.normal(0, 1.0, 80)
    scores = {"Pleural Effusion": (truth, score), "Edema": (~truth, rng.normal(0, 1, 80))}
    point = auroc_metrics(scores)["zero_shot/auroc_mean"]
    once = ReadOut({}, {}, [f"s{k}" for k in range(80)], [f"p{k}" for k in range(80)], scores)
    doubled = {name: (np.repeat(t, 2), np.repeat(s, 2)) for name, (t, s) in scores.items()}
    twice = ReadOut({}, {}, [f"s{k}" for k in range(160)], [f"p{k // 2}" for k in range(160)], doubled)
    interval = once.intervals(200)
    assert interval["zero_shot/auroc_mean_ci_low"] < point < interval["zero_shot/auroc_mean_ci_high"]
    assert twice.intervals(200) == interval


def test_two_encoders_zero_shot_auroc_compares_by_a_paired_permutation_of_ranks():
    """Scores of two encoders are on different scales, so the test swaps their ranks, not their
    scores: an encoder whose scores are a monotone rescaling of another's is the same classifier.
    A patient's images are drawn and swapped together."""
    rng = np.random.default_rng(6)
    truth = rng.random(60) < 0.4
    good, noise = truth + rng.normal(0, 0.8, 60), rng.normal(0, 1, 60)

    def read(score, copies: int = 1) -> ReadOut:
        ids = [f"s{k}" for k in range(60 * copies)]
        return ReadOut({}, {}, ids, [f"p{k // copies}" for k in range(60 * copies)],
                       {"Pleural Effusion": (np.repeat(truth, copies), np.repeat(score, copies)),
                        "Edema": (np.repeat(~truth, copies), np.repeat(-score, copies))})

    trained, untrained = read(good), read(noise)
    row = compare_auroc(trained, untrained, 300)
    point = auroc_metrics(trained.zero_shot)["zero_shot/auroc_mean"] - auroc_metrics(untrained.zero_shot)["zero_shot/auroc_mean"]
    assert row["metric"] == "zero_shot/auroc_mean" and row["n"] == 60
    assert row["difference"] == pytest.approx(point)
    assert 0 < row["ci_low"] < point < row["ci_high"] and row["p_value"] < 0.05
    assert compare_auroc(read(good, 2), read(noise, 2), 300) | {"n": 60} == pytest.approx(row)

    rescaled = compare_auroc(read(1000 * np.exp(good)), trained, 300)  # the same ranks on another scale
    assert rescaled["difference"] == pytest.approx(0) and rescaled["p_value"] == 1.0
    assert compare_auroc(trained, ReadOut({}, {}, trained.ids, trained.patients), 300) is None
    # An image the untrained encoder could not read: the two compare on the 59 pairs both read.
    kept = np.arange(1, 60)
    partial = ReadOut({}, {}, [untrained.ids[k] for k in kept], [untrained.patients[k] for k in kept],
                      {name: (t[kept], s[kept]) for name, (t, s) in untrained.zero_shot.items()})
    both = ReadOut({}, {}, partial.ids, partial.patients,
                   {name: (t[kept], s[kept]) for name, (t, s) in trained.zero_shot.items()})
    assert compare_auroc(trained, partial, 300) == pytest.approx(compare_auroc(both, partial, 300))
    assert compare_auroc(trained, partial, 300)["n"] == 59
