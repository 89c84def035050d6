"""Paired comparisons of two systems on the same studies."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from radlab.cli import app
from radlab.data.synthetic import Finding, write_findings
from radlab.evaluation.chexprompt import Counts, LETTERS, aggregate
from radlab.evaluation.compare import (compare_systems, paired, patients_by_id, patients_from_table, scores_from_table,
                                       versus, versus_over_seeds)
from radlab.evaluation.resampling import bootstrap

EFFUSION = write_findings([Finding("effusion", "left", None, "small")])
NODULE = write_findings([Finding("nodule", "right", "upper", None)])
NORMAL = write_findings([])


def test_a_known_difference_is_significant_and_identical_scores_are_not():
    rng = np.random.default_rng(0)
    a = rng.poisson(1.0, 200).astype(float)
    better = paired(a, a + 1 + rng.poisson(0.3, 200))
    assert better.difference < -1 and better.high < 0 and better.p_value < 0.01
    same = paired(a, a)
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    noise = paired(a, a + rng.normal(0, 0.1, 200))
    assert noise.low < 0 < noise.high and noise.p_value > 0.05


def test_a_better_system_needs_its_interval_on_the_better_side_as_well_as_p():
    """At a widened level (a sweep's Bonferroni interval) the interval can cross zero while p < 0.05:
    that is no win."""
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 60)
    b = a + rng.normal(0.3, 1, 60)
    first, second = ({f"s{i}": {"x": float(v)} for i, v in enumerate(x)} for x in (b, a))
    plain = versus(first, second, "x", True, 500)
    widened = versus(first, second, "x", True, 500, confidence=0.995)
    assert plain["significant"] and plain["ci_low"] > 0 and plain["p_value"] < 0.05
    assert widened["p_value"] == plain["p_value"] and widened["ci_low"] < 0 and not widened["significant"]


def test_only_studies_scored_by_both_systems_are_paired():
    rows = compare_systems({"1": {"m": 1.0}, "2": {"m": 2.0}, "3": {"m": 5.0}},
                           {"1": {"m": 0.0}, "2": {"m": 1.0}, "4": {"m": 9.0}})
    assert rows == [{"metric": "m", "n": 2, "difference": 1.0, "ci_low": 1.0, "ci_high": 1.0,
                     "p_value": rows[0]["p_value"]}]


def test_a_patients_reports_are_resampled_and_swapped_together():
    """A test set with a report per image (MIMIC-CXR's: a study's AP and PA images are two reports
    with one reference): each study below is there twice. Drawn report by report, the doubled set
    looks twice as large and a difference the studies do not establish passes as significant. Drawn
    by patient, its interval and p-value are those of the studies without the duplicates, draw for
    draw; the same holds for one system's intervals and for configurations over seeds."""
    rng = np.random.default_rng(10)
    a, b = rng.poisson(0.4, 120).astype(float), rng.poisson(0.6, 120).astype(float)
    once = paired(a, b)
    assert once.p_value > 0.05 and once.low < 0 < once.high
    twice = [str(k // 2) for k in range(240)]  # the patient of each of the doubled reports
    naive = paired(np.repeat(a, 2), np.repeat(b, 2))
    assert naive.p_value < 0.05 and naive.high < 0  # the duplicates' false confidence
    clustered = paired(np.repeat(a, 2), np.repeat(b, 2), clusters=twice)
    assert (clustered.difference, clustered.low, clustered.high, clustered.p_value) == \
        (once.difference, once.low, once.high, once.p_value)

    assert bootstrap(np.repeat(a, 2), resamples=300, clusters=twice) == bootstrap(a, resamples=300)
    zero = dict.fromkeys(LETTERS, 0)
    counts = [Counts(zero | {"a": int(x)}, zero) for x in a]
    doubled = aggregate([c for c in counts for _ in (0, 1)], resamples=300, clusters=twice).metrics()
    assert doubled == aggregate(counts, resamples=300).metrics() | {"chexprompt/n_reports": 240.0,
                                                                    "chexprompt/n_judged": 240.0}

    seeds = {s: {str(k): {"m": float(x + s)} for k, x in enumerate(np.repeat(a, 2))} for s in (0, 1)}
    base = {s: {str(k): {"m": float(x)} for k, x in enumerate(np.repeat(b, 2))} for s in (0, 1)}
    single = versus_over_seeds({s: {str(k): {"m": float(x + s)} for k, x in enumerate(a)} for s in (0, 1)},
                               {s: {str(k): {"m": float(x)} for k, x in enumerate(b)} for s in (0, 1)}, "m", False)
    grouped = versus_over_seeds(seeds, base, "m", False, patients_of={str(k): twice[k] for k in range(240)})
    assert {k: grouped[k] for k in ("difference", "ci_low", "ci_high", "p_value")} == \
        {k: single[k] for k in ("difference", "ci_low", "ci_high", "p_value")}


def test_predictions_and_their_logged_table_carry_each_reports_patient():
    predictions = [{"id": "a.gpt4", "patient": "10003502", "reference": "x"}, {"id": "b", "reference": "y"}]
    assert patients_by_id(predictions) == {"a.gpt4": "10003502", "b": "b"}  # no patient: the report is its own
    table = {"id": ["a.gpt4", "b"], "patient": ["10003502", "b"], "rouge_l_f1": [1.0, 2.0]}
    assert patients_from_table(table) == {"a.gpt4": "10003502", "b": "b"}
    assert scores_from_table(table) == {"a.gpt4": {"rouge_l_f1": 1.0}, "b": {"rouge_l_f1": 2.0}}
    assert patients_from_table({"id": ["a"], "rouge_l_f1": [1.0]}) is None  # logged before patients were


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_saying_nothing_scores_worse_than_the_most_common_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    references = [EFFUSION] * 20 + [NODULE] * 2 + [NORMAL] * 2
    refs = _write(tmp_path / "refs.jsonl", [{"id": i, "reference": r} for i, r in enumerate(references)])
    common = _write(tmp_path / "common.jsonl", [{"id": i, "candidate": EFFUSION} for i in range(len(references))])
    silent = _write(tmp_path / "silent.jsonl", [{"id": i, "candidate": ""} for i in range(len(references))])
    result = CliRunner().invoke(app, ["eval", "--predictions", str(common), "--baseline", str(silent),
                                      "--references", str(refs)])
    assert result.exit_code == 0, result.output
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/radlab_runs/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("eval").experiment_id])[0]
    metrics = run.data.metrics
    assert metrics["chexprompt/n_failed"] == metrics["baseline/chexprompt/n_failed"] == 0
    # The most common report makes 6 significant errors on 24 studies (2 nodules missed with a false
    # effusion each, 2 false effusions); saying nothing omits the findings of all 22 abnormal studies.
    assert metrics["chexprompt/significant_mean"] < metrics["baseline/chexprompt/significant_mean"]
    assert metrics["predictions_vs_baseline/chexprompt/significant/difference"] < 0
    assert metrics["predictions_vs_baseline/chexprompt/significant/p_value"] < 0.05
    assert metrics["predictions_vs_baseline/text/sacrebleu_bleu4/difference"] > 0  # corpus BLEU paired too
    assert metrics["predictions_vs_baseline/clinical/label_f1_micro/difference"] > 0  # and label F1
    assert metrics["predictions_vs_baseline/clinical/label_f1_micro/p_value"] < 0.05
    assert "predictions - baseline" in result.output and "text/sacrebleu_bleu4" in result.output
    same = CliRunner().invoke(app, ["eval", "--predictions", str(common), "--baseline", str(common),
                                    "--references", str(refs)])
    assert same.exit_code == 0 and "1" in next(line for line in same.output.splitlines()
                                                if "chexprompt/significant " in line)


def _logged_table(significant: list[int], rouge: list[float]) -> dict[str, list]:
    """A per-report table as an evaluation logs it (eval/trained/per_report.json)."""
    n = len(significant)
    table = {"id": list(range(n)), "reference": ["r"] * n, "candidate": ["c"] * n, "judge_status": ["ok"] * n,
             "judge_error": [""] * n, "judge_answer": [""] * n, "rouge_l_f1": rouge}
    for letter in "ABCDEF":
        table[f"significant_{letter}"] = significant if letter == "A" else [0] * n
        table[f"insignificant_{letter}"] = [1] * n if letter == "B" else [0] * n
    return table


def test_a_trial_beats_its_baseline_only_when_the_paired_test_says_so():
    rng = np.random.default_rng(1)
    base = rng.integers(1, 4, size=60).tolist()
    better = [max(0, b - 1) for b in base]
    first = scores_from_table(_logged_table(better, [50.0] * 60))
    second = scores_from_table(_logged_table(base, [50.0] * 60))
    assert first["0"]["chexprompt/total"] == first["0"]["chexprompt/significant"] + 1
    row = versus(first, second, "chexprompt/significant", higher_is_better=False)
    assert row["significant"] and row["difference"] < 0 and row["p_value"] < 0.01 and row["n"] == 60
    reverse = versus(second, first, "chexprompt/significant", higher_is_better=False)
    assert not reverse["significant"]  # worse, however clearly
    same = versus(first, first, "rouge_l_f1", higher_is_better=True)
    assert same["p_value"] == 1 and not same["significant"]


def _runs(differences_by_seed: dict[int, float], studies: int = 100):
    """Per-report scores of two configurations over seeds: the second is noise around 1, the first
    the second plus each seed's own shift."""
    rng = np.random.default_rng(7)
    first, second = {}, {}
    for seed, shift in differences_by_seed.items():
        base = rng.normal(1.0, 0.3, studies)
        second[seed] = {str(i): {"s": float(v)} for i, v in enumerate(base)}
        first[seed] = {str(i): {"s": float(v + shift + rng.normal(0, 0.05))} for i, v in enumerate(base)}
    return first, second


def test_a_difference_over_seeds_counts_only_when_the_seeds_agree():
    # Every seed's pair of runs differs by about -0.2: fewer errors, significantly, over seeds and studies.
    first, second = _runs({0: -0.2, 1: -0.25, 2: -0.15})
    agreed = versus_over_seeds(first, second, "s", higher_is_better=False, resamples=500)
    assert agreed["seeds"] == 3 and agreed["n"] == 100 and agreed["significant"]
    assert agreed["ci_high"] < 0 and agreed["p_value"] < 0.01
    assert agreed["per_seed"] == pytest.approx({0: -0.2, 1: -0.25, 2: -0.15}, abs=0.02)
    # The seeds disagree (one run much better, another much worse): the seed-averaged scores still
    # differ consistently across studies (p tiny), but the interval over seeds holds zero, so no verdict.
    first, second = _runs({0: -0.6, 1: +0.3, 2: +0.1})
    split = versus_over_seeds(first, second, "s", higher_is_better=False, resamples=500)
    assert split["p_value"] < 0.01 and split["ci_low"] < 0 < split["ci_high"] and not split["significant"]
    # One seed per side: the single paired test, as before.
    one = versus_over_seeds({0: first[0]}, {0: second[0]}, "s", higher_is_better=False)
    assert one["seeds"] == 1 and one["significant"] and one["per_seed"] == {0: one["difference"]}


@pytest.mark.parametrize("metric", ["text/sacrebleu_bleu4", "clinical/label_f1_micro", "clinical/label_f1_macro"])
def test_corpus_scores_are_compared_by_patient_through_each_reports_statistics(metric):
    """Corpus BLEU and label F1 have no per-report score; two systems are paired through each
    report's n-gram or label statistics: the difference is the two corpus scores' difference, a
    study's two images count once, and two identical systems differ by 0 with p 1."""
    from radlab.evaluation.compare import compare_corpus
    from radlab.evaluation.metrics import bleu, label_f1

    rng = np.random.default_rng(3)
    findings = [EFFUSION, NODULE, NORMAL, write_findings([Finding("pneumothorax", "left", None, "small")])]
    references = [findings[k] for k in rng.integers(0, 4, 40)]
    good = [{"id": f"s{i}", "reference": r, "candidate": r if rng.random() < 0.8 else NORMAL}
            for i, r in enumerate(references)]
    poor = [{"id": f"s{i}", "reference": r, "candidate": findings[rng.integers(0, 4)]} for i, r in enumerate(references)]
    row, = compare_corpus(good, poor, [metric], 300)

    def scored(system):
        pairs = [(p["reference"], p["candidate"]) for p in system]
        return (bleu(pairs, 10) | label_f1(pairs, 10))[metric]

    assert row["metric"] == metric and row["n"] == 40 and row["difference"] == pytest.approx(scored(good) - scored(poor))
    assert 0 < row["ci_low"] < row["difference"] < row["ci_high"] and row["p_value"] < 0.05

    def doubled(system):  # each study's two images: two reports of one patient
        return [{**p, "id": f"{p['id']}-{view}", "patient": p["id"]} for p in system for view in ("AP", "PA")]

    twice, = compare_corpus(doubled(good), doubled(poor), [metric], 300, patients_by_id(doubled(good)))
    assert twice | {"n": 40} == pytest.approx(row)
    same, = compare_corpus(good, good, [metric], 300)
    assert same["difference"] == 0 and same["p_value"] == 1.0
