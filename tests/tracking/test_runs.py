import json

from radlab.config import parse_experiment
from radlab.data.stats import experiment_cards
from radlab.tracking.runs import Tracker

from ..conftest import experiment_dict


def test_a_run_logs_its_manifests_as_dataset_inputs_once(synthetic_root, tmp_path):
    raw = experiment_dict(synthetic_root, tmp_path, tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    experiment = parse_experiment(raw, "t")
    tracker = Tracker(experiment)
    run_id = tracker.open_parent("name: t", "digest")
    cards = experiment_cards(experiment.data)
    tracker.log_datasets(run_id, cards)
    tracker.log_datasets(run_id, cards)  # a resumed run
    inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert sorted((i.dataset.name, i.tags[0].value) for i in inputs) == [
        ("synthetic-test", "eval"), ("synthetic-train", "train"), ("synthetic-val", "validation")]
    train = next(i.dataset for i in inputs if i.dataset.name == "synthetic-train")
    profile = json.loads(train.profile)
    assert profile["records"] == 96 and set(profile["views"]) <= {"AP", "PA"}
    assert profile["text"] == {"rule-based": 96} and train.digest == cards[0].digest


def test_runs_that_start_together_in_a_new_experiment_each_get_it_and_their_datasets(synthetic_root, tmp_path):
    """Runs on the same data start together (sweep trials, or two `radlab run`s of a new experiment):
    MLflow's store looks an experiment or a dataset up, then inserts it, so all but one of them lose
    that race; each still opens its run in the one experiment, with its dataset inputs."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for sweep in range(4):  # each in its own experiment, where the datasets are new
        raw = experiment_dict(synthetic_root, tmp_path, tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
        experiment = parse_experiment({**raw, "name": f"sweep-{sweep}"}, "t")
        cards = experiment_cards(experiment.data)
        together = threading.Barrier(6)

        def start(_) -> tuple[Tracker, str]:
            together.wait()
            tracker = Tracker(experiment)
            run_id = tracker.open_parent("trial", "digest")
            tracker.log_datasets(run_id, cards)
            return tracker, run_id

        with ThreadPoolExecutor(6) as pool:
            started = list(pool.map(start, range(6)))
        assert len({tracker.experiment_id for tracker, _ in started}) == 1
        for tracker, run_id in started:
            inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
            assert {(i.dataset.name, i.dataset.digest) for i in inputs} == {(c.name, c.digest) for c in cards}


def test_a_finished_sweep_trial_is_found_by_its_digest(synthetic_root, tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t")
    tracker = Tracker(experiment)
    sweep = tracker.open_parent("sweep", "d", stage="sweep", digest="sweepkey")
    trial = tracker.open_parent("trial", "d", parent_run_id=sweep)
    assert tracker.finished_trial(sweep, "d") is None  # still running: not done
    tracker.finish(trial)
    assert tracker.finished_trial(sweep, "d").info.run_id == trial
    assert tracker.finished_trial(sweep, "edited") is None  # the same cell on training data that changed since
    other = parse_experiment(experiment_dict(synthetic_root, tmp_path, stage2={"lr": 1e-4},
                                             tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t")
    assert Tracker(other).finished_trial(sweep, "d") is None  # another cell of the grid


def test_an_unfinished_run_goes_on_only_on_the_same_training_data(synthetic_root, tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t")
    tracker = Tracker(experiment)
    first = tracker.open_parent("name: t", "digest-1")
    assert tracker.open_parent("name: t", "digest-1") == first  # interrupted, rerun: goes on
    edited = tracker.open_parent("name: t", "digest-2")  # the manifest changed in between
    assert edited != first and tracker.client.get_run(edited).data.tags["radlab.data_digest"] == "digest-2"


def test_a_model_reference_that_names_nothing_says_what_exists(synthetic_root, tmp_path):
    import pytest

    from radlab.tracking.runs import RegistryError, model_version

    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t")
    tracker = Tracker(experiment)
    run_id = tracker.open_parent("name: t", "digest")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "radlab.json").write_text("{}")
    version = tracker.register(run_id, tracker.log_checkpoint(run_id, tmp_path / "ckpt"))
    tracker.client.set_registered_model_alias("radlab-test", "candidate", version)
    assert model_version(tracker.client, "models:/radlab-test@candidate").version == version
    with pytest.raises(RegistryError, match=r"no alias 'champion' \(aliases: candidate"):
        model_version(tracker.client, "models:/radlab-test@champion")
    with pytest.raises(RegistryError, match=r"no version 7 \(versions: 1\)"):
        model_version(tracker.client, "models:/radlab-test/7")
    with pytest.raises(RegistryError, match="no versions of 'nope'"):
        model_version(tracker.client, "models:/nope/latest")


def test_a_table_logged_again_replaces_the_first_and_reads_back(synthetic_root, tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, tracking={
        "uri": f"sqlite:///{tmp_path}/mlflow.db"}), "t")
    tracker = Tracker(experiment)
    run_id = tracker.open_parent("t", "d")
    assert tracker.read_table(run_id, "eval/trained/intervals.json") is None
    tracker.log_table(run_id, {"metric": ["a", "b"], "value": [1.0, float("nan")]}, "eval/trained/intervals.json")
    tracker.log_table(run_id, {"metric": ["a", "b"], "value": [2.0, 3.0]}, "eval/trained/intervals.json")  # a resumed run
    assert tracker.read_table(run_id, "eval/trained/intervals.json") == {"metric": ["a", "b"], "value": [2.0, 3.0]}
    tags = json.loads(tracker.client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert tags == [{"path": "eval/trained/intervals.json", "type": "table"}]  # MLflow's UI lists it as a table


def test_nothing_phones_home_from_mlflow():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    check = ("import radlab.tracking.runs; from mlflow.telemetry.client import get_telemetry_client; "
             "print(get_telemetry_client())")
    assert subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "None"
