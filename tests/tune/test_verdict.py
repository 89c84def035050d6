"""A sweep's verdict over training seeds, on per-report tables logged to a real MLflow store."""

import json

import numpy as np
import pytest

from radlab.config import parse_experiment
from radlab.evaluation.compare import versus_over_seeds
from radlab.evaluation.metrics import corpus_score
from radlab.tracking.runs import Tracker
from radlab.tune.verdict import challenge_alias, configurations, versus_baseline

from ..conftest import experiment_dict

METRIC = "chexprompt/significant_mean"


def _codes(texts: list[str]) -> list[str]:
    """Each synthetic report's CheXbert classes as a per-report table logs them."""
    from radlab.data.synthetic import chexpert_labels, parse_findings
    from radlab.evaluation.chexbert import BLANK, OBSERVATIONS, POSITIVE, label_codes

    exact = [chexpert_labels(parse_findings(text).findings) for text in texts]
    return label_codes(np.array([[POSITIVE if labels[name] == 1.0 else BLANK for name in OBSERVATIONS[:-1]]
                                 + [int(labels["No Finding"] == 1.0)] for labels in exact]))


def _trial(tracker: Tracker, errors: np.ndarray, texts: tuple[list[str], list[str]] | None = None, **cell) -> dict:
    """A finished trial's row, its run holding the per-report table evaluation logs (with the
    reports' `texts`, (references, candidates), where given)."""
    run_id = tracker.open_parent("trial", "d", digest=json.dumps(cell, sort_keys=True))
    table = {"id": [f"s{i}" for i in range(len(errors))], "judge_status": ["ok"] * len(errors),
             "significant_A": [int(e) for e in errors]} | {
        f"{kind}_{x}": [0] * len(errors) for kind in ("significant", "insignificant") for x in "ABCDEF"
        if (kind, x) != ("significant", "A")}
    if texts:  # with the labels a CheXbert labeler would read off them: the synthetic grammar's exact ones
        table |= {"reference": texts[0], "candidate": texts[1], "labels/chexbert_reference": _codes(texts[0]),
                  "labels/chexbert_candidate": _codes(texts[1])}
    tracker.log_table(run_id, table, "eval/trained/per_report.json")
    return {"trial": "-", "status": "ok", "run_id": run_id, METRIC: float(errors.mean()), **cell}


