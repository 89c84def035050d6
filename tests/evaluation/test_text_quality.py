"""The quality report of one text source against another (LLM-structured findings against the
rule-extracted ones), with intervals that draw each patient's pairs together."""

import numpy as np

from radlab.evaluation.text_quality import compare_texts

WORDS = ["small", "left", "right", "pleural", "effusion", "mild", "cardiomegaly", "no", "pneumothorax", "edema",
         "basilar", "atelectasis", "stable", "lungs", "clear"]


def pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """(reference, candidate) findings whose overlap varies from pair to pair."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        reference = list(rng.choice(WORDS, 8))
        kept = [w if rng.random() < rng.uniform(0.2, 1.0) else str(rng.choice(WORDS)) for w in reference]
        out.append((" ".join(reference) + ".", " ".join(kept) + "."))
    return out


def test_a_studys_images_count_once_in_the_intervals():
    """Each study's report is there twice (its AP and PA images). Drawn by patient, the scores and
    intervals are those of the studies alone, draw for draw; drawn pair by pair, the duplicates
    would pass for twice the evidence and narrow every interval."""
    once = pairs(40, seed=3)
    twice = [pair for pair in once for _ in (0, 1)]
    patients = [f"p{k // 2}" for k in range(len(twice))]
    single = compare_texts(once)
    assert compare_texts(twice, clusters=patients) == single
    naive = compare_texts(twice)
    for name in ("text/rouge_l_f1", "text/sacrebleu_bleu4"):
        assert naive[name] == single[name]
        assert naive[f"{name}_ci_high"] - naive[f"{name}_ci_low"] < single[f"{name}_ci_high"] - single[f"{name}_ci_low"]
