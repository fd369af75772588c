"""The OpenAI-compatible HTTP server (FastAPI): routes, server-sent events, disconnects, errors and metrics.
It translates (``protocol.py``) and forwards to a ``Backend``: one engine in this process (``EngineBackend``),
or engine replicas on Ray Serve (``ray.py``). Decoding, chat formatting and tools are the engine package's."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Protocol

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import DiffuSpecError, EngineClosed, EngineOverloaded
from ..events import StepEvent
from ..params import GenerationParams
from .metrics import CONTENT_TYPE, RequestTracker, ServerMetrics
from .protocol import APIError, Call, Translation, chat_call, completion_call

MAX_REQUEST_BYTES = 8 * 2**20


class Handle(Protocol):
    """A submitted generation: its events (``async for``), and withdrawing it."""

    def __aiter__(self) -> AsyncIterator[StepEvent]: ...

    def cancel(self) -> None: ...


class Backend(Protocol):
    """What the server needs of whatever decodes: the tokenizer and sizes, and a way to submit."""

    tokenizer: Any
    context_window: int
    vocab_size: int

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> Handle:
        """Queue a generation; raises ``EngineOverloaded`` at once when no more can be queued."""

    async def close(self, grace_seconds: float) -> None: ...


class EngineBackend:
    """One engine in this process; its scheduler is the queue."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.context_window, self.vocab_size = engine.context_window, engine.vocab_size

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> Handle:
        return self.engine.submit(prompt_ids, params=params, loop=asyncio.get_running_loop())

    async def close(self, grace_seconds: float) -> None:
        await asyncio.to_thread(self.engine.scheduler.close, grace_seconds)


class _Disconnectable(StreamingResponse):
    """A stream that stops as soon as the client leaves, also while it waits for the first event (Starlette,
    under ASGI 2.4, notices only when a send fails)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with anyio.create_task_group() as group:
            async def run(job: Callable[[], Awaitable[None]]) -> None:
                try:
                    await job()
                except OSError:  # the client left mid-send
                    pass
                group.cancel_scope.cancel()

            group.start_soon(run, partial(self.stream_response, send))
            await run(partial(self.listen_for_disconnect, receive))
        await self.body_iterator.aclose()  # its cleanup (withdrawing the request) runs now, not at collection


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def create_app(backend: Backend, model_name: str, *, max_request_bytes: int = MAX_REQUEST_BYTES,
               shutdown_grace: float = 5.0) -> FastAPI:
    """The app serving ``backend`` as ``model_name``. On shutdown, requests still running get
    ``shutdown_grace`` seconds to finish."""
    metrics = ServerMetrics(model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await backend.close(shutdown_grace)

    app = FastAPI(title="diffuspec", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics, app.state.backend = metrics, backend

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(APIError(error.status_code, message).body(), status_code=error.status_code)

    async def body_of(request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_request_bytes:
            raise APIError(413, f"the request body has {size} bytes, more than the {max_request_bytes} allowed")
        raw = await request.body()
        if len(raw) > max_request_bytes:
            raise APIError(413, f"the request body has {len(raw)} bytes, more than the {max_request_bytes} allowed")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON: {error}") from None

    async def answer(request: Request, call: Call) -> Response:
        try:
            handle = backend.submit(call.prompt_ids, call.params)
        except (EngineOverloaded, EngineClosed) as error:
            raise APIError(503, str(error), code="overloaded", kind="server_error") from None
        except DiffuSpecError as error:
            raise APIError(400, str(error)) from None
        translation, tracker = Translation(call), metrics.track(len(call.prompt_ids))
        if call.stream:
            return _Disconnectable(_stream(handle, translation, tracker), media_type="text/event-stream",
                                   headers={"Cache-Control": "no-cache"})
        collect = asyncio.ensure_future(_collect(handle, translation, tracker))
        watch = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait((collect, watch), return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():  # the client left: withdraw the request now
            collect.cancel()
            await asyncio.gather(collect, return_exceptions=True)
            return Response(status_code=499)
        watch.cancel()
        return JSONResponse(collect.result())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "diffuspec",
                "max_model_len": backend.context_window}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await body_of(request)
        return await answer(request, chat_call(body, model_name, backend.tokenizer, backend.context_window))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await body_of(request)
        call = completion_call(body, model_name, backend.tokenizer, backend.context_window, backend.vocab_size)
        return await answer(request, call)

    return app


def _failure(error: Exception) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, EngineClosed):
        return APIError(503, str(error), code="shutting_down", kind="server_error")
    return APIError(500, f"generation failed: {error}", kind="server_error")


async def _events(handle: Handle, translation: Translation, tracker: RequestTracker) -> AsyncIterator[list[dict]]:
    """Chunks per event; the request is withdrawn however this ends, and its metrics recorded."""
    reason = "abort"
    try:
        yield translation.start()
        async for event in handle:
            if translation.queue_seconds is None:  # known once it has started
                translation.queue_seconds = getattr(handle, "queue_seconds", None)
                translation.replica = getattr(handle, "replica", None)
            tracker.event(event)
            if event.finish_reason is None:
                yield translation.step(event)
            else:
                chunks = translation.finish(event)
                reason = translation.finish_reason()
                yield chunks
    except Exception:
        reason = "error"
        raise
    finally:
        handle.cancel()
        tracker.done(reason, translation.queue_seconds)


async def _collect(handle: Handle, translation: Translation, tracker: RequestTracker) -> dict[str, Any]:
    try:
        async for _ in _events(handle, translation, tracker):
            pass
    except Exception as error:
        raise _failure(error) from error
    return translation.response()


async def _stream(handle: Handle, translation: Translation, tracker: RequestTracker) -> AsyncIterator[str]:
    try:
        async for chunks in _events(handle, translation, tracker):
            for chunk in chunks:
                yield _sse(chunk)
    except Exception as error:  # headers are sent: the error travels as an event
        yield _sse(_failure(error).body())
    yield "data: [DONE]\n\n"
