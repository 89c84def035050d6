"""The judge client against a real loopback HTTP server that misbehaves on purpose: a fake of
GPT-4 (which cannot run here) scripted per candidate text."""

import asyncio
import time
from collections import Counter

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from radlab.config import JudgeConfig
from radlab.evaluation.chexprompt import Counts, format_answer
from radlab.evaluation.judge_client import JudgeClient
from radlab.evaluation.reference_judge import serve_in_thread
from radlab.llm import OffsiteError

GOOD = format_answer(Counts(dict.fromkeys("ABCDEF", 0) | {"B": 2}, dict.fromkeys("ABCDEF", 0)), "fine")


def faulty_gpt4_fake() -> tuple[FastAPI, Counter]:
    """429 twice for 'throttled', a slow first answer for 'slow', garbage always for 'garbage',
    503 always for 'down', a good answer otherwise."""
    app, seen = FastAPI(), Counter()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        body = await request.json()
        candidate = body["messages"][-1]["content"].split("<candidate>\n")[1].split("\n</candidate>")[0]
        seen[candidate] += 1
        if candidate == "throttled" and seen[candidate] <= 2:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429)
        if candidate == "down":
            return JSONResponse({"error": {"message": "unavailable"}}, status_code=503)
        if candidate == "slow" and seen[candidate] == 1:
            await asyncio.sleep(2)
        content = "I refuse to count." if candidate == "garbage" else GOOD
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}

    return app, seen


def config(tmp_path, **fields) -> JudgeConfig:
    return JudgeConfig(endpoint="compatible", base_url="http://127.0.0.1:1/v1", max_retries=3, retry_base_s=0.01,
                       timeout_s=0.5, cache=tmp_path / "cache.sqlite", requests_per_minute=60000,
                       cost_per_1k_input=0.03, cost_per_1k_output=0.06, **fields)


def test_retries_timeouts_garbage_and_outage(tmp_path):
    app, seen = faulty_gpt4_fake()
    with serve_in_thread(app) as url:
        client = JudgeClient(config(tmp_path), base_url=url)
        results = client.judge([("ref", "throttled"), ("ref", "slow"), ("ref", "garbage"), ("ref", "down"),
                                ("ref", "fine"), ("ref", " ")])
    throttled, slow, garbage, down, fine, empty = results
    assert throttled.ok and throttled.attempts == 3 and throttled.counts.significant["B"] == 2
    assert slow.ok and slow.attempts == 2
    assert not garbage.ok and garbage.counts is None and "unparseable" in garbage.error
    assert garbage.raw == "I refuse to count." and seen["garbage"] == 4
    assert not down.ok and "InternalServerError" in down.error
    assert fine.ok and fine.attempts == 1
    assert empty.ok and seen[" "] == 1  # an empty candidate is judged like any other report
    assert client.usage["prompt_tokens"] == 100 * client.usage["answered"]  # tokens of the answers that came
    assert client.usage["requests"] == sum(seen.values())  # every request sent counts, the failed ones too
    assert client.usage["failed"] == 2  # garbage and down: the judgments that could not be had
    assert client.cost == pytest.approx((client.usage["prompt_tokens"] * 0.03 + client.usage["completion_tokens"] * 0.06) / 1000)


def test_cache_hits_send_no_requests(tmp_path):
    app, seen = faulty_gpt4_fake()
    with serve_in_thread(app) as url:
        JudgeClient(config(tmp_path), base_url=url).judge([("ref", "fine"), ("ref", "garbage")])
        before = sum(seen.values())
        again = JudgeClient(config(tmp_path), base_url=url)
        results = again.judge([("ref", "fine"), ("ref", "garbage")])
    assert results[0].cached and results[0].ok
    assert sum(seen.values()) - before == 4            # only the failed one is asked again
    assert again.usage["cache_hits"] == 1


def test_an_answer_is_reused_only_for_the_same_judge_asked_the_same_way(tmp_path):
    """Another model, the same model name on another server, or another temperature or token limit
    is asked again rather than served an answer it did not give."""
    with serve_in_thread(faulty_gpt4_fake()[0]) as url, serve_in_thread(faulty_gpt4_fake()[0]) as other_server:
        JudgeClient(config(tmp_path), base_url=url).judge([("ref", "fine")])
        for fields, base_url in [({"model": "gpt-4o"}, url), ({}, other_server), ({"temperature": 0.7}, url),
                                 ({"max_tokens": 1024}, url), ({}, url)]:
            client = JudgeClient(config(tmp_path, **fields), base_url=base_url)
            (result,) = client.judge([("ref", "fine")])
            assert result.ok and result.cached == (fields == {} and base_url == url), (fields, base_url)


def test_rate_limit_spaces_requests(tmp_path):
    app, _ = faulty_gpt4_fake()
    with serve_in_thread(app) as url:
        client = JudgeClient(config(tmp_path).model_copy(update={"requests_per_minute": 600}), base_url=url)
        start = time.perf_counter()
        client.judge([("ref", f"fine {i}") for i in range(6)])
    assert time.perf_counter() - start >= 0.5  # 6 starts, 0.1 s apart


def test_offsite_endpoints_need_consent(tmp_path):
    with pytest.raises(OffsiteError, match="allow_offsite"):
        JudgeClient(config(tmp_path).model_copy(update={"base_url": "https://judge.example.org/v1"}))
    with pytest.raises(ValueError, match="allow_offsite"):
        JudgeConfig(endpoint="openai")
    consented = config(tmp_path).model_copy(update={"base_url": "https://judge.example.org/v1", "allow_offsite": True})
    assert JudgeClient(consented).base_url == "https://judge.example.org/v1"
