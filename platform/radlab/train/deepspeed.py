"""DeepSpeed configs for the training stages (ZeRO-2 is the LLaVA-Rad recipe)."""

from __future__ import annotations

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
            "stage": {"zero2": 2, "zero3": 3}[ray.deepspeed],
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
