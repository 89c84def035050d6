import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import psutil
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file
from torch.utils.data import DataLoader, DistributedSampler
from transformers import get_cosine_schedule_with_warmup

from radlab.config import parse_experiment
from radlab.data.dataset import split_examples, stage_dataset
from radlab.formats.batch import collate
from radlab.formats.tokenizer import load_tokenizer
from radlab.model.build import apply_lora, build_model, set_trainable
from radlab.model.checkpoint import is_resume_point, load_checkpoint, load_train_state
from radlab.model.towers import image_transform
from radlab.train.findings import INPUTS, FindingsStage
from radlab.train.stages import (DONE, StageJob, exclusive_stage, failure_cause, finished_stage, run_stage, stage_key,
                                 stage_run_name)

from ..conftest import experiment_dict


def test_plan_accumulates_to_the_global_batch(synthetic_root, tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, stage1={
        "max_steps": None, "epochs": 2, "global_batch": 32, "micro_batch": 4}), "t")
    plan = FindingsStage.plan_for(experiment.stage1, examples=96, world=2)
    assert plan.accumulation == 4            # 4 micro-batches x 4 x 2 workers = 32
    assert plan.steps_per_epoch == 3 and plan.total_steps == 6


@pytest.mark.parametrize("storage", ["folder", "url"])
def test_a_stage_another_run_is_training_is_waited_for_and_reused(storage, synthetic_root, tmp_path, request):
    """Two runs of the same stage (duplicate sweep trials, one experiment started twice): the second
    waits while the first holds the stage, says so, then finds what the first left. In a folder the
    lock is a file; a URL holds no lock files, so there it is a named Ray actor, seen by every process
    of the Ray cluster (here a second driver). Either is released when its holder's process ends,
    even abruptly: the holder below exits inside the lock."""
    sections = {"ray": {"storage_path": f"file://{tmp_path}/ray"}} if storage == "url" else {}
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, **sections), "t")
    folder = tmp_path / "ray" / stage_run_name(experiment, "stage1")
    connect = ""
    if storage == "url":
        address = request.getfixturevalue("ray_session").get_runtime_context().gcs_address
        connect = f"import ray; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import json, os, sys, time
from pathlib import Path
from radlab.config import parse_experiment
from radlab.train.stages import DONE, exclusive_stage
{connect}
experiment = parse_experiment(json.loads(sys.argv[1]), "t")
with exclusive_stage(experiment, "stage1", print):
    print("holding", flush=True)
    time.sleep(1.5)
    Path({str(folder)!r}).mkdir(parents=True, exist_ok=True)
    (Path({str(folder)!r}) / DONE).write_text(json.dumps({{"checkpoint": "/somewhere", "run_id": "first"}}))
    os._exit(0)
""", json.dumps(experiment.model_dump(mode="json"))], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    said = []
    started = time.perf_counter()
    with exclusive_stage(experiment, "stage1", said.append):
        waited = time.perf_counter() - started
        reused = finished_stage(experiment, "stage1")
    assert holder.wait(timeout=30) == 0
    assert waited > 0.5 and reused is not None and reused.run_id == "first"
    assert len(said) == 1 and said[0].startswith("stage1: another run is training it with the same settings")
    assert ("Ray actor" if storage == "url" else ".lock") in said[0]
    said.clear()
    with exclusive_stage(experiment, "stage2", said.append):  # nobody holds it: no wait, nothing said
        assert finished_stage(experiment, "stage2") is None
    assert not said


def test_a_stage_kept_behind_a_storage_url_is_recorded_there_and_reused(ray_session, synthetic_root, tokenizer_files,
                                                                        tmp_path, monkeypatch):
    """ray.storage_path as a URL (file:// here; s3:// or abfss:// on a cluster), read through pyarrow
    as Ray Train reads it: the workers build the model from the tokenizer their job carries, the
    finished stage is recorded beside its Ray Train run, a rerun reuses it without training, and
    nothing lands in the driver's working folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path,
                                                  ray={"storage_path": f"file://{tmp_path}/ray"}), "t")
    first = run_stage(StageJob(experiment, "stage1", tokenizer_files))
    record = json.loads((tmp_path / "ray" / stage_run_name(experiment, "stage1") / DONE).read_text())
    assert record["checkpoint"] == first.checkpoint.path and record["checkpoint"].startswith(str(tmp_path / "ray"))
    reused = finished_stage(experiment, "stage1")
    assert reused is not None and reused.checkpoint.path == first.checkpoint.path
    with reused.checkpoint.as_directory() as folder:
        assert load_checkpoint(Path(folder)).meta["step"] == experiment.stage1.max_steps
    started = time.perf_counter()
    assert run_stage(StageJob(experiment, "stage1", tokenizer_files)).checkpoint.path == first.checkpoint.path
    assert time.perf_counter() - started < 2  # no worker group was started
    assert list(work.iterdir()) == []
    # The embedded Ray is one machine that nothing drains: Ray Train started no preemption watcher.
    from ray.util.state import list_actors

    assert list_actors(filters=[("class_name", "=", "PreemptionWatcher")]) == []


