"""The recipe's optimizer and schedule: AdamW with a cosine schedule after linear warmup, under DDP
(with autocast and, for fp16, a gradient scaler), or DeepSpeed's engine (ZeRO-2, the LLaVA-Rad
recipe) holding both. Either way the recipe sees the same few calls, and a resumed stage continues
the same optimizer and schedule."""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import ray.train.torch
import torch
from transformers import get_cosine_schedule_with_warmup

from radlab.train.deepspeed import deepspeed_config, load_engine_state, save_engine_state

if TYPE_CHECKING:
    from radlab.train.recipe import StageKind

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchOptimizer:
    """AdamW + cosine schedule on the DDP-wrapped model; gradients accumulated over the plan's
    micro-batches and clipped to norm 1."""

    save_shard = None  # the whole state is in the train state rank 0 writes

    def __init__(self, stage: StageKind, warmup: int):
        plan, ray_config = stage.plan, stage.experiment.ray
        stage.model.to(stage.device)
        self.module = ray.train.torch.prepare_model(stage.model, move_to_device=False)
        groups = stage.parameter_groups()
        self.params = [p for group in groups for p in group["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=stage.config.lr)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup, plan.total_steps)
        self.accumulation = plan.accumulation
        dtype = DTYPES[ray_config.precision] if stage.mixed_precision else None
        self.autocast = partial(torch.autocast, device_type=stage.device.type, dtype=dtype) if dtype else nullcontext
        self.scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.accumulation).backward()

    def micro_step(self, micro: int) -> bool:
        """After the `micro`-th micro-batch of an epoch: step when a global batch is complete."""
        if micro % self.accumulation:
            return False
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return True

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def restore(self, state: dict, folder: Path) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedOptimizer:
    """DeepSpeed's engine with radlab's config (`train/deepspeed.py`): it accumulates, clips,
    scales the loss and steps AdamW and the schedule itself. Each rank saves its own ZeRO partition
    into the checkpoint (`save_shard`, a collective)."""

    autocast = nullcontext  # the engine holds the weights in the run's precision

    def __init__(self, stage: StageKind, warmup: int):
        import deepspeed

        plan = stage.plan
        params = [p for group in stage.parameter_groups() for p in group["params"]]
        config = deepspeed_config(stage.experiment.ray, stage.config, plan.accumulation, stage.world, warmup,
                                  plan.total_steps)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=stage.model, model_parameters=params,
                                                                 config=config)
        self.module = self.engine
        self.accumulation, self.rank, self.world, self.name = plan.accumulation, stage.rank, stage.world, stage.name
        self.save_shard = partial(save_engine_state, self.engine)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def micro_step(self, micro: int) -> bool:
        self.engine.step()  # steps the optimizer itself at each accumulation boundary
        return micro % self.accumulation == 0

    def state(self) -> dict:
        return {}

    def restore(self, state: dict, folder: Path) -> None:
        same_world = state.get("world", self.world) == self.world
        if not same_world and self.rank == 0:
            print(f"[{self.name}] DeepSpeed's optimizer partitions were written by {state['world']} workers, "
                  f"resuming on {self.world}: AdamW's moments start afresh (weights, step and schedule kept)",
                  flush=True)
        load_engine_state(self.engine, folder, optimizer_states=same_world)


def build_optimizer(stage: StageKind, warmup: int) -> TorchOptimizer | DeepSpeedOptimizer:
    """DeepSpeed where the run asks for it and the stage trains in the run's precision, else AdamW."""
    if stage.experiment.ray.deepspeed != "none" and stage.mixed_precision:
        return DeepSpeedOptimizer(stage, warmup)
    return TorchOptimizer(stage, warmup)
