"""The command line as a user types it (typer's runner, real judges and stores)."""

import json
import os
import re
import subprocess
import sys

import yaml
from typer.testing import CliRunner

from radlab.cli import app
from radlab.data.synthetic import Finding, write_findings

from ..conftest import experiment_dict, free_port

runner = CliRunner()
EFFUSION = write_findings([Finding("effusion", "left", None, "small")])
NORMAL = write_findings([])


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_eval_predictions_with_the_reference_judge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "candidate": EFFUSION}, {"id": 2, "candidate": EFFUSION},
                                               {"id": 3, "candidate": ""}])
    refs = write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "reference": EFFUSION}, {"id": 2, "reference": NORMAL},
                                              {"id": 3, "reference": EFFUSION}])
    result = runner.invoke(app, ["eval", "--predictions", str(preds), "--references", str(refs)])
    assert result.exit_code == 0, result.output
    assert "chexprompt/significant_mean" in result.output and "chexprompt/n_failed" in result.output
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/radlab_runs/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("eval").experiment_id])[0]
    # The empty candidate is judged like any other: it omits the effusion (never left out, never a zero).
    assert run.data.metrics["chexprompt/n_failed"] == 0
    assert run.data.metrics["chexprompt/significant/omitted_finding"] == 1 / 3
    assert run.data.metrics["chexprompt/significant_mean"] == 2 / 3  # 0, a false effusion, an omission


def test_eval_refuses_mismatched_ids_and_bad_text(tmp_path):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "candidate": "x"}, {"id": 9, "candidate": "y"}])
    refs = write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "reference": "x"}, {"id": 2, "reference": "y"}])
    result = runner.invoke(app, ["eval", "--predictions", str(preds), "--references", str(refs)])
    assert result.exit_code == 2 and "1 prediction(s) without a reference" in result.output
    (tmp_path / "bad.jsonl").write_bytes(b'{"id": 1, "candidate": "\xff"}\n')
    result = runner.invoke(app, ["eval", "--predictions", str(tmp_path / "bad.jsonl"), "--references", str(refs)])
    assert result.exit_code == 2 and "bad.jsonl:1: not UTF-8" in result.output


def test_judge_agreement(tmp_path):
    def judgments(name, counts):
        return write_jsonl(tmp_path / name, [
            {"id": i, "significant": dict.fromkeys("ABCDEF", 0) | {"A": c}, "insignificant": dict.fromkeys("ABCDEF", 0)}
            for i, c in enumerate(counts)])

    a = judgments("a.jsonl", [0, 1, 2, 3])
    b = judgments("b.jsonl", [0, 1, 2, 5])
    result = runner.invoke(app, ["judge", "agreement", str(a), str(b)])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if "significant/false_finding" in row and "insig" not in row)
    assert "1.000" in line and "0.500" in line   # same ranking; mean |diff| = 2/4


def test_version_and_errors_that_are_bugs_keep_their_traceback():
    import pytest
    import typer

    from radlab.cli.common import or_exit
    from radlab.errors import RadlabError

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("radlab ")

    def mistake():
        raise RadlabError("stage2.lr: too high")

    def bug():
        raise ValueError("a bug")

    with pytest.raises(typer.Exit) as exited:
        or_exit(mistake)
    assert exited.value.exit_code == 2
    with pytest.raises(ValueError, match="a bug"):
        or_exit(bug)


def test_serve_refuses_missing_files_before_deploying(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["serve", "--config", "nope.yaml"])
    assert result.exit_code == 2 and "--config nope.yaml: no such Serve config file" in result.output
    result = runner.invoke(app, ["serve", "--model", "ckpt", "--once", "missing.png"])
    assert result.exit_code == 2 and "--once missing.png: no such image file" in result.output
    result = runner.invoke(app, ["serve", "--model", "models:/nothing@candidate"])
    assert result.exit_code == 2 and "the registry has no versions of 'nothing'" in result.output


