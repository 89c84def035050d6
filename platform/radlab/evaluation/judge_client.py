"""Asking a CheXprompt judge over any OpenAI-compatible API through radlab's LLM client layer
(`radlab.llm`: concurrency, rate limit, retries, cache, cost, off-site guard)."""

from __future__ import annotations

import asyncio

from radlab.config import JudgeConfig
from radlab.evaluation.chexprompt import Counts, Prompt, parse_answer
from radlab.llm import Answer, LLMClient, Request


class Judgment(Answer):
    """One report's judgment: counts when the answer parsed, else the error; never both."""

    @property
    def counts(self) -> Counts | None:
        return self.value


class JudgeClient(LLMClient):
    """Judges (reference, candidate) pairs; the cache key is (judge model, prompt version,
    reference, candidate), so a re-run pays nothing twice."""

    def __init__(self, config: JudgeConfig, base_url: str | None = None):
        super().__init__(config, base_url, consent_field="eval.judge.allow_offsite: true")
        self.prompt = Prompt.load(config.prompt_file)

    async def judge_async(self, pairs: list[tuple[str, str]], progress=None) -> list[Judgment]:
        # An empty or truncated candidate is judged like any other: it omits findings, and leaving it
        # out would flatter a model that says nothing on hard studies.
        requests = [Request([self.prompt.version, reference, candidate], self.prompt.messages(reference, candidate))
                    for reference, candidate in pairs]
        answers = await self.ask_async(requests, parse_answer, progress)
        return [Judgment(a.value, a.raw, a.error, a.cached, a.attempts) for a in answers]

    def judge(self, pairs: list[tuple[str, str]], progress=None) -> list[Judgment]:
        return asyncio.run(self.judge_async(pairs, progress))
