"""The Ray Serve application: a checkpoint loaded once per replica (serve/model.py), findings
generated with adaptive batching (serve/batching.py), behind a report endpoint and an OpenAI-compatible chat
endpoint.

    POST /v1/reports             multipart (image file, indication) or JSON {image_base64, indication}
    POST /v1/chat/completions    OpenAI chat format, the image as an image_url data URL; stream=true sends
                                 tokens as they are generated; max_tokens (max_completion_tokens),
                                 temperature (default 0: greedy, as reports should be), top_p and stop
                                 are honoured within the server's max_new_tokens
    GET  /v1/models              the served model
    GET  /healthz                liveness (no auth)

Request content (images, text) is never logged: these are patient images.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import metrics

from radlab.errors import RadlabError
from radlab.formats.prompts import findings_prompt
from radlab.model.sampling import Generated, Sampling, StreamFailed
from radlab.serve.batching import AdaptiveBatcher

if TYPE_CHECKING:
    import torch


class ServeArgs(BaseModel):
    """The application's arguments (the `args:` of a Serve config)."""
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="checkpoint folder, runs:/<id>/model or models:/<name>@<alias>")
    model_name: str = "radlab"
    tracking_uri: str | None = None
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    dtype: str = Field("auto", pattern="^(auto|fp32|fp16|bf16)$")
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.1, ge=0, description="the longest a request waits for its batch to fill")
    batch_idle_s: float = Field(0.01, ge=0, description="a batch goes when no request arrived for this long")
    max_new_tokens: int = Field(256, ge=1)
    api_key_env: str | None = Field(None, description="env var holding the bearer token; None: no auth")
    max_body_bytes: int = Field(20_000_000, ge=1024)
    max_pixels: int = Field(50_000_000, ge=1024)


class RequestError(ValueError):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


def resolve_model(source: str, tracking_uri: str | None) -> Path:
    from radlab.tracking.runs import fetch_checkpoint

    if "://" not in source and ":/" not in source:
        return Path(source)
    return fetch_checkpoint(source, tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""),
                            Path(os.environ.get("TMPDIR", "/tmp")) / f"radlab-serve-{uuid.uuid4().hex[:8]}")


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse({"error": {"message": str(err), "type": err.kind}}, status_code=err.status)