def test_the_module_ray_trains_controller_unpickles_does_not_import_torch():
    """Ray Train's controller imports radlab.train.stages to unpickle the job, the workers' function
    and the failure callback: torch, transformers and peft there would cost seconds per stage."""
    code = ("import sys, radlab.train.stages, radlab.formats.tokenizer; "  # the job carries a TokenizerFiles
            "print(sorted({'torch', 'transformers', 'peft', 'mlflow'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_stage_keys_change_only_downstream(synthetic_root, tmp_path):
    base = parse_experiment(experiment_dict(synthetic_root, tmp_path), "t")
    tuned = parse_experiment(experiment_dict(synthetic_root, tmp_path, stage2={"lr": 1e-4}), "t")
    assert stage_key(base, "stage1") == stage_key(tuned, "stage1")
    assert stage_key(base, "stage2") != stage_key(tuned, "stage2")
    streamed = parse_experiment(experiment_dict(synthetic_root, tmp_path, data={"stream": True}), "t")
    assert stage_key(base, "stage2") == stage_key(streamed, "stage2")
    frozen = parse_experiment(experiment_dict(synthetic_root, tmp_path, model={"vision": {"frozen": True}}), "t")
    assert stage_key(base, "stage0") == stage_key(frozen, "stage0")
    assert stage_key(base, "stage1") != stage_key(frozen, "stage1")
    reseeded = base.model_copy(update={"seed": 1})
    assert all(stage_key(base, s) != stage_key(reseeded, s) for s in ("stage0", "stage1", "stage2"))
    # The optimizer and precision are what the report-model stages train with; stage 0 trains in fp32
    # with AdamW whatever they are, so its encoder is shared.
    for optimizer in ({"deepspeed": "zero2"}, {"precision": "bf16"}):
        changed = base.model_copy(update={"ray": base.ray.model_copy(update=optimizer)})
        assert stage_key(base, "stage0") == stage_key(changed, "stage0")
        assert all(stage_key(base, s) != stage_key(changed, s) for s in ("stage1", "stage2"))
    regrouped = base.model_copy(update={"ray": base.ray.model_copy(update={"workers": 1})})
    assert all(stage_key(base, s) == stage_key(regrouped, s) for s in ("stage0", "stage1", "stage2"))


def test_a_manifest_edited_in_place_is_not_the_data_a_finished_stage_saw(synthetic_root, tmp_path):
    """The same YAML over a training manifest whose records changed keys its stages anew, so a rerun
    trains them instead of reusing stages trained on the old records."""
    manifest = tmp_path / "train.jsonl"
    manifest.write_bytes((synthetic_root / "train.jsonl").read_bytes())
    raw = experiment_dict(synthetic_root, tmp_path)
    raw["data"] = {"mixture": [{"name": "site", "manifest": str(manifest)}], "image_root": str(synthetic_root),
                   "eval_manifest": str(synthetic_root / "test.jsonl"), "val_manifest": str(synthetic_root / "val.jsonl")}
    raw["eval"] = {"metrics": ["rouge_l"]}
    experiment = parse_experiment(raw, "t")
    before = {s: stage_key(experiment, s) for s in ("stage0", "stage1", "stage2")}
    assert before == {s: stage_key(experiment, s) for s in before}
    records = manifest.read_text().splitlines()
    manifest.write_text("\n".join(records[:-1]) + "\n")  # one record fewer, the same path
    assert all(stage_key(experiment, s) != key for s, key in before.items())


def test_images_exported_again_to_the_same_paths_are_not_what_a_finished_stage_saw(synthetic_root, tmp_path):
    """A rerun over training images written again at the same paths (another resolution, windowing or
    quality: other sizes) keys every stage anew; the same images copied with new modification times
    keep the keys. Each rerun is a process of its own, as `radlab run` is."""
    import yaml

    root = tmp_path / "site"
    shutil.copytree(synthetic_root, root)
    raw = experiment_dict(synthetic_root, tmp_path)
    raw["data"] = {"mixture": [{"name": "site", "manifest": str(root / "train.jsonl")}], "image_root": str(root),
                   "eval_manifest": str(root / "test.jsonl"), "val_manifest": str(root / "val.jsonl")}
    raw["eval"] = {"metrics": ["rouge_l"]}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(raw))
    code = ("import json, sys; from radlab.config import load_experiment; from radlab.train.stages import stage_key; "
            "e = load_experiment(sys.argv[1]); "
            "print(json.dumps({s: stage_key(e, s) for s in ('stage0', 'stage1', 'stage2')}))")

    def keys() -> dict:
        run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "experiment.yaml")], capture_output=True,
                             text=True, check=True)
        return json.loads(run.stdout.strip().splitlines()[-1])

    before = keys()
    image = root / json.loads((root / "train.jsonl").read_text().splitlines()[0])["image"]
    for path in (root / "images").rglob("*.png"):  # copied again: the same bytes, new modification times
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert keys() == before
    image.write_bytes(image.read_bytes() + b"\0")  # exported again: other bytes at the same path
    after = keys()
    assert all(after[s] != before[s] for s in before)


