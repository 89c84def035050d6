"""DeepSpeed for the training stages (ZeRO-2 is the LLaVA-Rad recipe): its config, and its state in a
training checkpoint so that a resumed stage continues the same optimizer and schedule."""

from __future__ import annotations

from pathlib import Path

from radlab.config import RayConfig, StageConfig


def deepspeed_config(ray: RayConfig, stage: StageConfig, accumulation: int, world: int,
                     warmup_steps: int, total_steps: int) -> dict:
    """A DeepSpeed config whose batch sizes, precision and schedule match the stage's."""
    return {
        "train_micro_batch_size_per_gpu": stage.micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": stage.micro_batch * accumulation * world,
        "gradient_clipping": 1.0,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": ray.use_gpu,
            "contiguous_gradients": True,
        },
        "fp16": {"enabled": ray.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "bf16": {"enabled": ray.precision == "bf16"},
        "optimizer": {"type": "AdamW", "params": {"lr": stage.lr, "weight_decay": stage.weight_decay,
                                                  "betas": [0.9, 0.999], "eps": 1e-8,
                                                  "torch_adam": not ray.use_gpu}},
        "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": total_steps,
                                                           "warmup_num_steps": max(1, warmup_steps),
                                                           "warmup_type": "linear"}},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


# DeepSpeed's own state lives in a training checkpoint's `deepspeed/` folder, beside the model.
ENGINE_STATE = "deepspeed"
TAG = "state"


def save_engine_state(engine, folder: Path) -> None:
    """Each rank's ZeRO partition of the optimizer (fp32 master weights and AdamW moments), the loss
    scale, the schedule and the step, under `folder/deepspeed`. Trainable weights only: the model is
    in the checkpoint beside it. A collective: every rank calls it, each writing its own files."""
    engine.save_checkpoint(str(folder / ENGINE_STATE), tag=TAG, exclude_frozen_parameters=True)


def load_engine_state(engine, folder: Path, optimizer_states: bool = True) -> None:
    """Restore what `save_engine_state` wrote. `optimizer_states=False` keeps the schedule and step
    but starts AdamW afresh: ZeRO partitions written by another number of workers do not fit."""
    path = folder / ENGINE_STATE
    if not (path / TAG).is_dir():
        raise FileNotFoundError(f"{path}: no DeepSpeed state to resume the optimizer and schedule from")
    engine.load_checkpoint(str(path), tag=TAG, load_module_strict=False, load_optimizer_states=optimizer_states,
                           load_lr_scheduler_states=True)
