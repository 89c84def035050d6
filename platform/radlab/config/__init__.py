"""The experiment YAML: its schema (a module per section), loading, `--set` overrides and hardware
checks.

Every section rejects unknown keys. Errors carry the file (or the override) and the field path,
one line each, so `radlab validate` can print them as they are. The names below are the package's
interface; the rest of radlab imports them from here.
"""

from radlab.config.base import ConfigError, Section, deep_merge
from radlab.config.data import DataConfig, DataSource, SyntheticData
from radlab.config.evaluation import (OFFSITE_RPM, EvalConfig, JudgeConfig, Metric, TrackingConfig, is_loopback_host,
                                      is_on_site)
from radlab.config.experiment import Experiment, absolute_store, missing_inputs, with_absolute_paths
from radlab.config.loading import apply_override, flatten, load_experiment, parse_experiment, parse_section, read_yaml
from radlab.config.model import LanguageConfig, LoraConfig, ModelConfig, VisionConfig
from radlab.config.ray_config import ACCELERATOR_GIB, STORAGE_SCHEMES, RayConfig, cpu_has_native_bf16
from radlab.config.stages import Stage0Config, StageConfig, TextTowerConfig, Trainable
from radlab.config.sweep import Objective, SchedulerConfig, SearchConfig, SearchRange, SweepConfig

__all__ = [
    "ACCELERATOR_GIB", "OFFSITE_RPM", "STORAGE_SCHEMES", "ConfigError", "DataConfig", "DataSource", "EvalConfig",
    "Experiment", "JudgeConfig", "LanguageConfig", "LoraConfig", "Metric", "ModelConfig", "Objective", "RayConfig",
    "SchedulerConfig", "SearchConfig", "SearchRange", "Section", "Stage0Config", "StageConfig", "SweepConfig",
    "SyntheticData", "TextTowerConfig", "TrackingConfig", "Trainable", "VisionConfig", "absolute_store",
    "apply_override", "cpu_has_native_bf16", "deep_merge", "flatten", "is_loopback_host", "is_on_site",
    "load_experiment", "missing_inputs", "parse_experiment", "parse_section", "read_yaml", "with_absolute_paths",
]