def test_a_model_folder_written_again_in_place_is_not_what_a_finished_stage_built_on(synthetic_root, tmp_path):
    """A language model folder rewritten at the same path (a new conversion, other weights) keys
    stages 1 and 2 anew; stage 0, which does not read it, keeps its key."""
    import os

    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    raw = experiment_dict(synthetic_root, tmp_path, model={"language": {"path": str(folder)}})
    experiment = parse_experiment(raw, "t")
    before = {s: stage_key(experiment, s) for s in ("stage0", "stage1", "stage2")}
    assert before == {s: stage_key(experiment, s) for s in before}
    (folder / "model.safetensors").write_bytes(b"other w")  # the same size
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = {s: stage_key(experiment, s) for s in before}
    assert after["stage0"] == before["stage0"]
    assert after["stage1"] != before["stage1"] and after["stage2"] != before["stage2"]


def test_an_encoder_copied_out_again_by_a_rerun_keeps_the_key_of_the_stages_built_on_it(synthetic_root, tmp_path):
    """A stage 0 encoder folder is copied out anew at the end of every run of its experiment (new
    files, new modification times); the stages that build on it keep their key while its weights
    are the same (its checksums.json), and change it when they are not."""
    from radlab.model.checkpoint import atomic_folder

    folder = tmp_path / "encoder"

    def write(weights: bytes) -> None:
        with atomic_folder(folder, checksums=True) as tmp:
            (tmp / "config.json").write_text("{}")
            (tmp / "model.safetensors").write_bytes(weights)

    write(b"weights")
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, model={"vision": {"path": str(folder)}}), "t")
    before = stage_key(experiment, "stage1")
    write(b"weights")
    assert stage_key(experiment, "stage1") == before
    write(b"other w")
    assert stage_key(experiment, "stage1") != before


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list) -> None:
    deadline = time.time() + 120
    # The controller writes its snapshot once it has registered a reported checkpoint.
    while time.time() < deadline and not (run_dir / "checkpoint_manager_snapshot.json").is_file():
        time.sleep(0.05)
    workers = [p for p in psutil.process_iter(["cmdline"])
               if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker")]
    if workers:
        os.kill(workers[-1].pid, signal.SIGKILL)
        killed.append(workers[-1].pid)


def test_two_workers_checkpoint_and_resume_after_a_worker_is_killed(ray_session, synthetic_root, tokenizer_files,
                                                                     tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, stage1={
        "max_steps": 120, "global_batch": 2, "micro_batch": 1, "checkpoint_every": 10, "log_every": 10}), "t")
    run_dir = tmp_path / "ray" / f"test-tiny-stage1-{stage_key(experiment, 'stage1')}"
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    run_id = client.create_run(client.create_experiment("kill")).info.run_id
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(run_dir, killed))
    killer.start()
    result = run_stage(StageJob(experiment, "stage1", tokenizer_files, tracking, run_id))
    checkpoint = result.checkpoint
    killer.join()
    assert killed, "no worker was alive to kill"
    # The steps replayed after the restart are not logged twice.
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(10, 121, 10))
    assert client.get_metric_history(run_id, "resumed_at_step")
    assert client.get_run(run_id).data.metrics["worker_group_failures"] == 1
    assert client.get_run(run_id).data.tags["radlab.failure.1"].startswith("worker ")
    with checkpoint.as_directory() as folder:
        state = load_train_state(Path(folder))
        meta = load_checkpoint(Path(folder)).meta
    assert meta["final"] and state["step"] == 120
    assert state["resumed_from"] and all(step % 10 == 0 and 0 < step < 120 for step in state["resumed_from"])
    assert state["samples"] == 120 * 2  # every optimizer step counted once, across the restart
    # A second run of the same stage reuses the finished result instead of training again, also when
    # it would keep another number of checkpoints.
    kept_fewer = experiment.model_copy(update={"stage1": experiment.stage1.model_copy(update={"keep_last": 1})})
    again = run_stage(StageJob(kept_fewer, "stage1", tokenizer_files))
    assert again.checkpoint.path == checkpoint.path
    # The last validation loss comes back with the result (the one logged at the final step) and
    # with the reused result too.
    assert result.metrics == again.metrics == {"val_loss": client.get_run(run_id).data.metrics["val_loss"]}


