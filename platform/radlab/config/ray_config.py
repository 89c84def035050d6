"""The `ray` section: where the workers run, how many, on what hardware and in which precision,
and where Ray Train keeps the runs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from radlab.config.base import Section


# The memory of each accelerator's variants, smallest first: the smallest is ray.gpu_memory_gb's
# default, a larger one is asked of Ray by its label.
ACCELERATOR_GIB = {"V100": (16, 32), "T4": (16,), "L4": (24,), "A100": (40, 80), "H100": (80, 94)}


# The URL schemes pyarrow resolves to a filesystem, and so Ray Train (and radlab's own records) can
# keep runs in.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this machine's CPU computes in bf16 natively (the avx512_bf16 or amx_bf16 flag of
    Linux's /proc/cpuinfo); elsewhere, or without the file, False."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


class RayConfig(Section):
    address: str | None = Field(None, description="None starts an embedded local Ray; 'auto' or ray://host:10001 joins one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray")
    workers: int = Field(2, ge=1)
    min_workers: int | None = Field(None, ge=1, description="elastic training: when nodes are lost, go on with as "
                                    "few as this many workers (None: always `workers`, waiting for replacements)")
    node_wait_s: float = Field(600, gt=0, description="how long a restart waits for its workers' resources "
                               "(a replacement node) before it counts as a failure")
    cpus_per_worker: float | None = Field(None, gt=0, description="None: on an embedded Ray without GPUs, this "
                                          "machine's cores shared among the workers; otherwise 1")
    use_gpu: bool = False
    accelerator: Literal["V100", "A100", "H100", "L4", "T4"] | None = None
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "fp32", description="auto: the half precision the hardware trains in natively (bf16 on a CPU with "
        "avx512_bf16 or AMX and on GPUs from A100 on, fp16 on V100 and T4), else fp32")
    gpu_memory_gb: float | None = Field(None, gt=0, description="memory of each GPU, for the memory plan "
                                        "(default: the accelerator's smallest variant, e.g. V100 16); above it, "
                                        "the smallest variant that holds it is asked of Ray as "
                                        "accelerator_type:<accelerator>-<gb>G")
    deepspeed: Literal["none", "zero2", "zero3"] = "none"
    storage_path: str = Field("radlab_runs/ray", description="a folder (NFS on a cluster) or a URL: "
                              + ", ".join(f"{scheme}://" for scheme in STORAGE_SCHEMES))
    max_failures: int = Field(2, ge=0)

    @field_validator("storage_path")
    @classmethod
    def _storage(cls, value: str) -> str:
        scheme, url, _ = value.partition("://")
        if url and scheme not in STORAGE_SCHEMES:
            raise ValueError(f"{scheme}:// is no storage Ray Train keeps runs in; use a folder or one of "
                             + ", ".join(f"{known}://" for known in STORAGE_SCHEMES))
        if not url and re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", value):
            raise ValueError(f"{value} is a URL without its '//' (it would be a local folder named "
                             f"{value.split('/')[0]}); write {value.replace(':/', '://', 1)}")
        return value

    @property
    def placement_accelerator(self) -> str | None:
        """The accelerator type each worker asks Ray for: a variant larger than the accelerator's
        smallest carries its memory in Ray's own naming ("A100-80G", "V100-32G"), a label its nodes
        declare, so that a plan made for 32 GB never lands on a 16 GB V100. A plan for less than a
        variant holds (30 GB, say) asks for the smallest variant that holds it."""
        if not (self.accelerator and self.gpu_memory_gb):
            return self.accelerator
        variants = ACCELERATOR_GIB[self.accelerator]
        if self.gpu_memory_gb <= variants[0]:
            return self.accelerator
        return f"{self.accelerator}-{next(gib for gib in variants if gib >= self.gpu_memory_gb)}G"

    @property
    def joins_cluster(self) -> bool:
        """Whether the run joins a running Ray (`address`, or the RAY_ADDRESS a Ray job's driver
        gets) rather than starting one on this machine."""
        return self.address is not None or bool(os.environ.get("RAY_ADDRESS"))

    def default_cpus_per_worker(self, sharing_workers: int) -> float:
        """On an embedded Ray without GPUs, this machine's cores shared among `sharing_workers`;
        otherwise 1."""
        embedded_cpu = not self.joins_cluster and not self.use_gpu
        cores = self.num_cpus or os.cpu_count() or 1
        return float(max(1, cores // sharing_workers)) if embedded_cpu else 1.0

    def auto_precision(self) -> str:
        """What `precision: auto` resolves to, from the hardware the workers run on: GPUs by
        `accelerator`, the embedded Ray's CPUs by this machine's (emulated bf16 is slower than fp32).
        A cluster's CPUs are not this machine's: there it stays `auto` until the run has joined the
        cluster and asked its nodes (`radlab.runtime.cluster_precision`)."""
        if self.use_gpu:
            if self.accelerator is None:
                raise ValueError("precision auto on GPUs needs ray.accelerator (bf16 from A100 on, fp16 on V100 "
                                 "and T4); or set ray.precision")
            return "fp16" if self.accelerator in ("V100", "T4") else "bf16"
        if self.joins_cluster:
            return "auto"
        return "bf16" if cpu_has_native_bf16() else "fp32"

    @model_validator(mode="after")
    def _hardware(self) -> RayConfig:
        if self.cpus_per_worker is None:
            self.cpus_per_worker = self.default_cpus_per_worker(self.workers)
        if self.precision == "auto" and (resolved := self.auto_precision()) != "auto":
            self.precision = resolved
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"min_workers {self.min_workers} exceeds workers {self.workers}")
        if self.precision == "bf16" and self.accelerator in ("V100", "T4"):
            raise ValueError(f"precision bf16: {self.accelerator} has no bf16; use fp16")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs use_gpu: true (CPUs train in fp32 or bf16)")
        if self.accelerator and not self.use_gpu:
            raise ValueError(f"accelerator {self.accelerator} needs use_gpu: true")
        if self.accelerator and self.gpu_memory_gb and self.gpu_memory_gb > ACCELERATOR_GIB[self.accelerator][-1]:
            raise ValueError(f"gpu_memory_gb {self.gpu_memory_gb:g}: no {self.accelerator} has more than "
                             f"{ACCELERATOR_GIB[self.accelerator][-1]} GB; set the memory of the GPUs you have")
        if self.deepspeed == "zero3":
            raise ValueError("deepspeed zero3: a checkpoint would hold only rank 0's partition of the weights "
                             "(radlab does not gather ZeRO-3's parameters); use zero2, the LLaVA-Rad recipe's")
        if self.deepspeed != "none" and self.precision == "fp16" and not self.use_gpu:
            raise ValueError("deepspeed with fp16 needs GPUs")
        return self
