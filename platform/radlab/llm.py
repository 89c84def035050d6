"""Asking an LLM over any OpenAI-compatible API (OpenAI, Azure OpenAI, a local server) with the
official `openai` client: bounded concurrency, a requests-per-minute limit, retries with backoff
on 429/5xx/timeouts and on answers that do not parse, a persistent answer cache, token and cost
accounting, and the off-site guard. The CheXprompt judge and report structuring both ask through
it; each brings its own messages and answer parser."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from radlab.config import JudgeConfig
from radlab.errors import RadlabError

RETRYABLE = (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError)


class OffsiteError(RadlabError, RuntimeError):
    """An endpoint off this machine without the user's consent to send reports there."""


class AnswerUnusable(ValueError):
    """Raised by an answer parser: the answer is retried, then recorded as failed."""


@dataclass
class Answer:
    """One request's outcome: the parsed value when the answer parsed, else the error; never both."""
    value: Any
    raw: str | None
    error: str | None = None
    cached: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Request:
    key: list[str]  # what identifies the answer in the cache, besides the judge (LLMClient.asked_of)
    messages: list[dict]


class AnswerCache:
    """sqlite: a request's key -> its raw answer and usage. Durable per answer, so an interrupted
    pass resumes paying only for what it had not asked yet."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False)
        # WAL with normal sync: each answer is durable once written, without an fsync per answer.
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma synchronous=normal")
        self.db.execute("create table if not exists answers (key text primary key, answer text, usage text)")

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        row = self.db.execute("select answer from answers where key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, answer: str, usage: dict) -> None:
        self.db.execute("insert or replace into answers values (?, ?, ?)", (key, answer, json.dumps(usage)))
        self.db.commit()


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (not at all for rpm None)."""

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            delay = max(0.0, self.next_start - now)
            self.next_start = max(now, self.next_start) + self.interval
        if delay:
            await asyncio.sleep(delay)


class LLMClient:
    """Sends requests and parses answers; `usage` accumulates tokens of requests actually sent.
    `consent_field` names the setting that opts in to an off-site endpoint, for the error."""

    def __init__(self, config: JudgeConfig, base_url: str | None = None, consent_field: str = "allow_offsite"):
        self.config = config
        self.base_url = base_url or config.base_url
        if config.offsite(self.base_url) and not config.allow_offsite:
            raise OffsiteError(config.offsite_refusal(consent_field, self.base_url))
        self.cache = AnswerCache(Path(config.cache))
        # What decides an answer besides the request: the model, where it is asked (the same model
        # name on another server or Azure deployment can be another model; the loopback reference
        # judge's port changes from run to run, its model does not) and how (temperature, token limit).
        where = "" if config.endpoint == "synthetic-reference" else self.base_url or config.endpoint
        self.asked_of = [config.model, config.endpoint, where, f"{config.temperature:g}", str(config.max_tokens)]
        self.usage = {"requests": 0, "answered": 0, "prompt_tokens": 0, "completion_tokens": 0, "retries": 0,
                      "cache_hits": 0, "failed": 0}

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

    async def _ask(self, client, limiter: RateLimiter, gate: asyncio.Semaphore, request: Request,
                   parse: Callable[[str | None], Any]) -> Answer:
        key = AnswerCache.key(*self.asked_of, *request.key)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage["cache_hits"] += 1
            return Answer(parse(hit), hit, cached=True)
        error, raw = "", None
        async with gate:
            for attempt in range(1, self.config.max_retries + 2):
                if attempt > 1:
                    self.usage["retries"] += 1
                    await asyncio.sleep(self.config.retry_base_s * 2 ** (attempt - 2) * (1 + random.random() / 4))
                await limiter.wait()
                self.usage["requests"] += 1  # every request sent, answered or not
                try:
                    response = await client.chat.completions.create(
                        model=self.config.model, messages=request.messages,
                        temperature=self.config.temperature, max_tokens=self.config.max_tokens)
                except RETRYABLE as err:
                    error = f"{type(err).__name__}: {err}"
                    continue
                except openai.APIError as err:  # 400, 401, 404...: retrying will not help
                    self.usage["failed"] += 1
                    return Answer(None, None, f"{type(err).__name__}: {err}", attempts=attempt)
                self.usage["answered"] += 1
                if response.usage is not None:
                    self.usage["prompt_tokens"] += response.usage.prompt_tokens
                    self.usage["completion_tokens"] += response.usage.completion_tokens
                raw = response.choices[0].message.content if response.choices else None
                try:
                    value = parse(raw)
                except AnswerUnusable as err:
                    error = f"unparseable answer: {err}"
                    continue
                self.cache.put(key, raw, response.usage.model_dump() if response.usage else {})
                return Answer(value, raw, attempts=attempt)
        self.usage["failed"] += 1
        return Answer(None, raw, error, attempts=self.config.max_retries + 1)

    async def ask_async(self, requests: list[Request | None], parse: Callable[[str | None], Any],
                        progress=None) -> list[Answer | None]:
        """Answers in the order of `requests`; a None request (nothing to ask) gives None."""
        limiter = RateLimiter(self.config.rate_limit)
        gate = asyncio.Semaphore(self.config.concurrency)
        async with self._client() as client:
            async def one(request):
                result = None if request is None else await self._ask(client, limiter, gate, request, parse)
                if progress is not None:
                    progress(1)
                return result

            return await asyncio.gather(*(one(r) for r in requests))

    def ask(self, requests: list[Request | None], parse: Callable[[str | None], Any], progress=None) -> list[Answer | None]:
        return asyncio.run(self.ask_async(requests, parse, progress))