def _plain_loop_losses(model, experiment, tokenizer, stage_name: str, world: int, bf16: bool = False) -> list[float]:
    """The stage written as a plain PyTorch loop, the ranks' micro-batches taken in one process:
    each step's loss as radlab logs it (the mean of the ranks' losses); with `bf16`, each forward
    under bf16 autocast."""
    stage = getattr(experiment, stage_name)
    set_trainable(model, stage.train + ([] if experiment.model.vision.frozen else ["vision"]))
    dataset = stage_dataset(experiment, tokenizer, "train", stage.template, image_transform(experiment.model.vision))
    ranks = []
    for rank in range(world):
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=experiment.seed,
                                     drop_last=True)
        ranks.append(iter(DataLoader(dataset, batch_size=stage.micro_batch, sampler=sampler,
                                     collate_fn=partial(collate, pad_id=tokenizer.pad_token_id))))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": params, "weight_decay": stage.weight_decay}], lr=stage.lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(stage.warmup_ratio * stage.max_steps), stage.max_steps)
    model.train()
    losses = []
    for _ in range(stage.max_steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            per_rank = [model(**{k: batch[k] for k in INPUTS}).loss for batch in (next(r) for r in ranks)]
        (sum(per_rank) / world).backward()  # DDP's gradient: the mean of the ranks'
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(sum(loss.item() for loss in per_rank) / world)
    return losses


def test_stage2_starts_from_stage1_and_adds_lora(ray_session, synthetic_root, tokenizer_dir, tokenizer_files,
                                                 tmp_path):
    """Stages 1 and 2 on two Ray Train workers, stage 2 from stage 1's checkpoint with LoRA added,
    train step for step as a plain PyTorch loop over the same batches does (same losses), and stage 2
    tunes the encoder the tiny preset leaves unfrozen."""
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, stage1={"checkpoint_every": 1,
                                                                                   "keep_last": 3}), "t")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    experiment_id = client.create_experiment("stages")
    runs = {stage: client.create_run(experiment_id).info.run_id for stage in ("stage1", "stage2")}
    first = run_stage(StageJob(experiment, "stage1", tokenizer_files, tracking, runs["stage1"])).checkpoint
    run_dir = tmp_path / "ray" / f"test-tiny-stage1-{stage_key(experiment, 'stage1')}"
    assert len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) == 3  # keep_last: the newest three of four
    second = run_stage(StageJob(experiment, "stage2", tokenizer_files, tracking, runs["stage2"],
                                init_from=first)).checkpoint
    with first.as_directory() as one, second.as_directory() as two:
        a, b = load_checkpoint(Path(one)), load_checkpoint(Path(two))
        tokenizer = load_tokenizer(tokenizer_dir)
        torch.manual_seed(experiment.seed)
        plain = build_model(experiment.model, tokenizer, experiment.data.max_length)
        plain_losses = {"stage1": _plain_loop_losses(plain, experiment, tokenizer, "stage1", 2)}
        torch.manual_seed(experiment.seed)  # stage 2's LoRA weights are drawn as its workers draw them
        continued = apply_lora(load_checkpoint(Path(one)).model, experiment.stage2.lora)
        plain_losses["stage2"] = _plain_loop_losses(continued, experiment, tokenizer, "stage2", 2)
    for stage, run_id in runs.items():
        logged = [m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
        assert logged == pytest.approx(plain_losses[stage], rel=1e-4), stage
    assert plain.state_dict().keys() == a.model.state_dict().keys()
    assert all(torch.allclose(v, a.model.state_dict()[k], atol=1e-5) for k, v in plain.state_dict().items())
    assert a.lora is None and b.lora.r == 4 and b.meta["stage"] == "stage2"
    vision_a = {k: v for k, v in a.model.state_dict().items() if "vision_tower" in k}
    vision_b = {k.replace("base_model.model.", ""): v for k, v in b.model.state_dict().items() if "vision_tower" in k}
    assert vision_a.keys() == vision_b.keys()
    changed = [k for k in vision_a if not (vision_a[k] == vision_b[k]).all()]
    assert changed  # the tiny preset tunes its encoder (vision.frozen: false)


def test_a_bf16_stage_on_cpus_trains_under_bf16_autocast(ray_session, synthetic_root, tokenizer_dir, tokenizer_files,
                                                          tmp_path):
    """`ray.precision: bf16` without GPUs (what `auto` gives on a CPU with avx512_bf16 or AMX): the
    workers' forward runs under bf16 autocast, the weights and AdamW stay fp32. The losses radlab
    logs are a plain loop's under autocast, and not the fp32 loop's."""
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, ray={"precision": "bf16"}), "t")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    run_id = client.create_run(client.create_experiment("bf16")).info.run_id
    trained = run_stage(StageJob(experiment, "stage1", tokenizer_files, tracking, run_id)).checkpoint
    tokenizer = load_tokenizer(tokenizer_dir)
    plain = {}
    for bf16 in (True, False):
        torch.manual_seed(experiment.seed)
        model = build_model(experiment.model, tokenizer, experiment.data.max_length)
        plain[bf16] = _plain_loop_losses(model, experiment, tokenizer, "stage1", 2, bf16=bf16)
    logged = [m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    # The first step's loss comes from the same weights on both sides: autocast's, to the bit.
    assert logged[0] == pytest.approx(plain[True][0], rel=1e-6) != plain[False][0]
    assert logged == pytest.approx(plain[True], rel=1e-4)
    assert logged != pytest.approx(plain[False], rel=1e-4)
    with trained.as_directory() as folder:
        weights = load_checkpoint(Path(folder)).model.state_dict().values()
    assert {w.dtype for w in weights if w.is_floating_point()} == {torch.float32}


def _stage_metrics(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name)) for name in ("loss", "lr")}