# The API description is served by the routes below, behind the same bearer token as the rest.
api = FastAPI(title="radlab report server", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(max_ongoing_requests=32)
@serve.ingress(api)
class ReportServer:
    def __init__(self, args: dict):
        self.args = ServeArgs.model_validate(args)
        from radlab.serve.model import ServedModel  # the replica's alone: the driver binds this class without it

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        self.model = ServedModel(resolve_model(self.args.model, self.args.tracking_uri), self.args.device,
                                 self.args.dtype, cpus)
        self.version = self.model.version
        self.api_key = os.environ.get(self.args.api_key_env) if self.args.api_key_env else None
        if self.args.api_key_env and not self.api_key:
            raise RuntimeError(f"api_key_env {self.args.api_key_env} is set in the config but empty in the environment")
        self.batcher = AdaptiveBatcher(self._generate_batch, self.args.max_batch_size, self.args.batch_idle_s,
                                       self.args.batch_wait_timeout_s, lambda size: self.batch_size.observe(size))
        self.requests = metrics.Counter("radlab_requests", "requests by route and status", tag_keys=("route", "status"))
        self.latency = metrics.Histogram("radlab_latency_ms", "request latency", boundaries=[10, 50, 100, 250, 500, 1000, 2500, 5000, 10000], tag_keys=("route",))
        self.batch_size = metrics.Histogram("radlab_batch_size", "generation batch size", boundaries=[1, 2, 4, 8, 16, 32, 64])

    # -- the batched core ---------------------------------------------------------------------
    async def generate(self, item: tuple[torch.Tensor, str, Sampling]) -> Generated:
        return await self.batcher.submit(item)

    async def _generate_batch(self, items: list[tuple[torch.Tensor, str, Sampling]]) -> list[Generated]:
        """One batch of requests, generated together per sampling setting (the default one for
        most), off the event loop so that the next requests are read meanwhile."""
        groups: dict[Sampling, list[int]] = defaultdict(list)
        for i, (_, _, sampling) in enumerate(items):
            groups[sampling].append(i)
        results: list[Generated | None] = [None] * len(items)
        for sampling, members in groups.items():
            generated = await asyncio.to_thread(self.model.generate, [items[i][0] for i in members],
                                                [items[i][1] for i in members], sampling)
            for i, one in zip(members, generated):
                results[i] = one
        return results

    # -- request handling -----------------------------------------------------------------------
    def _check(self, request: Request) -> None:
        if self.api_key is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                raise RequestError(401, "missing or wrong bearer token", "authentication_error")
        length = request.headers.get("content-length")
        if length is not None and int(length) > self.args.max_body_bytes:
            raise RequestError(413, f"request body of {length} bytes exceeds {self.args.max_body_bytes}")

    async def _bounded(self, request: Request) -> Request:
        """The request with its body read up to max_body_bytes: a chunked body carries no
        Content-Length to check up front, so the limit is applied while reading."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.args.max_body_bytes:
                raise RequestError(413, f"request body exceeds {self.args.max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        return Request(request.scope, replay)

    def _pixels(self, data: bytes, name: str) -> torch.Tensor:
        if len(data) > self.args.max_body_bytes:
            raise RequestError(413, f"{name}: {len(data)} bytes exceeds {self.args.max_body_bytes}")
        try:
            return self.model.pixels(data, name, self.args.max_pixels)
        except RadlabError as err:  # ImageError: what is wrong with the image
            raise RequestError(422, str(err)) from None

    async def _run(self, route: str, handler) -> JSONResponse | StreamingResponse | dict:
        start = time.perf_counter()
        try:
            response = await handler()
            status = "200"
        except RequestError as err:
            response, status = _error(err), str(err.status)
        self.requests.inc(tags={"route": route, "status": status})
        self.latency.observe((time.perf_counter() - start) * 1000, tags={"route": route})
        return response

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/openapi.json")
    async def openapi(self, request: Request):
        async def handle():
            self._check(request)
            return api.openapi()
        return await self._run("openapi", handle)

    @api.get("/docs")
    async def docs(self, request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html

        async def handle():
            self._check(request)
            return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
                                       title=api.title)
        return await self._run("docs", handle)

    @api.get("/v1/models")
    async def models(self, request: Request):
        async def handle():
            self._check(request)
            return {"object": "list", "data": [{"id": self.args.model_name, "object": "model",
                                                 "owned_by": "radlab", "version": self.version}]}
        return await self._run("models", handle)

    @api.post("/v1/reports")
    async def reports(self, request: Request):
        async def handle():
            self._check(request)
            bounded = await self._bounded(request)
            kind = request.headers.get("content-type", "")
            if kind.startswith("multipart/form-data"):
                form = await bounded.form()
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise RequestError(400, "multipart field 'image' (a file) is missing")
                data, name, indication = await upload.read(), upload.filename or "image", form.get("indication") or ""
            else:
                try:
                    body = json.loads(await bounded.body())
                    encoded, indication = body["image_base64"], body.get("indication") or ""
                    data = base64.b64decode(encoded, validate=True)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise RequestError(400, "body is not valid JSON (or send multipart/form-data)") from None
                except (KeyError, TypeError):
                    raise RequestError(400, "JSON body needs the field image_base64") from None
                except (binascii.Error, ValueError):
                    raise RequestError(400, "image_base64 is not valid base64") from None
                name = "image_base64"
            if not isinstance(indication, str):
                raise RequestError(400, "indication must be text")
            pixels = await asyncio.to_thread(self._pixels, data, name)  # decoding beside the batch, off the event loop
            human = findings_prompt(indication.replace("\n", " "))
            started = time.perf_counter()
            findings = (await self.generate((pixels, human, Sampling(self.args.max_new_tokens)))).text
            return {"findings": findings, "model": self.args.model_name, "version": self.version,
                    "timings_ms": {"generate": round((time.perf_counter() - started) * 1000, 1)}}
        return await self._run("reports", handle)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        async def handle():
            self._check(request)
            bounded = await self._bounded(request)
            try:
                body = json.loads(await bounded.body())
                messages = body["messages"]
                user = [m for m in messages if m.get("role") == "user"][-1]
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError(400, "body is not valid JSON") from None
            except (KeyError, IndexError, TypeError, AttributeError):
                raise RequestError(400, "messages must hold at least one user message") from None
            if body.get("model") not in (None, self.args.model_name):
                raise RequestError(404, f"model {body.get('model')!r} is not served here; try {self.args.model_name!r}",
                                   "model_not_found")
            text, images = self._parse_content(user.get("content"))
            if len(images) != 1:
                raise RequestError(400, f"the user message needs exactly one image_url, got {len(images)}")
            sampling = self._sampling(body)
            pixels = await asyncio.to_thread(self._pixels, images[0], "image_url")
            human = f"<image>\n{text}" if text else findings_prompt("")
            completion_id = f"chatcmpl-{uuid.uuid4().hex[:16]}"
            if body.get("stream"):
                usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
                return StreamingResponse(self._stream(completion_id, pixels, human, sampling, bool(usage)),
                                         media_type="text/event-stream")
            generated = await self.generate((pixels, human, sampling))
            return {"id": completion_id, "object": "chat.completion", "created": int(time.time()),
                    "model": self.args.model_name,
                    "choices": [{"index": 0, "finish_reason": generated.finish_reason,
                                 "message": {"role": "assistant", "content": generated.text}}],
                    "usage": self._usage(human, generated)}
        return await self._run("chat", handle)

    def _sampling(self, body: dict) -> Sampling:
        """The request's decoding settings, each checked against what this server allows."""
        limit = self.args.max_new_tokens
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = limit if max_tokens is None else max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= limit:
            raise RequestError(400, f"max_tokens must be a whole number from 1 to {limit} (this server's "
                                    f"max_new_tokens), got {max_tokens!r}")
        numbers = {}
        for name, default, low, high in (("temperature", 0.0, 0.0, 2.0), ("top_p", 1.0, 0.0, 1.0)):
            value = body.get(name)
            value = default if value is None else value
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise RequestError(400, f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
            numbers[name] = float(value)
        if numbers["top_p"] == 0:
            raise RequestError(400, "top_p must be above 0")
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(400, "stop must be a non-empty string or a list of at most 4 of them")
        if body.get("n", 1) not in (None, 1):
            raise RequestError(400, f"n must be 1: this server returns one choice per request, got {body['n']!r}")
        return Sampling(max_tokens, numbers["temperature"], numbers["top_p"], tuple(stop))

    def _usage(self, human: str, generated: Generated) -> dict:
        """Token counts as the model saw them: the prompt with its image tokens, and the tokens
        generated (the end-of-sequence token included)."""
        prompt = self.model.prompt_tokens(human)
        return {"prompt_tokens": prompt, "completion_tokens": generated.tokens,
                "total_tokens": prompt + generated.tokens}

    @staticmethod
    def _parse_content(content) -> tuple[str, list[bytes]]:
        if isinstance(content, str):
            return content, []
        if not isinstance(content, list):
            raise RequestError(400, "message content must be text or a list of parts")
        texts, images = [], []
        for i, part in enumerate(content):
            where = f"messages[user].content[{i}]"
            if not isinstance(part, dict):
                raise RequestError(400, f"{where} must be an object with a type")
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise RequestError(400, f"{where}.text must be text")
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else None
                if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
                    raise RequestError(400, f"{where}.image_url must be {{\"url\": \"data:image/png;base64,...\"}}")
                try:
                    images.append(base64.b64decode(url.split(";base64,", 1)[1], validate=True))
                except (binascii.Error, ValueError):
                    raise RequestError(400, "image_url holds invalid base64") from None
        return " ".join(texts).strip(), images

    def _stream(self, completion_id: str, pixels: torch.Tensor, human: str, sampling: Sampling,
                include_usage: bool):
        """Server-sent chunks of one request's findings as the tokens are generated (ServedModel.stream;
        batching is for unstreamed requests). Starlette iterates this generator in its thread pool."""
        def chunk(delta: dict, finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": completion_id, "object": "chat.completion.chunk",
                                          "created": int(time.time()), "model": self.args.model_name,
                                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

        yield chunk({"role": "assistant", "content": ""})
        try:
            for piece in self.model.stream(pixels, human, sampling, f"radlab-stream-{completion_id}"):
                if isinstance(piece, str):
                    yield chunk({"content": piece})
                else:
                    generated = piece
        except StreamFailed as err:  # the stream ends with the error instead of hanging
            yield "data: " + json.dumps({"error": {"message": f"generation failed: {err}",
                                                   "type": "server_error"}}) + "\n\n"
        else:
            yield chunk({}, generated.finish_reason)
            if include_usage:
                yield "data: " + json.dumps({"id": completion_id, "object": "chat.completion.chunk",
                                              "created": int(time.time()), "model": self.args.model_name,
                                              "choices": [], "usage": self._usage(human, generated)}) + "\n\n"
        yield "data: [DONE]\n\n"


def build_app(args: dict) -> serve.Application:
    """Serve's application builder (it takes the args alone): `import_path:
    radlab.serve.app:build_app` with `args:`; a Serve config's `deployments:` set the replica's
    resources."""
    return report_app(args)


def report_app(args: dict, ray_actor_options: dict | None = None) -> serve.Application:
    """The application for `args`, its replica with `ray_actor_options` (resources) where given."""
    parsed = ServeArgs.model_validate(args)
    options = {"ray_actor_options": ray_actor_options} if ray_actor_options else {}
    return ReportServer.options(max_ongoing_requests=max(32, parsed.max_batch_size * 2), **options).bind(
        parsed.model_dump())
