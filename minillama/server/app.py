"""The HTTP side: OpenAI's endpoints on Starlette, talking to the Scheduler through per-request asyncio queues.

    POST /v1/chat/completions   chat (the model's chat template), streaming (SSE) or not
    POST /v1/completions        plain text completion of a prompt (string or token ids)
    GET  /v1/models             the one model this server holds
    GET  /health                {"status": "ok", ...batch and block counts}; never needs the API key

A streaming response starts only once the request has been prefilled, so a prompt the engine refuses is still a
plain 4xx. A client that disconnects (mid-stream, or while it waits for a non-streaming answer) cancels its job.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .protocol import GenerationRequest, RequestError, parse_request
from .scheduler import Job, Scheduler

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "interrupted": "stop"}
_DISCONNECT_POLL_S = 0.25      # how often a request waiting for its answer checks whether its client is still there


def create_app(engine, *, model_name: str, max_batch: int = 8, max_queue: int = 64,
               api_key: str | None = None) -> Starlette:
    """The ASGI app. Its scheduler thread starts with the app (lifespan) and stops with it."""
    scheduler = Scheduler(engine, max_batch=max_batch, max_queue=max_queue)
    created = int(time.time())

    def error_response(error: RequestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    def authorized(request: Request) -> bool:
        if api_key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **scheduler.counts()})

    async def models(request: Request) -> Response:
        if not authorized(request):
            return error_response(_unauthorized())
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": created, "owned_by": "minillama",
             "meta": {"context_length": engine.context_length, "vocab_size": engine.config.vocab_size}}]})

    async def completions(request: Request, kind: str) -> Response:
        if not authorized(request):
            return error_response(_unauthorized())
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as error:
            return error_response(RequestError(f"the request body is not valid JSON: {error}"))
        try:
            parsed = parse_request(body, engine, kind, max_n=max_batch)
            job = scheduler.submit(parsed)
        except RequestError as error:
            return error_response(error)
        try:
            first = await _next_event(job, request)
        except (_ClientGone, asyncio.CancelledError):
            scheduler.cancel(job)
            raise
        if first[0] == "error":
            return error_response(first[1])
        reply = _Reply(parsed, model_name)
        if parsed.stream:
            return StreamingResponse(_sse(job, reply, scheduler), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                event = await _next_event(job, request)
                if event[0] == "done":
                    return JSONResponse(reply.full(event[1]))
                if event[0] == "error":
                    return error_response(event[1])
        except (_ClientGone, asyncio.CancelledError):
            scheduler.cancel(job)
            raise

    async def chat_route(request: Request) -> Response:
        return await _answer_or_gone(completions(request, "chat"))

    async def completion_route(request: Request) -> Response:
        return await _answer_or_gone(completions(request, "completion"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat_route, methods=["POST"]),
        Route("/v1/completions", completion_route, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.scheduler = scheduler
    return app


def _unauthorized() -> RequestError:
    return RequestError("missing or wrong API key: send the header 'Authorization: Bearer <key>' with the key the "
                        "server was started with (--api-key)", status=401, code="invalid_api_key")


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _answer_or_gone(answer) -> Response:
    try:
        return await answer
    except _ClientGone:
        return Response(status_code=499)      # nobody reads it; the job is already cancelled


async def _next_event(job: Job, request: Request) -> tuple:
    """The job's next event, checking meanwhile (at least every _DISCONNECT_POLL_S) that the client is still there."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), _DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise _ClientGone from None


async def _sse(job: Job, reply: "_Reply", scheduler: Scheduler) -> AsyncIterator[str]:
    """Server-sent events until the job is done; cancelled by Starlette when the client disconnects."""
    try:
        for chunk in reply.opening():
            yield _data(chunk)
        while True:
            event = await job.events.get()
            if event[0] == "text":
                for chunk in reply.pieces(event[1]):
                    yield _data(chunk)
            elif event[0] == "done":
                for chunk in reply.closing(event[1]):
                    yield _data(chunk)
                break
            elif event[0] == "error":
                yield _data(event[1].body())
                break
        yield "data: [DONE]\n\n"
    finally:
        if not job.ended:
            scheduler.cancel(job)


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Reply:
    """OpenAI's response objects for one request: chat.completion(.chunk) or text_completion."""

    def __init__(self, request: GenerationRequest, model: str):
        self.request, self.model = request, model
        self.chat = request.kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, choices: list[dict], streaming: bool) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if streaming else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": "minillama", "choices": choices}

    def _choice(self, index: int, text: str | None, finish: str | None, *, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

    def opening(self) -> list[dict[str, Any]]:
        """Chat streams announce the assistant role first, as OpenAI's do."""
        if not self.chat:
            return []
        return [self._envelope([self._choice(i, "", None, role=True)], True) for i in range(self.request.n)]

    def pieces(self, pieces: list[str]) -> list[dict[str, Any]]:
        return [self._envelope([self._choice(i, piece, None)], True) for i, piece in enumerate(pieces) if piece]

    def closing(self, completion) -> list[dict[str, Any]]:
        chunks = [self._envelope([self._choice(c.index, None, FINISH_REASONS[c.finish_reason])], True)
                  for c in completion.choices]
        if self.request.include_usage:
            usage = self._envelope([], True)
            usage["usage"] = self._usage(completion)
            chunks.append(usage)
        return chunks

    def full(self, completion) -> dict[str, Any]:
        choices = []
        for c in completion.choices:
            finish = FINISH_REASONS[c.finish_reason]
            if self.chat:
                choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text},
                                "logprobs": None, "finish_reason": finish})
            else:
                choices.append({"index": c.index, "text": c.text, "logprobs": None, "finish_reason": finish})
        out = self._envelope(choices, False)
        out["usage"] = self._usage(completion)
        out["timings"] = _timings(completion.stats)
        return out

    def _usage(self, completion) -> dict[str, int]:
        prompt = len(self.request.prompt_ids)
        generated = sum(len(c.tokens) for c in completion.choices)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def _timings(stats) -> dict[str, float]:
    """llama-server's `timings` object (decode time is wall time in the shared batch)."""
    return {"prompt_n": stats.prompt_tokens, "prompt_ms": stats.prefill_s * 1e3,
            "prompt_per_second": stats.prefill_tps, "predicted_n": stats.new_tokens,
            "predicted_ms": stats.decode_s * 1e3, "predicted_per_second": stats.decode_tps}