def test_configurations_are_compared_over_their_seeds(synthetic_root, tmp_path):
    tracker = Tracker(parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t"))
    rng = np.random.default_rng(0)
    studies = 60
    baseline = {seed: rng.poisson(1.0, studies) for seed in (0, 1, 2)}
    # "lora" makes fewer errors with every seed; "linear" is far better with seed 0, worse with 1, the same with 2.
    lora = {seed: np.maximum(errors - (rng.random(studies) < 0.5), 0) for seed, errors in baseline.items()}
    linear = {0: np.zeros(studies, int), 1: baseline[1] + 1, 2: baseline[2]}
    rows = [_trial(tracker, errors, **{"stage2.train": name, "seed": seed})
            for name, runs in (("full", baseline), ("lora", lora), ("linear", linear)) for seed, errors in runs.items()]
    configs = configurations(rows, ["stage2.train", "seed"], default_seed=0)
    assert [(c.name, sorted(c.runs)) for c in configs] == [("train=full", [0, 1, 2]), ("train=lora", [0, 1, 2]),
                                                           ("train=linear", [0, 1, 2])]
    base = versus_baseline(tracker, configs, {"stage2.train": "full"}, METRIC, resamples=500)
    full, lora_config, linear_config = configs
    assert base is full and full.vs_baseline["verdict"] == "train=full is the baseline"
    assert lora_config.vs_baseline["significant"] and lora_config.vs_baseline["seeds"] == 3
    assert "train=lora beat the baseline train=full significantly on chexprompt/significant_mean over 3 training " \
           "seeds" in lora_config.vs_baseline["verdict"]
    # Averaged over seeds linear looks better (seed 0 makes no error at all), but its seeds disagree.
    assert linear_config.mean(METRIC) < full.mean(METRIC)
    assert not linear_config.vs_baseline["significant"]
    assert linear_config.vs_baseline["ci_low"] < 0 < linear_config.vs_baseline["ci_high"]
    assert linear_config.vs_baseline["per_seed"][0] < 0 < linear_config.vs_baseline["per_seed"][1]


def test_one_run_per_configuration_is_said_to_compare_models_not_configurations(synthetic_root, tmp_path):
    tracker = Tracker(parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t"))
    rng = np.random.default_rng(1)
    errors = rng.poisson(1.0, 60)
    rows = [_trial(tracker, errors, **{"stage1.enabled": True}),
            _trial(tracker, np.maximum(errors - 1, 0), **{"stage1.enabled": False})]
    configs = configurations(rows, ["stage1.enabled"], default_seed=4)
    assert [sorted(c.runs) for c in configs] == [[4], [4]]   # the experiment's own seed
    versus_baseline(tracker, configs, {"stage1.enabled": True}, METRIC, resamples=500)
    verdict = configs[1].vs_baseline["verdict"]
    assert verdict.startswith("enabled=False beat the baseline enabled=True significantly")
    assert "one training run each, so this compares two trained models, not the configurations: train each with " \
           "several seeds" in verdict


def test_a_seed_that_finished_on_one_side_only_is_not_pooled(synthetic_root, tmp_path):
    tracker = Tracker(parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t"))
    rng = np.random.default_rng(2)
    errors = {seed: rng.poisson(1.0, 40) for seed in (0, 1)}
    rows = [_trial(tracker, errors[0], **{"stage1.enabled": True, "seed": 0}),
            _trial(tracker, errors[1], **{"stage1.enabled": True, "seed": 1}),
            _trial(tracker, errors[0] + 1, **{"stage1.enabled": False, "seed": 0})]  # seed 1 of this one failed
    configs = configurations(rows, ["stage1.enabled", "seed"], default_seed=0)
    versus_baseline(tracker, configs, {"stage1.enabled": True}, METRIC, resamples=200)
    assert configs[1].vs_baseline["seeds"] == 1 and configs[1].vs_baseline["per_seed"] == {0: 1.0}
    assert "only one seed finished on both sides: rerun the failed trials" in configs[1].vs_baseline["verdict"]


def test_holm_adjusts_for_the_configurations_tested_together():
    from radlab.tune.verdict import holm

    # The textbook case: sorted 0.01, 0.02, 0.03, 0.04 become 0.04, 0.06, 0.06, 0.06.
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.2]) == [0.2] and holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_many_configurations_against_one_baseline_need_more_than_p_under_005(synthetic_root, tmp_path):
    """Six configurations against one baseline: one clearly better, one slightly (p 0.018 alone),
    four the same. Six tests make one p under 0.05 likely by chance, so the slight one's p, adjusted
    for the six, no longer says it beat the baseline, and its verdict gives both p-values; the
    clearly better one still beats it."""
    tracker = Tracker(parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t"))
    rng = np.random.default_rng(12)
    base_errors = rng.poisson(1.0, 80)
    cells = {"base": base_errors, "better": np.maximum(base_errors - (rng.random(80) < 0.6), 0),
             "slight": np.maximum(base_errors - (rng.random(80) < 0.12), 0)}
    cells |= {f"same{k}": base_errors.copy() for k in range(4)}
    rows = [_trial(tracker, errors, **{"stage2.lr": name}) for name, errors in cells.items()]
    configs = configurations(rows, ["stage2.lr"], default_seed=0)
    versus_baseline(tracker, configs, {"stage2.lr": "base"}, METRIC, resamples=300)
    tested = {c.settings["stage2.lr"]: c.vs_baseline for c in configs[1:]}
    assert all(t["compared"] == 6 and t["p_adjusted"] >= t["p_value"] for t in tested.values())
    assert tested["better"]["significant"] and tested["better"]["p_adjusted"] < 0.05
    slight = tested["slight"]
    assert slight["difference"] < 0 and slight["p_value"] < 0.05  # alone, it would have beaten the baseline
    assert not slight["significant"] and slight["p_adjusted"] >= 0.05
    assert slight["verdict"].startswith("lr=slight did not beat the baseline lr=base")
    assert "adjusted for the 6 configurations tested (Holm)" in slight["verdict"]
    # Its interval is Bonferroni's for the six together: wider than the one it has alone.
    assert slight["confidence"] == pytest.approx(1 - 0.05 / 6) and "99.2% interval" in slight["verdict"]
    def scores(errors):
        return {0: {f"s{i}": {"chexprompt/significant": float(e)} for i, e in enumerate(errors)}}

    alone = versus_over_seeds(scores(cells["slight"]), scores(cells["base"]), "chexprompt/significant", False, 300)
    assert slight["ci_low"] < alone["ci_low"] and slight["ci_high"] > alone["ci_high"]


def test_the_alias_changes_hands_only_on_a_paired_test_of_the_same_reports(synthetic_root, tmp_path):
    """The alias serving resolves goes to a sweep's best only where it beats the holder on the
    objective's per-report score over the reports both were evaluated on; a lower mean by chance,
    an evaluation of other reports, or an objective with no paired test leave it where it is."""
    tracker = Tracker(parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t"))
    rng = np.random.default_rng(2)
    holder_errors = rng.poisson(1.0, 60)

    def registered(errors: np.ndarray, first: int = 0) -> tuple[str, str]:
        run_id = _trial(tracker, errors, first=first, salt=float(rng.random()))["run_id"]
        if first:  # another evaluation set: the same count of reports, other studies
            table = tracker.read_table(run_id, "eval/trained/per_report.json")
            tracker.log_table(run_id, table | {"id": [f"other{i}" for i in range(len(errors))]},
                              "eval/trained/per_report.json")
        return tracker.register(run_id, f"runs:/{run_id}/model", alias=None), run_id

    version, run_id = registered(holder_errors)
    first = challenge_alias(tracker, "champion", version, run_id, METRIC, 500)
    assert first == {"moved": True, "verdict": f"version {version} took alias 'champion', which no version held"}

    lucky = holder_errors.copy()
    lucky[:3] = np.maximum(lucky[:3] - 1, 0)  # a lower mean, by three reports
    challenger, run_id = registered(lucky)
    kept = challenge_alias(tracker, "champion", challenger, run_id, METRIC, 500)
    assert lucky.mean() < holder_errors.mean() and not kept["moved"] and kept["p_value"] > 0.05
    assert kept["verdict"].startswith(f"version {version} keeps alias 'champion': version {challenger} did not beat "
                                      "it significantly on chexprompt/significant_mean: difference")
    assert tracker.alias_holder("champion").version == version

    elsewhere, run_id = registered(np.zeros(60, int), first=1)
    other = challenge_alias(tracker, "champion", elsewhere, run_id, METRIC, 500)
    assert not other["moved"] and "evaluated on other reports than version" in other["verdict"]

    corpus = challenge_alias(tracker, "champion", elsewhere, run_id, "chexprompt/n_failed", 500)
    assert not corpus["moved"] and "chexprompt/n_failed is corpus-level" in corpus["verdict"]

    better = np.maximum(holder_errors - (rng.random(60) < 0.6), 0)
    winner, run_id = registered(better)
    taken = challenge_alias(tracker, "champion", winner, run_id, METRIC, 500)
    assert taken["moved"] and taken["ci_high"] < 0 and taken["p_value"] < 0.05
    assert taken["verdict"].startswith(f"version {winner} took alias 'champion' from version {version}")
    assert tracker.alias_holder("champion").version == winner


@pytest.mark.parametrize("objective", ["text/sacrebleu_bleu4", "clinical/label_f1_micro",
                                       "clinical/chexbert_f1_micro_14"])
def test_a_corpus_objective_is_tested_through_each_reports_statistics(synthetic_root, tmp_path, objective):
    """Corpus BLEU, label F1 and F1-CheXbert have no per-report score: configurations and the alias's
    holder are compared on the reports' n-gram or label statistics, over seeds where there are several."""
    from radlab.data.synthetic import Finding, write_findings

    tracker = Tracker(parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t"))
    rng = np.random.default_rng(7)
    kinds = [write_findings([]), write_findings([Finding("effusion", "left", None, "small")]),
             write_findings([Finding("nodule", "right", "upper", None)])]
    references = [kinds[k] for k in rng.integers(0, 3, 50)]

    def written(right: float) -> list[str]:  # each report right with this chance, else another finding's
        return [r if rng.random() < right else kinds[rng.integers(0, 3)] for r in references]

    rows = [_trial(tracker, np.zeros(50), (references, written(right)), **{"stage2.lr": name, "seed": seed})
            for name, right in (("base", 0.4), ("better", 0.9)) for seed in (0, 1)]
    configs = configurations(rows, ["stage2.lr", "seed"], default_seed=0)
    versus_baseline(tracker, configs, {"stage2.lr": "base"}, objective, resamples=300)
    better = configs[1].vs_baseline
    assert better["significant"] and better["seeds"] == 2 and better["ci_low"] > 0
    assert "per-report statistics pooled over seeds" in better["verdict"] and "per report" not in better["verdict"]

    holder = tracker.register(rows[0]["run_id"], f"runs:/{rows[0]['run_id']}/model", alias=None)
    challenge_alias(tracker, "champion", holder, rows[0]["run_id"], objective, 300)
    winner = tracker.register(rows[2]["run_id"], f"runs:/{rows[2]['run_id']}/model", alias=None)
    taken = challenge_alias(tracker, "champion", winner, rows[2]["run_id"], objective, 300)
    assert taken["moved"] and taken["difference"] > 0 and tracker.alias_holder("champion").version == winner

    # An evaluation whose per-report table lacks what the score is computed from (here: no texts,
    # nor the labels read off them) is named as such, and the alias stays.
    bare = _trial(tracker, np.zeros(50), **{"stage2.lr": "bare", "seed": 0})
    version = tracker.register(bare["run_id"], f"runs:/{bare['run_id']}/model", alias=None)
    refused = challenge_alias(tracker, "champion", version, bare["run_id"], objective, 300)
    fields = corpus_score(objective)
    assert not refused["moved"] and f"no per-report {fields.reference} and {fields.candidate} logged" in refused["verdict"]
