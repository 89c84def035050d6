"""The per-worker training loop of one stage, run by Ray Train's TorchTrainer.

setup (model from the previous stage, a fresh build, or this stage's own last checkpoint),
train (gradient accumulation to the global batch, cosine schedule with warmup, DDP or DeepSpeed),
save_checkpoint (every K optimizer steps and at the end, reported to Ray Train). A restarted worker
group resumes from the last reported checkpoint and skips the batches it already trained on.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from torch.utils.data import DataLoader, DistributedSampler
from transformers import get_cosine_schedule_with_warmup

from radlab.config import Experiment, StageConfig
from radlab.data.dataset import stage_dataset
from radlab.data.image_pipeline import streamed_batches
from radlab.formats.batch import collate
from radlab.formats.tokenizer import load_tokenizer
from radlab.model.build import apply_lora, build_model, count_parameters, set_trainable
from radlab.model.checkpoint import (
    is_resume_point,
    load_checkpoint,
    load_train_state,
    load_trainable,
    newest_intact,
    save_checkpoint,
)
from radlab.train.deepspeed import deepspeed_config, load_engine_state, save_engine_state

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Plan:
    """How many micro-batches make an optimizer step, and how many steps the stage runs."""
    accumulation: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, stage: StageConfig, examples: int, world: int) -> Plan:
        accumulation = max(1, stage.global_batch // (stage.micro_batch * world))
        batches = math.ceil(math.ceil(examples / world) / stage.micro_batch)
        steps_per_epoch = max(1, batches // accumulation)
        total = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))
        return cls(accumulation, steps_per_epoch, total)


def report_with_checkpoint(rank: int, metrics: dict, save: Callable[[Path], None],
                           save_shard: Callable[[Path], None] | None = None) -> None:
    """Report to Ray Train: rank 0 with the checkpoint `save(folder)` writes, the other ranks without.
    With `save_shard` (DeepSpeed: a collective) every rank adds its own files to the same checkpoint,
    which Ray Train gathers into one folder."""
    if rank != 0 and save_shard is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        if rank == 0:
            save(folder)
        if save_shard is not None:
            folder.mkdir(exist_ok=True)
            save_shard(folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def use_worker_cpus(experiment: Experiment) -> None:
    """Without GPUs, torch computes on as many threads as the worker holds CPUs."""
    if not experiment.ray.use_gpu:
        torch.set_num_threads(max(1, int(experiment.ray.cpus_per_worker)))


class StepLog:
    """Step metrics straight to the stage's MLflow run, from rank 0, with the node's system metrics
    (CPU, memory, disk, network, GPUs where nvidia-ml-py is installed: MLflow's `system/*`) every
    `system_every_s`. A resumed attempt replays the steps after its checkpoint; those the attempt
    before had already logged are not logged again."""

    def __init__(self, config: dict, rank: int, system_every_s: float = 10.0):
        self.run_id = config.get("run_id")
        self.client = MlflowClient(config["tracking_uri"]) if rank == 0 and self.run_id else None
        self.logged_upto = 0
        self.system = None
        if self.client is not None:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.system = SystemMetricsMonitor(self.run_id, sampling_interval=system_every_s, resume_logging=True,
                                               tracking_uri=config["tracking_uri"])
            self.system.start()

    def close(self) -> None:
        """Stop sampling the system metrics, logging the last samples."""
        if self.system is not None:
            self.system.finish()

    def resumed(self, step: int, world: int) -> None:
        """Report the restart (the driver shows it) and note how far the attempts before logged."""
        if self.client is not None:
            history = self.client.get_metric_history(self.run_id, "loss")
            self.logged_upto = max((m.step for m in history), default=0)
            self._write({"resumed_at_step": step, "resumed_workers": world}, step)

    def log(self, metrics: dict, step: int) -> None:
        if self.client is not None and step > self.logged_upto:
            self._write(metrics, step)

    def _write(self, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                                    if k != "step"])


class RankCounts:
    """Counts each rank adds to (images skipped, texts truncated), summed over all ranks when read.
    `start` holds the totals a resumed attempt begins from. `totals()` is a collective: every rank
    calls it at the same step."""

    def __init__(self, names: tuple[str, ...], start: dict | None, device: torch.device):
        self.names, self.device = names, device
        self.start = {n: (start or {}).get(n, 0) for n in names}
        self.mine = dict.fromkeys(names, 0)

    def add(self, batch: dict) -> None:
        for name in self.names:
            self.mine[name] += batch[name]

    def totals(self) -> dict[str, int]:
        counts = torch.tensor([self.mine[n] for n in self.names], dtype=torch.long, device=self.device)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(counts)
        return {n: self.start[n] + int(c) for n, c in zip(self.names, counts.tolist(), strict=True)}


@torch.no_grad()
def validation_loss(model, loader: DataLoader, device, autocast) -> float:
    """Mean loss over the validation batches (rank 0 alone, on the unwrapped model)."""
    model.eval()
    total, batches = 0.0, 0
    for batch in loader:
        if "input_ids" in batch:
            with autocast():
                total += model(**{k: batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values",
                                                                  "labels")}).loss.item()
            batches += 1
    return total / max(1, batches)


def resume_folder(folder: Path, say: bool = True) -> Path:
    """The newest intact checkpoint at or beside the one Ray Train resumes from, saying (on rank 0)
    which damaged ones were passed over."""
    intact, problems = newest_intact(folder)
    if say and problems and ray.train.get_context().get_world_rank() == 0:
        print(f"passed over damaged checkpoints ({'; '.join(problems)}); resuming from {intact}", flush=True)
    return intact


def _initial_model(experiment: Experiment, stage: StageConfig, init_from, vision_from, tokenizer_dir: str):
    """(model, tokenizer, resume state) for this stage's first step: where the stage begins, or
    where it stopped. A resume point holds only the trained weights: they go over the model the
    stage began from, rebuilt as it was (the same previous stage, or the same seed)."""
    resume = ray.train.get_checkpoint()
    if resume is None:
        return (*_stage_start(experiment, stage, init_from, vision_from, tokenizer_dir), None)
    with resume.as_directory() as folder:
        folder = resume_folder(Path(folder))
        if is_resume_point(folder):
            model, tokenizer = _stage_start(experiment, stage, init_from, vision_from, tokenizer_dir)
            load_trainable(model, folder)
        else:  # a stage's final checkpoint
            loaded = load_checkpoint(folder)
            model, tokenizer = loaded.model, loaded.tokenizer
        return model, tokenizer, load_train_state(folder)


def _stage_start(experiment: Experiment, stage: StageConfig, init_from, vision_from, tokenizer_dir: str):
    """(model, tokenizer) the stage begins from: the previous stage's model or a fresh build."""
    if init_from is not None:
        with init_from.as_directory() as folder:
            loaded = load_checkpoint(Path(folder), expect=experiment.model)
        model = apply_lora(loaded.model, stage.lora) if stage.lora and loaded.lora is None else loaded.model
        return model, loaded.tokenizer
    tokenizer = load_tokenizer(tokenizer_dir)
    if vision_from is not None:  # the image tower stage 0 trained
        with vision_from.as_directory() as folder:
            model_config = experiment.model.model_copy(update={"vision": experiment.model.vision.model_copy(
                update={"path": folder})})
            model = build_model(model_config, tokenizer, experiment.data.max_length)
    else:
        model = build_model(experiment.model, tokenizer, experiment.data.max_length)
    return (apply_lora(model, stage.lora) if stage.lora else model), tokenizer


def train_stage(config: dict) -> None:
    """Ray Train entry point. `config`: experiment (dict), stage (name), init_from and vision_from
    (Checkpoints or None), tokenizer (folder), tracking_uri and run_id (the stage's MLflow child run)."""
    started = time.perf_counter()
    experiment = Experiment.model_validate(config["experiment"])
    stage_name = config["stage"]
    stage: StageConfig = getattr(experiment, stage_name)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(experiment.data.synthetic.seed if experiment.data.synthetic else 0)
    use_worker_cpus(experiment)
    device = ray.train.torch.get_device()

    model, tokenizer, state = _initial_model(experiment, stage, config["init_from"], config.get("vision_from"),
                                           config["tokenizer"])
    set_trainable(model, stage.train + ([] if experiment.model.vision.frozen else ["vision"]))
    if rank == 0:
        total, trainable_count = count_parameters(model)
        print(f"[{stage_name}] training {trainable_count:,} of {total:,} parameters", flush=True)
    if stage.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    dataset = stage_dataset(experiment, tokenizer, "train", stage.template)
    # Every rank must run the same number of steps (each report is a barrier): agree on the
    # smallest view of the data, should one rank have read a different manifest snapshot.
    size = torch.tensor([len(dataset)])
    if world > 1:
        torch.distributed.all_reduce(size, op=torch.distributed.ReduceOp.MIN)
    plan = Plan.of(stage, int(size), world)
    if int(size) < len(dataset):
        dataset.examples = dataset.examples[: int(size)]
    if experiment.data.stream:  # images decoded by the Ray Data pipeline the trainer was given
        shard = ray.train.get_dataset_shard("train")

        def epoch_batches(epoch: int):
            return streamed_batches(shard, dataset, stage.micro_batch, tokenizer.pad_token_id, epoch)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=True)
        loader = DataLoader(dataset, batch_size=stage.micro_batch, sampler=sampler,
                            collate_fn=partial(collate, pad_id=tokenizer.pad_token_id))

        def epoch_batches(epoch: int):
            sampler.set_epoch(epoch)
            return loader

    val_loader = None
    if rank == 0 and stage.val_examples:
        val = stage_dataset(experiment, tokenizer, "val", stage.template)
        val.examples = val.examples[: stage.val_examples]
        val_loader = DataLoader(val, batch_size=stage.micro_batch, collate_fn=partial(collate, pad_id=tokenizer.pad_token_id))

    params = [p for p in model.parameters() if p.requires_grad]
    warmup = int(stage.warmup_ratio * plan.total_steps)
    if experiment.ray.deepspeed != "none":
        import deepspeed

        ds_config = deepspeed_config(experiment.ray, stage, plan.accumulation, world, warmup, plan.total_steps)
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
        trainable = engine
    else:
        model.to(device)
        trainable = ray.train.torch.prepare_model(model, move_to_device=False)
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, plan.total_steps)
    step, samples, resumed_from = 0, 0, []
    counts = RankCounts(("skipped", "truncated"), state, device)
    totals = counts.start
    if state is not None:
        step, samples = state["step"], state["samples"]
        resumed_from = state["resumed_from"] + [step]
        if rank == 0:
            print(f"[{stage_name}] resuming at step {step}/{plan.total_steps}", flush=True)
        if experiment.ray.deepspeed == "none":
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        else:
            same_world = state.get("world", world) == world
            if not same_world and rank == 0:
                print(f"[{stage_name}] DeepSpeed's optimizer partitions were written by {state['world']} workers, "
                      f"resuming on {world}: AdamW's moments start afresh (weights, step and schedule kept)", flush=True)
            with ray.train.get_checkpoint().as_directory() as folder:
                load_engine_state(engine, resume_folder(Path(folder), say=False), optimizer_states=same_world)

    dtype = DTYPES[experiment.ray.precision]
    autocast = partial(torch.autocast, device_type=device.type, dtype=dtype) if dtype and experiment.ray.deepspeed == "none" else nullcontext
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16 and experiment.ray.deepspeed == "none")
    step_log = StepLog(config, rank)
    if state is not None:  # a restart (or a rerun) is reported, not absorbed: the driver shows it
        step_log.resumed(step, world)
    unwrapped = model

    def save(folder: Path, final: bool) -> None:
        train_state = {"step": step, "samples": samples, "resumed_from": resumed_from, "world": world, **totals}
        if experiment.ray.deepspeed == "none":
            train_state |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        save_checkpoint(folder, unwrapped, tokenizer, experiment.model, stage.lora,
                        {"stage": stage_name, "step": step, "final": final, "template": stage.template}, train_state,
                        trainable_only=not final)

    trainable.train()
    samples_before = samples
    window_loss, window_batches, window_items, window_tokens = 0.0, 0, 0, 0
    window_start = time.perf_counter()
    while step < plan.total_steps:
        epoch, done_in_epoch = divmod(step, plan.steps_per_epoch)
        micro = 0
        for index, batch in enumerate(epoch_batches(epoch)):
            if index < done_in_epoch * plan.accumulation:
                continue  # trained on before the restart
            if index >= plan.steps_per_epoch * plan.accumulation:
                break
            counts.add(batch)
            if "input_ids" in batch:
                inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
                with autocast():
                    loss = trainable(**inputs).loss
                if experiment.ray.deepspeed != "none":
                    engine.backward(loss)
                else:
                    scaler.scale(loss / plan.accumulation).backward()
                window_loss += loss.item()
                window_batches += 1
                window_items += len(inputs["input_ids"])
                samples += len(inputs["input_ids"]) * world
                window_tokens += int((inputs["labels"] != -100).sum())
            micro += 1
            if experiment.ray.deepspeed != "none":
                engine.step()
                if micro % plan.accumulation:
                    continue
            else:
                if micro % plan.accumulation:
                    continue
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            step += 1
            final = step >= plan.total_steps
            if step % stage.log_every == 0 or final or step % stage.checkpoint_every == 0:
                elapsed = time.perf_counter() - window_start
                totals = counts.totals()
                metrics = {
                    "loss": window_loss / max(1, window_batches),
                    "lr": optimizer.param_groups[0]["lr"],
                    "samples_per_s": window_items * world / elapsed,
                    # this attempt's samples over its whole time so far, start-up and checkpoints included
                    "wall_samples_per_s": (samples - samples_before) / (time.perf_counter() - started),
                    "tokens_per_s": window_tokens * world / elapsed,
                    "skipped_images": totals["skipped"],
                    "truncated_targets": totals["truncated"],
                    "step": step,
                    "epoch": step / plan.steps_per_epoch,
                }
                step_log.log(metrics, step)
                if rank == 0:
                    print(f"[{stage_name}] step {step}/{plan.total_steps} loss {metrics['loss']:.4f} "
                          f"lr {metrics['lr']:.2e} {metrics['samples_per_s']:.0f} samples/s", flush=True)
                # Ray Train V2's report is a round trip to the controller (about a second here),
                # so it comes with checkpoints only; step metrics go straight to MLflow.
                if final or step % stage.checkpoint_every == 0:
                    if val_loader is not None:
                        metrics["val_loss"] = validation_loss(unwrapped, val_loader, device, autocast)
                        step_log.log({"val_loss": metrics["val_loss"]}, step)
                        trainable.train()
                    report_with_checkpoint(rank, metrics, partial(save, final=final),
                                           None if experiment.ray.deepspeed == "none" else
                                           partial(save_engine_state, engine))
                window_loss, window_batches, window_items, window_tokens = 0.0, 0, 0, 0
                window_start = time.perf_counter()
            if final:
                break
    step_log.close()
