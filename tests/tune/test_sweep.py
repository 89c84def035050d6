import copy
import json
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from radlab.config import ConfigError, parse_experiment
from radlab.tune.sweep import describe, expand, run_sweep, trial_experiment

from ..conftest import ROOT, experiment_dict


def sweep_experiment(synthetic_root, workdir, **sections):
    """The tiny experiment with its trials evaluated on validation, as every sweep must be."""
    sections["eval"] = {"split": "val", **sections.get("eval", {})}
    return experiment_dict(synthetic_root, workdir, **sections)


def sweep_raw(synthetic_root, workdir, **sweep):
    raw = sweep_experiment(synthetic_root, workdir)
    raw["sweep"] = {"axes": {"stage1.enabled": [True, False], "model.projector": ["mlp2x_gelu", "linear"]}, **sweep}
    return parse_experiment(raw, "t").model_dump(mode="json")


def test_matrix_expansion(synthetic_root, tmp_path):
    trials = expand(sweep_raw(synthetic_root, tmp_path), "t")
    assert [t.overrides for t in trials] == [
        {"stage1.enabled": True, "model.projector": "mlp2x_gelu"}, {"stage1.enabled": True, "model.projector": "linear"},
        {"stage1.enabled": False, "model.projector": "mlp2x_gelu"}, {"stage1.enabled": False, "model.projector": "linear"}]
    rows = describe(sweep_raw(synthetic_root, tmp_path, search={"params": {"stage2.lr": {"loguniform": [1e-4, 1e-2]}},
                                                                "samples": 3}), "t")
    assert rows[0]["optuna_samples"] == 3 and rows[0]["search"] == ["stage2.lr"]
    assert rows[0]["resources"]["workers"] == 2
    repeated = sweep_raw(synthetic_root, tmp_path, axes={"seed": [0, 1]})  # one configuration, two training seeds
    assert [trial_experiment(repeated, t.overrides).seed for t in expand(repeated, "t")] == [0, 1]


@pytest.mark.parametrize("sweep, message", [
    ({"axes": {"stage2.lrr": [1e-3]}}, "stage2.lrr is not a field"),
    ({"axes": {"model.projector": ["mlp2x_gelu", "conv"]}}, "model.projector"),
    ({"axes": {"model.projector": []}}, "needs at least one value"),
    ({"axes": {"model.projector": ["linear", "linear"]}}, "repeated values"),
    ({"axes": {}}, "needs axes, a search, or both"),
    ({"axes": {"stage2.lr": [1e-3]}, "search": {"params": {"stage2.lr": {"uniform": [1e-4, 1e-3]}}}}, "both a grid axis"),
    ({"axes": {"stage2.lr": [1e-3]}, "objective": {"metric": "accuracy"}}, "does not produce 'accuracy'"),
    ({"axes": {"stage2.lr": [1e-3]}, "objective": {"metric": "text/rouge_l_f1", "mode": "min"}},
     "mode min: text/rouge_l_f1 is better higher; set mode: max"),
    ({"axes": {"stage2.lr": [1e-3]}, "objective": {"metric": "clinical/radgraph_f1", "mode": "max"}},
     r"clinical/radgraph_f1 comes from radgraph_f1, which eval.metrics \(chexprompt, rouge_l, bleu, label_f1\) "
     "leaves out: add it"),
    ({"axes": {"stage2.lr": [1e-3]}, "objective": {"metric": "clinical/chexbert_f1_micro_14", "mode": "max"},
      "_eval": {"metrics": ["chexbert_f1"]}},
     "comes from chexbert_f1, which this experiment cannot score: set eval.chexbert_weights"),
    ({"search": {"params": {"stage2.lr": {"loguniform": [1e-3, 1e-4]}}}}, "low < high"),
    ({"axes": {"stage2.lr": [1e-3]}, "scheduler": {"metric": "val_loss"}, "_stages": {"val_examples": 0}},
     "scheduler reads val_loss, which no stage reports"),
])
def test_bad_sweeps_fail_before_anything_starts(synthetic_root, tmp_path, sweep, message):
    sweep = dict(sweep)
    stages = sweep.pop("_stages", {})
    raw = sweep_experiment(synthetic_root, tmp_path, stage1=stages, stage2=stages, eval=sweep.pop("_eval", {}))
    raw["sweep"] = sweep
    with pytest.raises(ConfigError, match=message):
        expand(raw, "t")


