"""The judge, checked before anything is spent on it: one canary judgment (a reference against
itself) reaches the endpoint with the API key and the prompt the evaluation will use, and what it
cost gives the plan of the whole evaluation: requests, tokens, cost and wall time."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from radlab.config import ConfigError, Experiment, JudgeConfig
from radlab.data.dataset import split_examples
from radlab.evaluation.judge_client import JudgeClient
from radlab.evaluation.reference_judge import MODEL_ID, create_app, serve_in_thread


@contextmanager
def judge_client(config: JudgeConfig) -> Iterator[JudgeClient]:
    """A client of the configured judge; the synthetic reference judge is started on loopback for it."""
    local = config.endpoint == "synthetic-reference"
    with serve_in_thread(create_app()) if local else nullcontext(config.base_url) as base_url:
        yield JudgeClient(config.model_copy(update={"model": MODEL_ID}) if local else config, base_url)


@dataclass
class JudgePlan:
    """What judging `calls` reports will take, from one canary judgment."""
    endpoint: str
    model: str
    calls: int
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cost_per_call: float
    concurrency: int
    requests_per_minute: float | None

    @property
    def wall_s(self) -> float:
        by_concurrency = self.calls * self.latency_s / self.concurrency
        by_rate = self.calls * 60 / self.requests_per_minute if self.requests_per_minute else 0.0
        return max(by_concurrency, by_rate)

    def lines(self) -> list[str]:
        rate = f"{self.requests_per_minute:g} requests/min" if self.requests_per_minute else "no rate limit"
        canary = (f"judge {self.endpoint} ({self.model}) answered a canary judgment in {self.latency_s:.2f} s "
                  f"({self.prompt_tokens} prompt + {self.completion_tokens} completion tokens)")
        plan = (f"judging will send up to {self.calls} requests: about {self.calls * self.prompt_tokens:,} prompt + "
                f"{self.calls * self.completion_tokens:,} completion tokens, ${self.calls * self.cost_per_call:.2f}, "
                f"{self.wall_s:.0f} s ({self.concurrency} at a time, {rate}); cached answers cost nothing")
        return [canary, plan]


def judge_plan(config: JudgeConfig, calls: int, reference: str) -> JudgePlan:
    """Send one canary judgment (`reference` against itself, past the cache) and plan `calls` from
    it; ConfigError naming eval.judge when the judge cannot answer it."""
    with tempfile.TemporaryDirectory() as tmp, judge_client(config.model_copy(update={
            "cache": Path(tmp) / "canary.sqlite", "max_retries": min(config.max_retries, 1)})) as client:
        started = time.perf_counter()
        [canary] = client.judge([(reference, reference)])
        latency = time.perf_counter() - started
    if not canary.ok:
        raise ConfigError(f"eval.judge: a canary judgment at {client.base_url} failed, so no evaluation would "
                          f"succeed: {canary.error.splitlines()[0][:300]}")
    return JudgePlan(config.endpoint, client.config.model, calls, latency, client.usage["prompt_tokens"],
                     client.usage["completion_tokens"], client.cost, config.concurrency, config.rate_limit)


def evaluation_plan(experiment: Experiment) -> JudgePlan | None:
    """The judge plan of evaluating a report model on the eval split (None when CheXprompt is not
    asked for): its reports, twice when the untrained model is judged too."""
    cfg = experiment.eval
    if "chexprompt" not in cfg.metrics:
        return None
    examples = split_examples(experiment.data, cfg.split)[: cfg.limit]
    if not examples:
        raise ConfigError(f"eval.split {cfg.split}: no reports to evaluate")
    return judge_plan(cfg.judge, len(examples) * (2 if cfg.compares_untrained else 1), examples[0].findings)