def test_a_deepspeed_stage_resumed_after_a_kill_continues_its_optimizer_and_schedule(
        ray_session, synthetic_root, tokenizer_files, tmp_path):
    """ZeRO-2 on the CPU, LoRA with dropout: the loss and lr of every step after the restart equal an
    uninterrupted run's (AdamW's partitions, the warmup-cosine schedule, the step and every rank's
    random generators, which draw LoRA's dropout masks, come back from the checkpoint)."""
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    experiment_id = client.create_experiment("deepspeed-resume")
    runs = {}
    for attempt in ("straight", "killed"):
        experiment = parse_experiment(experiment_dict(
            synthetic_root, tmp_path / attempt, ray={"deepspeed": "zero2"}, model={"vision": {"frozen": True}},
            stage1={"max_steps": 40, "checkpoint_every": 4 if attempt == "killed" else 40, "warmup_ratio": 0.2,
                    "train": ["projector", "lora"], "lora": {"r": 4, "alpha": 8, "dropout": 0.3},
                    "val_examples": 0}), "t")
        run_id = client.create_run(experiment_id).info.run_id
        killed: list = []
        killer = None
        run_dir = tmp_path / attempt / "ray" / f"test-tiny-stage1-{stage_key(experiment, 'stage1')}"
        if attempt == "killed":
            killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(run_dir, killed))
            killer.start()
        checkpoint = run_stage(StageJob(experiment, "stage1", tokenizer_files, tracking, run_id)).checkpoint
        if killer is not None:
            killer.join()
            assert killed and client.get_metric_history(run_id, "resumed_at_step"), "the stage was not restarted"
        with checkpoint.as_directory() as folder:
            assert load_train_state(Path(folder))["step"] == 40
            assert load_checkpoint(Path(folder)).meta["final"]
            assert (Path(folder) / "deepspeed" / "state").is_dir()
        if attempt == "killed":  # the resume point kept beside the final checkpoint holds the projector
            # and LoRA alone; the frozen tower and language model were rebuilt as the stage began
            resume_points = [p for p in run_dir.glob("checkpoint_*") if p.is_dir() and is_resume_point(p)]
            assert resume_points
            saved = load_file(str(resume_points[0] / "model.safetensors"))
            assert sum("multi_modal_projector" in name for name in saved) == 4
            assert all("multi_modal_projector" in name or "lora_" in name for name in saved)
            assert len(load_train_state(resume_points[0])["generators"]) == 2  # one per rank
        runs[attempt] = _stage_metrics(client, run_id)
    resumed_at = int(client.get_metric_history(run_id, "resumed_at_step")[0].value)
    straight, killed_run = runs["straight"], runs["killed"]
    assert [step for step, _ in killed_run["lr"]] == list(range(1, 41))
    after = slice(resumed_at, None)
    assert [v for _, v in killed_run["lr"][after]] == pytest.approx([v for _, v in straight["lr"][after]], rel=1e-9)
    assert [v for _, v in killed_run["loss"][after]] == pytest.approx([v for _, v in straight["loss"][after]],
                                                                      rel=1e-5)