def test_every_registered_score_may_be_a_sweep_objective(synthetic_root, tmp_path):
    from radlab.metric_specs import METRICS

    scorer_files = {}  # where each scorer's files would be: present, so that the metric can be scored
    for field in ("bertscore_model", "chexbert_bert", "radgraph_weights"):
        scorer_files[field] = str(tmp_path / field)
        (tmp_path / field).mkdir()
    for field in ("chexbert_weights", "radgraph_python"):
        scorer_files[field] = str(tmp_path / field)
        (tmp_path / field).touch()
    for spec in METRICS.values():
        for score in spec.scores:
            raw = sweep_experiment(synthetic_root, tmp_path, eval={"metrics": [spec.name], **scorer_files})
            raw["sweep"] = {"axes": {"stage2.lr": [1e-3, 2e-3]},
                            "objective": {"metric": score.key, "mode": "max" if score.higher_is_better else "min"}}
            assert len(expand(raw, "t")) == 2, score.key


def test_shipped_sweeps_expand():
    import yaml

    for name, cells in (("ablation_quick.yaml", 4), ("ablation_llava_rad.yaml", 4), ("ablation_encoder.yaml", 2)):
        raw = yaml.safe_load((ROOT / "experiments" / name).read_text())
        assert len(expand(raw, name)) == cells