def test_serve_on_a_non_loopback_host_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RADLAB_SERVE_TOKEN", raising=False)
    result = runner.invoke(app, ["serve", "--model", "ckpt", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "host 0.0.0.0 is not loopback, so requests need a bearer token: export RADLAB_SERVE_TOKEN=" in result.output


def test_serve_refuses_a_port_another_server_holds_before_starting_ray(tmp_path):
    """The replica could not listen there: said in one line, in a process of its own (no Ray yet)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run([sys.executable, "-m", "radlab.cli", "serve", "--model", "ckpt", "--port", str(port)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (f"--port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
                                   "another server holds it: stop it or choose another --port")


def test_files_that_are_not_utf8_or_not_yaml_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"name: x\n# caf\xe9\n")
    result = runner.invoke(app, ["validate", "latin1.yaml"])
    assert result.exit_code == 2 and "latin1.yaml: not UTF-8 text (invalid continuation byte at byte 13)" in result.output
    (tmp_path / "serve.yaml").write_text("applications: [unclosed\n")
    result = runner.invoke(app, ["serve", "--config", "serve.yaml", "--model", "ckpt"])
    assert result.exit_code == 2 and "serve.yaml: not valid YAML" in result.output
    (tmp_path / "serve.yaml").write_text("http_options: {host: 127.0.0.1}\n")
    result = runner.invoke(app, ["serve", "--config", "serve.yaml", "--model", "ckpt"])
    assert result.exit_code == 2 and "serve.yaml: a Serve config needs applications" in result.output


def test_submit_refuses_settings_that_keep_results_in_the_jobs_copy(tmp_path, monkeypatch):
    from radlab import jobs
    from radlab.config import parse_experiment

    def problems(tracking, storage):
        raw = {"name": "x", "data": {"synthetic": {}}, "tracking": tracking, "ray": {"storage_path": storage}}
        return jobs.job_local(parse_experiment(raw, "t"))

    assert problems({"uri": "http://mlflow.internal:5000"}, "/shared/radlab/ray") == []
    assert problems({"uri": "sqlite:////shared/mlflow.db"}, "s3://bucket/radlab/ray") == []
    assert [p.split(" ", 1)[0] for p in problems({}, "radlab_runs/ray")] == ["tracking.uri", "ray.storage_path"]
    assert "tracking.uri sqlite:///radlab_runs/mlflow.db would keep" in problems({"uri": "sqlite:///radlab_runs/mlflow.db"},
                                                                                "/shared/ray")[0]
    (tmp_path / "e.yaml").write_text("name: x\ndata: {synthetic: {}}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["submit", "e.yaml", "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "set it to your MLflow server" in result.output


def test_eval_of_an_encoder_whose_training_manifest_is_gone_names_it(synthetic_root, tmp_path, monkeypatch):
    """The trained encoder's folder is named by its stage's key, which holds the training manifests'
    digest: a manifest no longer there is one line naming it, not a traceback."""
    monkeypatch.chdir(tmp_path)
    raw = experiment_dict(synthetic_root, tmp_path, eval={"metrics": ["rouge_l"]})
    raw["data"] = {"mixture": [{"name": "site", "manifest": str(tmp_path / "gone.jsonl")}],
                   "image_root": str(synthetic_root), "eval_manifest": str(synthetic_root / "test.jsonl"),
                   "val_manifest": str(synthetic_root / "val.jsonl")}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["eval", "e.yaml", "--task", "retrieval"])
    assert result.exit_code == 2 and f"{tmp_path / 'gone.jsonl'}: manifest not found" in result.output, result.output


def test_eval_of_a_checkpoint_that_names_nothing_leaves_no_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "e.yaml").write_text("name: e\ndata: {synthetic: {root: syn, n_train: 16, n_val: 4, n_test: 4}}\n"
                                     "eval: {metrics: [rouge_l]}\n")
    result = runner.invoke(app, ["eval", "e.yaml", "--checkpoint", "models:/nothing@candidate"])
    assert result.exit_code == 2 and "the registry has no versions of 'nothing'" in result.output
    client = MlflowClient(f"sqlite:///{tmp_path}/radlab_runs/mlflow.db")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_run_prints_each_thing_once_and_ends_saying_where_everything_is(synthetic_root, tmp_path):
    raw = experiment_dict(synthetic_root, tmp_path, eval={"compare_untrained": False}, ray={"workers": 1},
                          stage2={"enabled": False})  # one stage is enough to see each line once
    raw["name"] = "console"
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    store = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-m", "radlab.cli", "run", "exp.yaml"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    # Fits on one screen: the judge's plan, where Ray logs, each stage's progress, the evaluation's
    # counts, examples and table, and where everything is; nothing from Ray, MLflow or the workers.
    assert len(lines) <= 55, "\n".join(lines)
    noise = [line for line in lines if re.search(r"\b(INFO|WARNING|Traceback|RayTrainWorker|PlacementGroup)\b", line)]
    assert noise == [], "\n".join(noise)
    worded = [line for line in lines if re.search(r"[a-z]{3}", line) and not line.lstrip().startswith(("reference:",
                                                                                                      "generated:"))]
    assert len(worded) == len(set(worded)), "\n".join(worded)
    found = re.search(r"MLflow run +(\w{32}) in experiment 'console'", lines[-4])
    assert found, "\n".join(lines)
    run_id = found[1]
    assert lines[-5:] == ["done",
                          f"  MLflow run   {run_id} in experiment 'console'; browse: radlab ui --backend {store}",
                          f"  checkpoint   {tmp_path}/ray/checkpoints/{lines[-3].rsplit('/', 1)[1]}",
                          "  model        models:/radlab-test@candidate (version 1)",
                          "  serve it     radlab serve --model models:/radlab-test@candidate"]  # the store is in the environment
    # The quickstart's last step, as the closing lines say: the registered model answers one request.
    image = synthetic_root / "images" / "test" / "000000.png"
    served = subprocess.run([sys.executable, "-m", "radlab.cli", "serve", "--model", "models:/radlab-test@candidate",
                             "--port", str(free_port()), "--once", str(image)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert served.returncode == 0, served.stdout
    lines = served.stdout.splitlines()
    assert len(lines) <= 5 and f"{image} -> " in served.stdout and "(model radlab stage1@4" in lines[-1], served.stdout


def test_sweep_tables_say_a_trial_row_shows_its_configuration_when_seeds_are_pooled():
    from rich.console import Console

    from radlab.cli.experiments import sweep_tables

    metric = "chexprompt/significant_mean"
    pooled_test = {"difference": 0.5, "ci_low": 0.3, "ci_high": 0.68, "p_value": 0.002}

    def trial(name, seed, value):
        return {"trial": f"{name}_seed={seed}", "status": "ok", metric: value, "val_loss": 1.0,
                "vs_baseline": pooled_test if name == "off" else {"verdict": "baseline"}}

    def rendered(result):
        console = Console(record=True, width=200)
        for table in sweep_tables(result, metric):
            console.print(table)
        return console.export_text()

    configurations = [{"configuration": "on", "seeds": [0, 1], metric: 0.1, f"{metric}_min": 0.05, f"{metric}_max": 0.15},
                      {"configuration": "off", "seeds": [0, 1], metric: 0.6, f"{metric}_min": 0.55, f"{metric}_max": 0.65,
                       **{f"vs_baseline_{k}": v for k, v in pooled_test.items()}}]
    result = {"trials": [trial("on", 0, 0.05), trial("on", 1, 0.15), trial("off", 0, 0.55), trial("off", 1, 0.65)],
              "best": {"configurations": configurations}}
    text = rendered(result)
    assert "its configuration vs baseline" in text and "configurations over training seeds" in text
    assert text.count("+0.500 [+0.30, +0.68], p 0.002") == 3  # both seeds' rows and the configuration's
    pooled_test["p_adjusted"] = 0.012  # six configurations tested against the baseline (Holm)
    configurations[1]["vs_baseline_p_adjusted"] = 0.012
    assert rendered(result).count("+0.500 [+0.30, +0.68], p 0.002 (0.012 adjusted)") == 3
    assert rendered(result).count("vs baseline [95% CI], p") == 2
    pooled_test["confidence"] = 1 - 0.05 / 6  # Bonferroni's intervals for the six
    assert rendered(result).count("vs baseline [99.2% CI: 95% together], p") == 2
    single = {"trials": result["trials"][:1], "best": {"configurations": [{**configurations[0], "seeds": [0]}]}}
    text = rendered(single)
    assert "its configuration" not in text and "configurations over training seeds" not in text
