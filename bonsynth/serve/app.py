"""`create_app`: the OpenAI-compatible ASGI app (FastAPI) in front of `BestOfNService`.

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`, `GET /metrics`.
Each completion request samples `best_of` candidates, scores them with the RM(s) and answers with the best
`n` as `choices`, highest reward first, plus a `bonsynth` object with their rewards.

Streaming (`"stream": true`) cannot start before the best candidate is known, so the chosen answer is sent
in SSE chunks after selection: streaming clients work, but the first token comes when the whole answer is
ready. (Plain Starlette streaming rather than sse_starlette: that one cuts open streams on SIGTERM, which
would break the drain.)

With `$BONSYNTH_SERVE_API_KEY` (`ServeConfig.api_key_env`) set when the app is built, every request needs
`Authorization: Bearer <key>`; the key is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from bonsynth.serve.config import ServeConfig
from bonsynth.serve.errors import ApiError
from bonsynth.serve.metrics import ServeMetrics
from bonsynth.serve.schemas import parse_json, parse_request
from bonsynth.serve.service import BestOfNService, Outcome

log = logging.getLogger("bonsynth.serve")

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
_PIECES = re.compile(r"\S+\s*|\s+")


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def load_engines(config: ServeConfig) -> tuple[Any, Any]:
    """The policy backend and the RM ensemble, loaded as `bonsynth generate` loads them."""
    from bonsynth.generate.pipeline import backend_for, check_model_sources
    from bonsynth.rm.ensemble import RewardEnsemble

    gcfg = config.generate_config()
    check_model_sources(gcfg)  # a missing model: one line, before anything loads
    scorer = RewardEnsemble.load(gcfg.rewards, gcfg.reward_weights, **gcfg.reward_load_kwargs())
    try:
        backend = backend_for(gcfg)
    except BaseException:
        scorer.close()
        raise
    return backend, scorer


class _BearerAuth:
    """ASGI middleware: with a key set, a request without `Authorization: Bearer <key>` gets a 401."""

    def __init__(self, app: Any, key: str | None, on_reject: Callable[[str], None]) -> None:
        self.app = app
        self._key = key.encode() if key else None
        self._on_reject = on_reject

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._key is None:
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key):
            await self.app(scope, receive, send)
            return
        self._on_reject(scope.get("path", ""))
        err = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                       type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error_response(err)(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or a 413 as soon as it is known to exceed `limit` bytes (never buffered past it)."""
    too_large = ApiError(413, f"the request body is larger than this server's limit of {limit} bytes",
                         type="invalid_request_error", code="body_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ServeConfig, *, backend: Any = None, scorer: Any = None,
               metrics: ServeMetrics | None = None) -> FastAPI:
    """The ASGI app. Without `backend`/`scorer` it loads them from `config` (and frees them on shutdown);
    given ones stay the caller's. Mounted in another app, call `await app.state.service.aclose()` on shutdown
    (a mounted app's own lifespan does not run)."""
    if (backend is None) != (scorer is None):
        raise TypeError("pass both backend and scorer, or neither")
    owns = backend is None
    if owns:
        backend, scorer = load_engines(config)
    metrics = metrics or ServeMetrics()
    service = BestOfNService(config, backend, scorer, metrics, owns_engines=owns)
    api_key = os.environ.get(config.api_key_env) or None

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.aclose()  # after uvicorn has drained the requests in flight

    app = FastAPI(title="bonsynth serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.metrics = metrics
    app.state.config = config

    def finished(endpoint: str, status: int, start: float, kind: str | None = None) -> None:
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        if status >= 400:
            metrics.errors.labels(endpoint, str(status), kind or "error").inc()

    def rejected(path: str) -> None:
        metrics.requests.labels(path, "401").inc()
        metrics.errors.labels(path, "401", "authentication_error").inc()

    app.add_middleware(_BearerAuth, key=api_key, on_reject=rejected)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(exc.status_code, str(exc.detail), type=kind, code=str(exc.status_code)))

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error",
                                       code="internal_error"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "shutting_down" if service.closed else "ok", "pending": service.pending}

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": config.served_name, "object": "model", "created": 0,
                                            "owned_by": "bonsynth"}]}

    async def complete(request: Request, endpoint: str) -> Response:
        start = time.perf_counter()
        kind = "chat" if endpoint == CHAT else "completions"
        try:
            req = parse_request(kind, parse_json(await read_body(request, config.max_body_bytes)))
            if req.model is not None and req.model != config.served_name:
                raise ApiError(404, f"field 'model': the model {req.model!r} is not served here; this server "
                               f"serves {config.served_name!r} (see /v1/models)", type="not_found_error",
                               code="model_not_found", param="model")
            job = service.job_for(req.prompt(), n=req.n, best_of=req.best_of, temperature=req.temperature,
                                  top_p=req.top_p, max_tokens=req.new_tokens(), stop=req.stops(), seed=req.seed)
            with service.admitted():
                outcome = await service.run(job)
        except ApiError as e:
            finished(endpoint, e.status, start, e.type)
            if e.status >= 500:
                log.warning("%s: %d %s", endpoint, e.status, e.message)
            return error_response(e)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        extra = bonsynth_object(outcome, req.return_candidates)
        if not req.stream:
            finished(endpoint, 200, start)
            return JSONResponse(full_response(kind, rid, config.served_name, outcome, extra))
        return StreamingResponse(stream(kind, rid, config.served_name, outcome, extra,
                                        lambda: finished(endpoint, 200, start)),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post(CHAT)
    async def chat_completions(request: Request) -> Response:
        return await complete(request, CHAT)

    @app.post(COMPLETIONS)
    async def completions(request: Request) -> Response:
        return await complete(request, COMPLETIONS)

    return app


# ---------------------------------------------------------------------- response bodies


def usage(outcome: Outcome) -> dict[str, int]:
    """Tokens spent: the prompt once, and every candidate generated (best_of of them), as OpenAI counts."""
    completion = sum(int(c["num_tokens"]) for c in outcome.row["candidates"])
    return {"prompt_tokens": int(outcome.result.prompt_tokens), "completion_tokens": completion,
            "total_tokens": int(outcome.result.prompt_tokens) + completion}


def bonsynth_object(outcome: Outcome, with_candidates: bool) -> dict[str, Any]:
    chosen = outcome.chosen()
    extra: dict[str, Any] = {
        "best_of": len(outcome.row["candidates"]),
        "rewards": [c["reward"] for c in chosen],
        "reward_models": [c["rewards"] for c in chosen],
        "candidate_index": [c["index"] for c in chosen],
        "timing": {"generate_s": round(outcome.generate_s, 6), "score_s": round(outcome.score_s, 6),
                   "total_s": round(outcome.total_s, 6), "generate_batch_requests": outcome.generate_batch,
                   "rm_batch_candidates": outcome.rm_batch},
    }
    pruning = any("pruned_at" in c for c in outcome.row["candidates"])
    if pruning:  # speculative rejection: how many candidates stopped early (their tokens count in usage)
        extra["pruned"] = sum(c["pruned_at"] is not None for c in outcome.row["candidates"])
    if with_candidates:
        keys = ("index", "text", "reward", "rewards", "finish_reason", "num_tokens") + (("pruned_at",) if pruning else ())
        extra["candidates"] = [{k: c[k] for k in keys} for c in outcome.row["candidates"]]
    return extra


def full_response(kind: str, rid: str, model: str, outcome: Outcome, extra: dict) -> dict[str, Any]:
    choices = []
    for i, c in enumerate(outcome.chosen()):
        if kind == "chat":
            choices.append({"index": i, "message": {"role": "assistant", "content": c["text"]},
                            "finish_reason": c["finish_reason"], "logprobs": None})
        else:
            choices.append({"index": i, "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None})
    return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices, "usage": usage(outcome),
            "bonsynth": extra}


async def stream(kind: str, rid: str, model: str, outcome: Outcome, extra: dict,
                 on_done: Callable[[], None]) -> AsyncIterator[bytes]:
    """The chosen answers as OpenAI stream chunks (word pieces), then usage + `bonsynth`, then [DONE]."""
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(choices: list[dict], **more: Any) -> bytes:
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, **more}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    def piece(i: int, text: str | None, finish: str | None, first: bool = False) -> dict:
        if kind == "chat":
            delta: dict[str, str] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}

    try:
        for i, c in enumerate(outcome.chosen()):
            if kind == "chat":
                yield chunk([piece(i, "", None, first=True)])
            for part in _PIECES.findall(c["text"]):
                yield chunk([piece(i, part, None)])
            yield chunk([piece(i, None, c["finish_reason"])])
        yield chunk([], usage=usage(outcome), bonsynth=extra)
        yield b"data: [DONE]\n\n"
    finally:
        on_done()