def test_small_sweep_tracks_trials_and_moves_the_alias(ray_session, mlflow_server, synthetic_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = sweep_experiment(synthetic_root, tmp_path, tracking={"uri": mlflow_server, "register_as": "radlab-sweep-test"},
                          eval={"compare_untrained": False, "judge": {"cache": "judge.sqlite"}}, ray={"workers": 1})
    raw["name"] = "sweep-test"
    raw["sweep"] = {"axes": {"stage1.enabled": [True, False], "seed": [1]}}
    raw = parse_experiment(raw, "t").model_dump(mode="json")
    result = run_sweep(raw, "t")
    assert [row["trial"] for row in result["trials"]] == ["enabled=True_seed=1", "enabled=False_seed=1"]
    assert [row["status"] for row in result["trials"]] == ["ok", "ok"]
    # Trials ran in the driver's folder: their relative paths (here the judge cache) land there.
    assert (tmp_path / "judge.sqlite").is_file()
    client = MlflowClient(mlflow_server)
    sweep_run = client.get_run(result["sweep_run"])
    assert sweep_run.info.status == "FINISHED" and sweep_run.data.metrics["sweep/trials"] == 2
    experiment_id = sweep_run.info.experiment_id
    trials = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{result['sweep_run']}'")
    assert len(trials) == 2
    stage_runs = [client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{t.info.run_id}'") for t in trials]
    assert sorted(len(runs) for runs in stage_runs) == [1, 2]   # stage 1 off: only stage 2
    assert {a.path for a in client.list_artifacts(result["sweep_run"], "sweep")} >= {
        "sweep/trials.json", "sweep/configurations.json", "sweep/objective_by_axis.png",
        "sweep/error_types_by_trial.png"}
    best = result["best"]
    # The best configuration (the seed is not part of it) is tested against the baseline one
    # (stage1.enabled=True) and the sweep says how it went.
    assert [(row["configuration"], row["seeds"]) for row in best["configurations"]] == [
        ("enabled=True", [1]), ("enabled=False", [1])]
    verdict = best["vs_baseline"]["verdict"]
    assert sweep_run.data.tags["radlab.best_vs_baseline"] == verdict
    assert sweep_run.data.tags["radlab.best_configuration"] == best["configuration"]
    if best["configuration"] == "enabled=True":
        assert verdict == "the baseline enabled=True scored best: no configuration beat it"
    else:
        assert "the baseline enabled=True significantly on chexprompt/significant_mean" in verdict
        assert "one training run each" in verdict
        assert 0 <= best["vs_baseline"]["p_value"] <= 1 and best["vs_baseline"]["n"] == 4
    # Every trial is tested against the baseline, in the printed table and in sweep/trials.json.
    other = next(row for row in result["trials"] if row["trial"] == "enabled=False_seed=1")
    assert 0 <= other["vs_baseline"]["p_value"] <= 1 and other["vs_baseline"]["n"] == 4
    trials_table = json.loads(Path(client.download_artifacts(result["sweep_run"], "sweep/trials.json",
                                                             str(tmp_path))).read_text())
    column = trials_table["columns"].index("vs_baseline_p_value")
    assert sorted(row[column] is None for row in trials_table["data"]) == [False, True]  # the baseline has none
    holder = client.get_model_version_by_alias("radlab-sweep-test", "champion")
    assert holder.version == best["version"] and holder.run_id == best["run_id"]
    assert best["alias_verdict"] == f"version {best['version']} took alias 'champion', which no version held"
    # A second sweep takes the alias only if its best beats the holder in a paired test on the
    # reports both were evaluated on: four reports cannot show that.
    again = run_sweep(copy.deepcopy(raw) | {"sweep": {**raw["sweep"], "axes": {"stage1.enabled": [False]}}}, "t")
    assert not again["best"]["alias_moved"]
    assert again["best"]["alias_verdict"].startswith(f"version {best['version']} keeps alias 'champion': version "
                                                     f"{again['best']['version']} did not beat it significantly")
    assert "paired permutation test, 4 reports both were evaluated on" in again["best"]["alias_verdict"]
    assert client.get_model_version_by_alias("radlab-sweep-test", "champion").version == best["version"]


def test_killed_sweep_resumes_without_rerunning_finished_trials(synthetic_root, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    raw = sweep_experiment(synthetic_root, tmp_path, eval={"compare_untrained": False}, ray={"workers": 1},
                           stage2={"enabled": False})  # one stage per trial is enough to resume between trials
    raw["name"] = "resume-test"
    raw["sweep"] = {"axes": {"stage1.lr": [1e-3, 2e-3]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "radlab.cli", "sweep", "sweep.yaml"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])

    def finished_trials():
        experiment = client.get_experiment_by_name("resume-test")
        if experiment is None:
            return []
        return client.search_runs([experiment.experiment_id], "tags.`radlab.stage` = 'experiment' "
                                  "and attributes.status = 'FINISHED'")

    driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not finished_trials() and time.time() < deadline and driver.poll() is None:
        time.sleep(1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
    driver.wait()
    first = finished_trials()
    assert len(first) == 1, "the first trial should have finished before the kill"

    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    trials = finished_trials()
    assert len(trials) == 2                                       # no trial run twice
    assert first[0].info.run_id in {t.info.run_id for t in trials}
    assert "took alias 'champion'" in resumed.stdout.replace("\n", " ")
    # The trials' consoles and Ray's own noise stay in Ray's log folder, which is named (as for run).
    assert "Ray's own logs and each trial's output:" in resumed.stdout
    assert "(run_trial pid=" not in resumed.stdout + resumed.stderr
    assert "Downloading artifacts" not in resumed.stdout + resumed.stderr  # MLflow's bars, as it reads the tables
    assert "Failed to query Ray Train Controller" not in resumed.stdout + resumed.stderr


def test_asha_stops_the_worse_trial_and_the_sweep_completes(ray_session, synthetic_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = sweep_experiment(synthetic_root, tmp_path, eval={"compare_untrained": False},
                          tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "register_as": None},
                          stage1={"max_steps": 6, "checkpoint_every": 3, "val_examples": 8}, ray={"workers": 1})
    raw["name"] = "asha-test"
    # Trial 2 barely trains (lr 1e-7): its first validation loss is worse than trial 1's, so ASHA
    # stops it at the first rung.
    raw["sweep"] = {"axes": {"stage1.lr": [2e-3, 1e-7]},
                    "scheduler": {"metric": "val_loss", "grace_period": 1, "reduction_factor": 2}}
    result = run_sweep(parse_experiment(raw, "t").model_dump(mode="json"), "t")
    assert [row["status"] for row in result["trials"]] == ["ok", "stopped early"]
    assert result["trials"][1]["val_loss"] > result["trials"][0]["stage1/val_loss"]
    assert result["best"]["trial"] == "lr=0.002"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("asha-test").experiment_id],
                              "tags.`radlab.stage` = 'experiment'")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]  # nothing left RUNNING
    assert _sweep_counts(tmp_path, "asha-test") == {"sweep/trials": 2, "sweep/failed": 0, "sweep/stopped_early": 1,
                                                    "sweep/repeats": 0}
    # The stopped trial's stage workers give their CPUs back: Ray Train's cleaner removes the
    # placement group of a controller that died with its trial (it reads the dashboard's state API).
    from ray.util import placement_group_table

    for _ in range(60):  # the group is removed first, its CPUs show as available a moment later
        held = [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
        if not held and ray_session.available_resources()["CPU"] == ray_session.cluster_resources()["CPU"]:
            break
        time.sleep(0.5)
    assert held == [] and ray_session.available_resources()["CPU"] == ray_session.cluster_resources()["CPU"]


@pytest.mark.parametrize("ray_section, message", [
    ({"use_gpu": True, "accelerator": "V100"},
     r"t: ray.workers=2 x \{CPU: 1, GPU: 1, accelerator_type:V100: 0.001\}: this machine's Ray can hold 0 such "
     r"workers"),
    ({"use_gpu": True, "accelerator": "V100", "gpu_memory_gb": 32},
     r"\{CPU: 1, GPU: 1, accelerator_type:V100-32G: 0.001\}: this machine's Ray can hold 0 such workers .*"
     r"\(ray.use_gpu / ray.accelerator / ray.gpu_memory_gb\)"),
    # The session's Ray has 4 CPUs; a trial's actor holds 0.01 of one while its stages run, so
    # stages asking for all 4 would wait for it forever.
    ({"workers": 2, "cpus_per_worker": 2},
     r"t: ray.workers=2 x \{CPU: 2\}: this machine's Ray can hold 1 such workers beside 0.01 CPU its trials' "
     r"actors take \(ray.cpus_per_worker\)"),
])
def test_resources_no_node_can_give_fail_before_anything_starts(ray_session, synthetic_root, tmp_path, monkeypatch,
                                                                ray_section, message):
    monkeypatch.chdir(tmp_path)
    raw = sweep_experiment(synthetic_root, tmp_path, ray=ray_section, tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    raw["sweep"] = {"axes": {"stage2.lr": [1e-3]}}
    with pytest.raises(ConfigError, match=message):
        run_sweep(raw, "t")
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("test-tiny") is None


def test_a_dataset_mixture_is_an_axis(tmp_path):
    manifest, test = tmp_path / "m.jsonl", tmp_path / "test.jsonl"
    manifest.write_text("")
    test.write_text("")
    raw = {"name": "mix", "data": {"mixture": [{"name": "mimic", "manifest": str(manifest)},
                                               {"name": "chexpert", "manifest": str(manifest), "weight": 0.5}],
                                   "eval_manifest": str(test)},
           "eval": {"metrics": ["rouge_l"], "split": "val"},
           "sweep": {"axes": {"data.mixture.0.text": [["rule"], ["rule", "llm"]], "data.mixture.1.weight": [0.5, 1.0]},
                     "objective": {"metric": "text/rouge_l_f1", "mode": "max"}}}
    trials = expand(raw, "t")
    assert len(trials) == 4 and trials[0].overrides == {"data.mixture.0.text": ["rule"], "data.mixture.1.weight": 0.5}
    raw["sweep"]["axes"] = {"data.mixture.2.weight": [1.0]}
    with pytest.raises(ConfigError, match="data.mixture.2.weight is not a field"):
        expand(raw, "t")


def test_a_trial_evaluated_on_val_never_opens_the_test_manifest(ray_session, synthetic_root, tmp_path):
    """A sweep trial is an experiment evaluated on val: run one on a mixture and ask the test
    manifest's access time whether anything (driver or worker) read it."""
    import os
    import shutil

    from radlab.pipeline import run_experiment

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(synthetic_root / f"{split}.jsonl", data / f"{split}.jsonl")
    test_manifest = data / "test.jsonl"

    def read_since_marked() -> bool:
        return os.stat(test_manifest).st_atime > os.stat(test_manifest).st_mtime

    def mark() -> None:  # access time before modification time: the next read moves it (relatime)
        now = os.stat(test_manifest).st_mtime
        os.utime(test_manifest, (now - 100, now))

    mark()
    test_manifest.read_bytes()
    assert read_since_marked(), "this filesystem does not record reads; the check below would prove nothing"
    mark()
    raw = sweep_experiment(synthetic_root, tmp_path, data={
        "synthetic": None, "mixture": [{"name": "train", "manifest": str(data / "train.jsonl")}],
        "val_manifest": str(data / "val.jsonl"), "eval_manifest": str(test_manifest),
        "image_root": str(synthetic_root)}, stage2={"enabled": False}, eval={"metrics": ["rouge_l"]},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "register_as": None})
    raw["data"].pop("synthetic")
    summary = run_experiment(parse_experiment(raw, "t"), json.dumps(raw))
    assert summary.metrics["eval/n_reports"] == 4   # evaluated, on val
    assert not read_since_marked()


def test_concurrent_trials_share_the_cores_unless_the_yaml_says(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    raw = sweep_experiment(synthetic_root, tmp_path, ray={"workers": 1, "num_cpus": 8})
    raw["ray"].pop("cpus_per_worker", None)
    raw["sweep"] = {"axes": {"stage2.lr": [1e-3, 2e-3]}, "max_concurrent_trials": 2}
    assert {row["resources"]["cpus_per_worker"] for row in describe(raw, "t")} == {4.0}  # 8 cores, 2 trials at once
    raw["ray"]["cpus_per_worker"] = 1
    assert {row["resources"]["cpus_per_worker"] for row in describe(raw, "t")} == {1}


def _stage_runs(tmp_path: Path, name: str, stage: str) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.get_experiment_by_name(name).experiment_id
    return client.search_runs([experiment_id], f"tags.`radlab.stage` = '{stage}'")


def _sweep_counts(tmp_path: Path, name: str) -> dict[str, float]:
    [sweep] = _stage_runs(tmp_path, name, "sweep")
    return {k: v for k, v in sweep.data.metrics.items() if k in ("sweep/trials", "sweep/failed", "sweep/stopped_early",
                                                                  "sweep/repeats")}


def _steps_logged(tmp_path: Path, run) -> list[int]:
    return sorted(m.step for m in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(
        run.info.run_id, "loss"))


def _sharing_sweep(synthetic_root, tmp_path, name: str, sweep: dict, stage2: dict,
                   statuses: tuple[str, str] = ("ok", "ok")) -> dict:
    raw = sweep_experiment(synthetic_root, tmp_path, stage1={"max_steps": 40, "checkpoint_every": 40, "log_every": 10},
                           stage2=stage2, eval={"compare_untrained": False, "grounding": False},
                           ray={"workers": 1, "cpus_per_worker": 1},
                           tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "register_as": None})
    raw["name"], raw["sweep"] = name, {**sweep, "max_concurrent_trials": 2}
    result = run_sweep(parse_experiment(raw, "t").model_dump(mode="json"), "t")
    assert [row["status"] for row in result["trials"]] == list(statuses)
    return result


def test_concurrent_trials_that_share_a_stage_train_it_once(ray_session, synthetic_root, tmp_path, monkeypatch):
    """Two trials that differ in stage 2 only, running at once, need the same stage 1: the second
    waits for the first's and reuses it, instead of training it into the same Ray Train run at the
    same time (each step logged twice to one MLflow run)."""
    monkeypatch.chdir(tmp_path)
    _sharing_sweep(synthetic_root, tmp_path, "shared-stage", {"axes": {"stage2.lr": [1e-3, 2e-3]}},
                   {"max_steps": 2, "checkpoint_every": 2})
    [stage1] = _stage_runs(tmp_path, "shared-stage", "stage1")
    assert _steps_logged(tmp_path, stage1) == [10, 20, 30, 40]
    trials = _stage_runs(tmp_path, "shared-stage", "experiment")
    assert {t.data.tags["radlab.stage1.run"] for t in trials} == {stage1.info.run_id} and len(trials) == 2
    assert len(_stage_runs(tmp_path, "shared-stage", "stage2")) == 2


def test_trials_the_search_gave_the_same_settings_run_once(ray_session, synthetic_root, tmp_path, monkeypatch):
    """Optuna proposes settings it has tried before (a `choice` must, once its values run out): the
    duplicate trials, running at once, share one MLflow run; the second waits for the first and
    reports its result."""
    monkeypatch.chdir(tmp_path)
    result = _sharing_sweep(synthetic_root, tmp_path, "duplicates",
                            {"search": {"params": {"stage1.lr": {"choice": [2e-3]}}, "samples": 2}}, {"enabled": False},
                            statuses=("ok", "same settings and run as an earlier trial"))
    assert len({row["run_id"] for row in result["trials"]}) == 1
    assert _sweep_counts(tmp_path, "duplicates") == {"sweep/trials": 2, "sweep/failed": 0, "sweep/stopped_early": 0,
                                                     "sweep/repeats": 1}
    [stage1] = _stage_runs(tmp_path, "duplicates", "stage1")
    assert _steps_logged(tmp_path, stage1) == [10, 20, 30, 40]


def test_a_cell_that_would_step_half_precision_weights_is_refused_before_any_trial(ray_session, synthetic_root,
                                                                                    tokenizer, tmp_path):
    """A grid over ray.deepspeed with full fine-tuning of an fp16 folder: the DDP cell is refused with
    its name before the sweep starts, not in each of its trial's attempts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2)).to(torch.float16).save_pretrained(tmp_path / "vicuna")
    raw = sweep_experiment(synthetic_root, tmp_path, model={"language": {"path": str(tmp_path / "vicuna")}},
                           stage1={"train": ["projector"]}, stage2={"train": ["projector", "language"], "lora": None},
                           tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    raw["sweep"] = {"axes": {"ray.deepspeed": ["zero2", "none"]}}
    with pytest.raises(ConfigError, match=r"t \(sweep cell deepspeed=none\): stage2.train: language under DDP"):
        run_sweep(raw, "t")
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("test-tiny") is None


def test_a_trial_that_fails_by_a_mistake_is_not_retried_and_every_restart_is_said(ray_session, synthetic_root,
                                                                                 tmp_path, monkeypatch, capsys):
    """A cell naming a tokenizer folder that is not there fails in its trial (before any training):
    Tune's retry (sweep.max_failures) is said with its cause and recorded in the sweep's run, and
    the retried attempt stops at once with the first attempt's error instead of repeating it, with
    the runs kept behind a URL (file:// here, s3:// on a cluster) as on a folder. A resumed sweep
    tries the trial afresh: the user may have fixed the cause."""
    monkeypatch.chdir(tmp_path)
    raw = sweep_experiment(synthetic_root, tmp_path, tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db",
                                                              "register_as": None},
                           ray={"storage_path": f"file://{tmp_path}/ray"})
    raw["sweep"] = {"axes": {"model.tokenizer": [str(tmp_path / "no-tokenizer")]}, "max_failures": 2}
    result = run_sweep(parse_experiment(raw, "t").model_dump(mode="json"), "t", verbose=False)
    said = capsys.readouterr().out.splitlines()
    [row] = result["trials"]
    assert row["status"] == "failed"
    assert row["error"].startswith("TrialNotRetried: not retried: an attempt with these settings failed with "
                                   "ConfigError: missing here: model.tokenizer")
    restarts = [line for line in said if line.endswith("Tune starts it again")]
    assert len(restarts) == 2  # the third attempt is the last sweep.max_failures allows
    assert "(failure 1, sweep.max_failures 2): ConfigError: missing here: model.tokenizer" in restarts[0]
    assert "(failure 2, sweep.max_failures 2): TrialNotRetried: not retried" in restarts[1]
    sweep_run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result["sweep_run"])
    assert sweep_run.data.metrics["sweep/trial_restarts"] == 2
    assert [sweep_run.data.tags[f"radlab.trial_restart.{n}"] for n in (1, 2)] == restarts
    assert not (tmp_path / "file:").exists() and (tmp_path / "ray").is_dir()
    resumed = run_sweep(parse_experiment(raw, "t").model_dump(mode="json"), "t", resume=True, verbose=False)
    assert resumed["sweep_run"] == result["sweep_run"]  # the same sweep goes on
    [row] = resumed["trials"]  # tried afresh: the first attempt's error again, not TrialNotRetried
    assert row["status"] == "failed" and row["error"].startswith("ConfigError: missing here: model.tokenizer")


def test_only_faults_are_worth_a_trial_retry():
    from ray.exceptions import ActorDiedError
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from radlab.evaluation.scoring import EvaluationFailed
    from radlab.train.stages import StageFailed, holds_fault

    assert holds_fault(WorkerGroupError("lost", {0: ValueError("fallout"), 1: ActorDiedError()}))
    assert holds_fault(ControllerError(WorkerGroupError("lost", {0: ActorDiedError()})))
    assert holds_fault(EvaluationFailed("CheXprompt: 40 of 40 judgments failed: 40 x timeout"))
    assert not holds_fault(WorkerGroupError("bug", {0: ValueError("shapes"), 1: ValueError("shapes")}))
    assert not holds_fault(StageFailed("stage1 stopped: two attempts in a row failed with ValueError: shapes"))
    assert not holds_fault(ConfigError("missing here: model.tokenizer"))
    try:  # radlab's refusal raised while handling a connection error is still a mistake
        try:
            raise ConnectionRefusedError("http://127.0.0.1:9/v1")
        except ConnectionError as err:
            raise ConfigError("eval.judge.endpoint: nothing answers at http://127.0.0.1:9/v1") from err
    except ConfigError as refusal:
        assert refusal.__cause__ is not None and refusal.__context__ is not None
        assert not holds_fault(refusal)
        wrapped = RuntimeError("trial ended")
        wrapped.__cause__ = refusal
        assert not holds_fault(wrapped)
    try:  # a library's own wrapper of a refused connection is a fault
        try:
            raise ConnectionRefusedError("http://127.0.0.1:5000")
        except ConnectionError:
            raise OSError("tracking server unreachable")
    except OSError as library_error:
        assert holds_fault(library_error)
