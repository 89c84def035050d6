from pathlib import Path

import pytest

from radlab.config import load_experiment
from radlab.evaluation.scoring import EvaluationFailed, Scored, report_table, score

ROOT = Path(__file__).resolve().parents[2]


def test_the_per_report_table_lines_up_metrics_with_their_reports_and_blanks_missing_candidates():
    predictions = [{"id": "a", "reference": "x", "candidate": "x"}, {"id": "b", "reference": "y", "error": "timeout"},
                   {"id": "c", "reference": "z", "candidate": "w"}]
    per_report = {"rouge_l_f1": [100.0, None, 0.0], "radgraph_f1": [100.0, None, 12.5]}
    table = report_table(predictions, Scored({}, {}, per_report))
    assert table["id"] == ["a", "b", "c"] and table["judge_status"] == ["not judged"] * 3
    assert table["rouge_l_f1"] == [100.0, None, 0.0] and table["radgraph_f1"] == [100.0, None, 12.5]


def test_scores_line_up_with_the_predictions_they_belong_to():
    experiment = load_experiment(ROOT / "experiments/quickstart.yaml", ["eval.metrics=[rouge_l]"])
    predictions = [{"id": "a", "reference": "No effusion.", "candidate": "No effusion."},
                   {"id": "b", "reference": "Small left effusion.", "error": "generation failed"},
                   {"id": "c", "reference": "Heart size normal.", "candidate": "Large right effusion."}]
    scored = score(experiment, predictions)
    assert scored.per_report["rouge_l_f1"][:2] == [100.0, None] and scored.per_report["rouge_l_f1"][2] < 50
    assert scored.metrics["eval/n_without_candidate"] == 1 and not scored.judgments


def test_an_unreachable_judge_fails_the_evaluation_with_its_reason(tmp_path, monkeypatch):
    import json

    import yaml
    from typer.testing import CliRunner

    from radlab.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": i, "candidate": "x", "reference": "y"}) + "\n"
                                              for i in range(4)))
    judge = {"endpoint": "compatible", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0, "timeout_s": 2}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"name": "e", "data": {"synthetic": {}},
                                                     "eval": {"metrics": ["chexprompt"], "judge": judge}}))
    # The canary judgment finds it before any report is judged or any MLflow run opened.
    result = CliRunner().invoke(app, ["eval", "e.yaml", "--predictions", "p.jsonl"])
    assert result.exit_code == 2
    assert "eval.judge: a canary judgment at http://127.0.0.1:9/v1 failed, so no evaluation would succeed: " \
           "APIConnectionError" in result.output
    assert not (tmp_path / "radlab_runs").exists()
    # Judging that fails past the canary fails the evaluation above eval.max_failed_share.
    experiment = load_experiment(tmp_path / "e.yaml")
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    scored = score(experiment, records)
    with pytest.raises(EvaluationFailed, match=r"4 of 4 judgments failed \(100% > eval.max_failed_share 5%\): "
                                               r"4 x APIConnectionError"):
        scored.check_failures(0.05)
    scored.check_failures(1.0)


def test_eval_dry_run_prints_the_judge_plan_from_a_canary(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from radlab.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": i, "candidate": "No effusion.",
                                                          "reference": "No effusion."}) + "\n" for i in range(6)))
    result = CliRunner().invoke(app, ["eval", "--predictions", "p.jsonl", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "judge synthetic-reference" in result.output and "answered a canary judgment" in result.output
    assert "judging will send up to 6 requests" in result.output
    assert not (tmp_path / "radlab_runs").exists()  # a dry run logs nothing
