"""The synthetic set's reference judge: an OpenAI-compatible HTTP server that answers CheXprompt
requests exactly, by parsing both findings texts with the synthetic grammar.

It stands in for GPT-4 on the synthetic set only (its reports come from known labels), so the
quickstart and the tests exercise the real `openai` client path offline.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from radlab.data.synthetic import SEVERITIES, parse_findings
from radlab.evaluation.chexprompt import LETTERS, Counts, format_answer

MODEL_ID = "radlab-synthetic-reference"
_TAGS = re.compile(r"<reference>\s*(.*?)\s*</reference>.*?<candidate>\s*(.*?)\s*</candidate>", re.S)
_COMPARISON = re.compile(r"\b(compar|prior|previous|interval|unchanged|new)\w*", re.I)


def judge_pair(reference: str, candidate: str) -> tuple[Counts, str]:
    """Exact CheXprompt counts for a synthetic pair, with a one-line explanation."""
    ref, cand = parse_findings(reference), parse_findings(candidate)
    significant = dict.fromkeys(LETTERS, 0)
    insignificant = dict.fromkeys(LETTERS, 0)
    notes = []
    ref_by_kind = {f.kind: f for f in ref.findings}
    cand_kinds = set()
    for f in cand.findings:
        if f.kind in cand_kinds:
            insignificant["A"] += 1
            notes.append(f"{f.kind} repeated")
            continue
        cand_kinds.add(f.kind)
        truth = ref_by_kind.get(f.kind)
        if truth is None:
            significant["A"] += 1
            notes.append(f"false {f.kind}")
            continue
        if (f.side, f.zone) != (truth.side, truth.zone):
            significant["C"] += 1
            notes.append(f"{f.kind} misplaced")
        if f.severity != truth.severity:
            gap = abs(SEVERITIES.index(f.severity) - SEVERITIES.index(truth.severity))
            (significant if gap > 1 else insignificant)["D"] += 1
            notes.append(f"{f.kind} severity")
    for kind in ref_by_kind.keys() - cand_kinds:
        significant["B"] += 1
        notes.append(f"missed {kind}")
    for sentence in cand.unparsed:
        key = "E" if _COMPARISON.search(sentence) else "A"
        insignificant[key] += 1
        notes.append("comparison not in reference" if key == "E" else "unverifiable statement")
    return Counts(significant, insignificant), "; ".join(notes) or "no errors"


def _user_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def create_app(latency_s: float = 0.0) -> FastAPI:
    """The judge's HTTP app; `latency_s` delays each answer (to stand in for a remote LLM in load tests)."""
    app = FastAPI(title="radlab synthetic reference judge")

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "radlab"}]}

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        try:
            body = await request.json()
            messages = body["messages"]
            text = _user_text([m for m in messages if m.get("role") == "user"][-1])
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return JSONResponse({"error": {"message": "body must be JSON with messages[] holding a user turn",
                                           "type": "invalid_request_error"}}, status_code=400)
        match = _TAGS.search(text)
        if match is None:
            return JSONResponse({"error": {"message": "the last user message needs <reference>...</reference> "
                                           "and <candidate>...</candidate>", "type": "invalid_request_error"}},
                                status_code=400)
        if latency_s:
            await asyncio.sleep(latency_s)
        counts, explanation = judge_pair(*match.groups())
        answer = format_answer(counts, explanation)
        prompt_tokens = sum(len(_user_text(m).split()) for m in messages)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", MODEL_ID),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer.split()),
                      "total_tokens": prompt_tokens + len(answer.split())},
        }

    return app


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a background thread; yield its /v1 base URL.
    The port is the one the system gives the listening socket itself, so that processes starting
    their judges at once (sweep trials) never reach for the same free port."""
    # log_config=None: no handlers bound to whatever sys.stderr is now (it may be a temporary
    # capture stream); records go to the caller's logging setup.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the judge server did not start on 127.0.0.1")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
