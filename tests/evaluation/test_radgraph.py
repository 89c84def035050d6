"""F1-RadGraph through the real `radgraph` package in its own interpreter (the Makefile builds it
and names it in RADLAB_TEST_RADGRAPH_PYTHON), on a tiny RadGraph model with random weights built by
radgraph_tiny_model.py: the stand-in for the RRG_scorers weights, which cannot be downloaded here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from radlab.config import EvalConfig
from radlab.data.synthetic import draw_findings, write_findings
from radlab.evaluation import ScorerError
from radlab.evaluation.f1_radgraph import radgraph_metrics, radgraph_rewards
from radlab.evaluation.metrics import text_and_clinical

REPORTS = [write_findings(draw_findings(np.random.default_rng(seed))) for seed in range(40)]


@pytest.fixture(scope="module")
def radgraph_python() -> Path:
    python = os.environ.get("RADLAB_TEST_RADGRAPH_PYTHON")
    if not python:
        pytest.skip("RADLAB_TEST_RADGRAPH_PYTHON is not set (make test builds that interpreter)")
    return Path(python)


@pytest.fixture(scope="module")
def tiny_radgraph(tmp_path_factory, radgraph_python) -> Path:
    from tokenizers.pre_tokenizers import BertPreTokenizer

    out = tmp_path_factory.mktemp("radgraph")
    words = {w for text in REPORTS for w, _ in BertPreTokenizer().pre_tokenize_str(text.lower())}
    (out / "words.txt").write_text("\n".join(sorted(words)))
    subprocess.run([str(radgraph_python), str(Path(__file__).with_name("radgraph_tiny_model.py")), str(out),
                    str(out / "words.txt")], check=True, capture_output=True)
    return out / "radgraph"


def hub_named_copy(tiny_radgraph: Path, folder: Path) -> Path:
    """The tiny model with its config naming a hub model, as the released config.json files do."""
    folder.mkdir()
    config = json.loads((tiny_radgraph / "config.json").read_text())
    config["dataset_reader"]["token_indexers"]["bert"]["model_name"] = "microsoft/BiomedVLP-CXR-BERT-general"
    config["model"]["embedder"]["token_embedders"]["bert"]["model_name"] = "microsoft/BiomedVLP-CXR-BERT-general"
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("vocabulary", "weights.th"):
        (folder / name).symlink_to(tiny_radgraph / name)
    return folder


def test_rewards_per_pair_from_the_package(radgraph_python, tiny_radgraph):
    pairs = [(REPORTS[0], REPORTS[0]), (REPORTS[1], REPORTS[2]), (REPORTS[3], ""), (REPORTS[4], REPORTS[4])]
    rewards = radgraph_rewards(pairs, radgraph_python, tiny_radgraph, "radgraph", None)
    for level in ("simple", "partial", "complete"):
        assert rewards[level][0] == rewards[level][3] == 1.0  # a report against itself: the same graph
        assert 0 < rewards[level][1] < 1  # two different reports share some entities, not all
        assert rewards[level][2] == 0.0  # an empty candidate scores zero, it is not dropped
    metrics = radgraph_metrics(rewards, resamples=50)
    assert metrics["clinical/radgraph_f1"] == pytest.approx(rewards["partial"].mean() * 100)
    assert metrics["clinical/radgraph_f1_complete"] == pytest.approx(rewards["complete"].mean() * 100)
    for key in ("clinical/radgraph_f1", "clinical/radgraph_f1_simple", "clinical/radgraph_f1_complete"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]


def test_the_evaluation_reports_radgraph_beside_the_other_metrics(radgraph_python, tiny_radgraph, tmp_path):
    hub_named = hub_named_copy(tiny_radgraph, tmp_path / "release")
    cfg = EvalConfig(metrics=["rouge_l", "radgraph_f1"], bootstrap=20, radgraph_python=radgraph_python,
                     radgraph_weights=hub_named, radgraph_bert=tiny_radgraph.parent / "bert")
    values, skipped, per_report, _ = text_and_clinical([(REPORTS[5], REPORTS[5]), (REPORTS[6], REPORTS[7])], cfg, True)
    assert not skipped and "text/rouge_l_f1" in values
    assert 50 < values["clinical/radgraph_f1"] < 100
    assert per_report["radgraph_f1"][0] == 100 and per_report["radgraph_f1"][1] < 100


def test_nothing_is_downloaded_for_a_config_naming_a_hub_model(radgraph_python, tiny_radgraph, tmp_path):
    hub_named = hub_named_copy(tiny_radgraph, tmp_path / "release")
    with pytest.raises(ScorerError, match=r"(?s)eval\.radgraph_python: the RadGraph scorer .* failed.*OSError.*"
                                          r"BiomedVLP-CXR-BERT-general, which is not a local folder.*eval\.radgraph_bert"):
        radgraph_rewards([(REPORTS[0], REPORTS[1])], radgraph_python, hub_named, "radgraph", None)


@pytest.mark.parametrize("fault, field", [
    ("no interpreter", "eval.radgraph_python: no Python interpreter"),
    ("interpreter without radgraph", "No module named 'radgraph'"),
    ("no weights", "eval.radgraph_weights: .* has no weights.th"),
    ("garbage config", "eval.radgraph_weights: .*config.json is not a RadGraph"),
    ("config is a folder", "eval.radgraph_weights: .*config.json is not a RadGraph"),
    ("other release", "eval.radgraph_model: radgraph-xl does not match .* labels are for: radgraph"),
    ("bert folder", "eval.radgraph_bert: .* is not a transformers model folder"),
])
def test_bad_scorer_setups_skip_the_metric_naming_the_field(radgraph_python, tiny_radgraph, tmp_path, fault, field):
    python, weights, model, bert = radgraph_python, tiny_radgraph, "radgraph", None
    if fault == "no interpreter":
        python = tmp_path / "bin" / "python"
    elif fault == "interpreter without radgraph":
        python = Path(sys.executable)
    elif fault in ("no weights", "garbage config", "config is a folder"):
        weights = hub_named_copy(tiny_radgraph, tmp_path / "release")
        if fault == "no weights":
            (weights / "weights.th").unlink()
        elif fault == "garbage config":
            (weights / "config.json").write_text('{"model": []}')
        else:
            (weights / "config.json").unlink()
            (weights / "config.json").mkdir()
    elif fault == "other release":
        model = "radgraph-xl"
    else:
        bert = tmp_path
    cfg = EvalConfig(metrics=["rouge_l", "radgraph_f1"], bootstrap=20, radgraph_python=python,
                     radgraph_weights=weights, radgraph_model=model, radgraph_bert=bert)
    values, skipped, *_ = text_and_clinical([(REPORTS[0], REPORTS[1])], cfg, True)
    assert "text/rouge_l_f1" in values and "clinical/radgraph_f1" not in values
    assert re.search(field, skipped["radgraph_f1"], flags=re.DOTALL), skipped["radgraph_f1"]
