"""Asking a CheXprompt judge over any OpenAI-compatible API (OpenAI, Azure OpenAI, a local server)
with the official `openai` client: bounded concurrency, a requests-per-minute limit, retries with
backoff, a persistent answer cache, token and cost accounting, and the off-site guard."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import openai

from radlab.config import JudgeConfig
from radlab.evaluation.chexprompt import Counts, ParseError, Prompt, parse_answer

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
RETRYABLE = (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError)


class JudgeError(RuntimeError):
    """A judge that cannot be used as configured (e.g. an off-site endpoint without opt-in)."""


@dataclass
class Judgment:
    """One report's judgment: counts when the answer parsed, else the error; never both."""
    counts: Counts | None
    raw: str | None
    error: str | None = None
    cached: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.counts is not None


def is_offsite(config: JudgeConfig) -> bool:
    if config.endpoint in ("openai", "azure"):
        return True
    host = urlparse(config.base_url or "").hostname or ""
    return not (host in LOOPBACK_HOSTS or host.startswith("127.") or host.endswith(".localhost"))


class AnswerCache:
    """sqlite: (judge model, prompt version, reference, candidate) -> a parsed answer and its usage."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False)
        # WAL with normal sync: each answer is durable once written, without an fsync per answer.
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma synchronous=normal")
        self.db.execute("create table if not exists answers (key text primary key, answer text, usage text)")

    @staticmethod
    def key(model: str, version: str, reference: str, candidate: str) -> str:
        return hashlib.sha256(json.dumps([model, version, reference, candidate]).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        row = self.db.execute("select answer from answers where key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, answer: str, usage: dict) -> None:
        self.db.execute("insert or replace into answers values (?, ?, ?)", (key, answer, json.dumps(usage)))
        self.db.commit()


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart."""

    def __init__(self, requests_per_minute: float):
        self.interval = 60.0 / requests_per_minute
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            delay = max(0.0, self.next_start - now)
            self.next_start = max(now, self.next_start) + self.interval
        if delay:
            await asyncio.sleep(delay)


class JudgeClient:
    """Judges (reference, candidate) pairs; `usage` accumulates tokens of requests actually sent."""

    def __init__(self, config: JudgeConfig, base_url: str | None = None):
        self.config = config
        self.base_url = base_url or config.base_url
        if config.endpoint != "synthetic-reference" and is_offsite(config) and not config.allow_offsite:
            raise JudgeError(
                f"eval.judge: endpoint {config.endpoint} {self.base_url or ''} is off this machine; sending "
                "reports there sends protected health information off-site: set eval.judge.allow_offsite: true "
                "to consent")
        self.prompt = Prompt.load(config.prompt_file)
        self.cache = AnswerCache(Path(config.cache))
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "retries": 0, "cache_hits": 0}

    def _client(self):
        key = os.environ.get(self.config.api_key_env, "unused-for-local-endpoints")
        common = {"api_key": key, "max_retries": 0, "timeout": self.config.timeout_s}
        if self.config.endpoint == "azure":
            return openai.AsyncAzureOpenAI(azure_endpoint=self.base_url, api_version=self.config.api_version, **common)
        return openai.AsyncOpenAI(base_url=self.base_url, **common)

    @property
    def cost(self) -> float:
        return (self.usage["prompt_tokens"] * self.config.cost_per_1k_input
                + self.usage["completion_tokens"] * self.config.cost_per_1k_output) / 1000

    async def _judge(self, client, limiter: RateLimiter, gate: asyncio.Semaphore,
                     reference: str, candidate: str) -> Judgment:
        key = AnswerCache.key(self.config.model, self.prompt.version, reference, candidate)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage["cache_hits"] += 1
            return Judgment(parse_answer(hit), hit, cached=True)
        if not candidate.strip():
            return Judgment(None, None, "empty candidate: not sent to the judge")
        error, raw = "", None
        async with gate:
            for attempt in range(1, self.config.max_retries + 2):
                if attempt > 1:
                    self.usage["retries"] += 1
                    await asyncio.sleep(self.config.retry_base_s * 2 ** (attempt - 2) * (1 + random.random() / 4))
                await limiter.wait()
                try:
                    response = await client.chat.completions.create(
                        model=self.config.model, messages=self.prompt.messages(reference, candidate),
                        temperature=self.config.temperature, max_tokens=self.config.max_tokens)
                except RETRYABLE as err:
                    error = f"{type(err).__name__}: {err}"
                    continue
                except openai.APIError as err:  # 400, 401, 404...: retrying will not help
                    return Judgment(None, None, f"{type(err).__name__}: {err}", attempts=attempt)
                self.usage["requests"] += 1
                if response.usage is not None:
                    self.usage["prompt_tokens"] += response.usage.prompt_tokens
                    self.usage["completion_tokens"] += response.usage.completion_tokens
                raw = response.choices[0].message.content if response.choices else None
                try:
                    counts = parse_answer(raw)
                except ParseError as err:
                    error = f"unparseable answer: {err}"
                    continue
                self.cache.put(key, raw, response.usage.model_dump() if response.usage else {})
                return Judgment(counts, raw, attempts=attempt)
        return Judgment(None, raw, error, attempts=self.config.max_retries + 1)

    async def judge_async(self, pairs: list[tuple[str, str]], progress=None) -> list[Judgment]:
        limiter = RateLimiter(self.config.requests_per_minute)
        gate = asyncio.Semaphore(self.config.concurrency)
        async with self._client() as client:
            async def one(pair):
                result = await self._judge(client, limiter, gate, *pair)
                if progress is not None:
                    progress(1)
                return result

            return await asyncio.gather(*(one(pair) for pair in pairs))

    def judge(self, pairs: list[tuple[str, str]], progress=None) -> list[Judgment]:
        return asyncio.run(self.judge_async(pairs, progress))