def test_skipped_images_are_counted_on_every_rank(ray_session, synthetic_root, tokenizer_files, tmp_path):
    root = shutil.copytree(synthetic_root, tmp_path / "synthetic")
    experiment = parse_experiment(experiment_dict(root, tmp_path), "t")
    examples = split_examples(experiment.data, "train")
    for example in examples[::2]:
        Path(example.image).write_bytes(b"\x89PNG damaged")
    # The images each of the 2 ranks draws in 4 steps of 4: DistributedSampler's order, as in the loop.
    drawn = []
    for rank in (0, 1):
        sampler = DistributedSampler(range(len(examples)), num_replicas=2, rank=rank, shuffle=True, seed=0,
                                     drop_last=True)
        sampler.set_epoch(0)
        drawn.append([i for i in list(sampler)[:16]])
    per_rank = [sum(i % 2 == 0 for i in indices) for indices in drawn]
    assert min(per_rank) > 0
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    run_id = client.create_run(client.create_experiment("skips")).info.run_id
    checkpoint = run_stage(StageJob(experiment, "stage1", tokenizer_files, tracking, run_id)).checkpoint
    with checkpoint.as_directory() as folder:
        assert load_train_state(Path(folder))["skipped"] == sum(per_rank)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["skipped_images"] == sum(per_rank)
    assert 0 < metrics["wall_samples_per_s"]  # start-up and checkpoints included, beside samples_per_s


def test_a_dead_workers_cause_names_why_ray_ended_its_process():
    """A failed health check says only that a worker is gone; Ray's exit detail says why (here its
    placement group removed, as Ray's state API on another Ray once made Ray Train's cleaner do)."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    # As Ray builds it from the GCS's record of the dead actor.
    died = ActorDiedError(ActorDiedErrorContext(
        class_name="RayTrainWorker", actor_id=bytes.fromhex("311e198c98944b6fac00f1c901000000"), pid=8232,
        error_message="The actor is dead because its worker process has died. Worker exit type: INTENDED_SYSTEM_EXIT "
                      "Worker exit detail: Destroying worker since its placement group was removed. Placement group "
                      "id: 61182e7f54de938b943f54768a2701000000, bundle index: 0"))
    cause = failure_cause({0: WorkerHealthCheckFailedError("A worker health check failed.", died),
                           1: RuntimeError("gloo: connection closed by peer")})
    assert cause == ("worker 0: WorkerHealthCheckFailedError: A worker health check failed. (Destroying worker since "
                     "its placement group was removed)")
    assert failure_cause({0: RuntimeError("CUDA out of memory")}) == "CUDA out of memory"
