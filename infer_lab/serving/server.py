"""A streaming HTTP server over the engine: OpenAI's completions API on starlette + uvicorn.

    POST /v1/completions   {"prompt", "max_tokens", "temperature", "top_p", "stop", "stream"}
    POST /v1/chat/completions  the same with "messages" (rendered by the chat template)
                           "response_format": {"type": "json_schema", "json_schema":
                           {"schema": ...}} constrains either to JSON of that schema
    GET  /health           200 while the engine loop is alive
    GET  /metrics          Prometheus text: queue, running, KV blocks, TTFT/TPOT, tokens/s

With ``"stream": true`` the answer is server-sent events (SSE, the WHATWG
``text/event-stream`` format OpenAI uses): one ``data: {json}\\n\\n`` per token, then
``data: [DONE]``. Concatenating the chunks' text gives the non-streamed text.

Threads: ``Engine.step()`` is synchronous, so one *engine thread*
(:mod:`infer_lab.serving.engine_loop`) owns the engine. The asyncio side never touches
the engine: it sends submit/abort commands through a thread-safe queue and gets each
token back on its own per-request ``asyncio.Queue`` (``loop.call_soon_threadsafe``);
text is decoded incrementally, holding back a tail that may still become a stop string.

Load shedding: at most ``max_num_seqs + max_queue`` requests are in flight; one more
gets 429 at once instead of waiting unboundedly (queueing delay grows without limit
once arrivals outpace service, Little's law L = lambda W). A client that disconnects
has its request aborted, which frees its KV blocks before the next step.

Past that, optional per-key rate limits (429 with ``Retry-After``) and graceful
degradation (``max_tokens`` capped once the queue is long, said in a ``degraded`` field
and an ``X-Degraded`` header): :mod:`infer_lab.serving.admission`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..streaming import TextStream
from .admission import Admission, Admitted, Limiter, add_cli_args, from_cli_args
from .admission import error_response as _error
from .engine_loop import EngineLoop, ServerMetrics
from .interface import ServingEngine
from .schema import BadRequest, ParsedRequest, decode_body, parse_chat_request, parse_request
from .server_thread import ServerThread

if TYPE_CHECKING:
    from ..app.degrade import DegradePolicy

__all__ = ["BadRequest", "ServerThread", "TextStream", "build_app", "decode_body", "main",
           "parse_request"]


async def _unless_disconnected(request: Request, work) -> bool:
    """Run ``work``; cancel it (False) if the client disconnects first."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    for t in (task, watch):
        t.cancel()
    if task.done() and not task.cancelled():
        task.result()  # re-raise an engine error
        return True
    return False


class RequestFailed(RuntimeError):
    """The engine aborted this request for a fault while serving it."""


class CompletionsApp:
    """The routes over one engine thread: admission, then streaming or one answer.

    Every handler runs on the event loop thread; the engine runs on its own
    (:class:`~infer_lab.serving.engine_loop.EngineLoop`) and is reached by command only.
    """

    def __init__(self, engine: ServingEngine, tokenizer: Any, max_queue: int,
                 limiter: Limiter | None = None, degrade: DegradePolicy | None = None):
        self.tokenizer = tokenizer
        self.metrics = ServerMetrics()
        self.loop_thread = EngineLoop(engine, self.metrics)
        self.max_running = engine.load().max_running
        self.capacity = self.max_running + max_queue
        self.in_flight = 0  # touched only on the event loop thread
        self.admission = Admission(self.metrics.registry, limiter, degrade)
        self.vocab_size = engine.model.config.vocab_size
        self._schemas = None  # response_format's constraints, compiled on first use

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, parse_request)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, parse_chat_request)

    async def _serve(self, request: Request, parse) -> Response:
        try:
            req = parse(decode_body(await request.body()), self.tokenizer)
        except BadRequest as e:
            self.metrics.bad_requests.inc()
            return _error(400, str(e))
        refused = self._refusal()
        if refused is not None:
            return refused
        # Admitted beyond what the engine runs at once = waiting; counted on this thread
        # (the engine's own counts belong to the engine thread).
        admitted = self.admission.admit(req, request.headers.get("authorization"),
                                        max(0, self.in_flight - self.max_running))
        if isinstance(admitted, Response):
            return admitted
        req = admitted.req
        try:  # compiling a schema takes a while the first time: off the event loop
            cursor = None if req.schema is None else await asyncio.to_thread(
                self._cursor, req.schema, req.max_tokens)
        except ValueError as e:  # not a schema we support, or no answer fits max_tokens
            self.metrics.bad_requests.inc()
            self.admission.refund(admitted)
            return _error(400, f"response_format: {e}")
        tokens: asyncio.Queue = asyncio.Queue()
        aloop = asyncio.get_running_loop()
        eos = None if req.ignore_eos else self.tokenizer.eos_id
        self.in_flight += 1
        try:
            seq = await asyncio.wrap_future(self.loop_thread.submit(
                req.ids, req.max_tokens, req.sampling, eos,
                lambda ev: aloop.call_soon_threadsafe(tokens.put_nowait, ev), cursor))
        except ValueError as e:  # longer than the context or the whole KV pool
            self.in_flight -= 1
            self.metrics.bad_requests.inc()
            self.admission.refund(admitted)  # it never ran
            return _error(400, str(e))
        events = self._events(req, seq.seq_id, eos, tokens)
        chunk = _chunker(req.model, req.chat)
        if req.stream:
            return StreamingResponse(_sse(events, chunk, admitted.body()),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", **admitted.headers()})
        return await self._answer(request, admitted, events, chunk, seq)

    def _cursor(self, schema: dict[str, Any], max_tokens: int):
        """Constrained output (:mod:`infer_lab.app.constrained`) for one request."""
        if self._schemas is None:
            from ..app.constrained import SchemaCache

            self._schemas = SchemaCache(self.tokenizer, self.vocab_size)
        return self._schemas.cursor(schema, max_tokens)

    def _refusal(self) -> Response | None:
        """503 when the engine has stopped, 429 when the server is full, else None."""
        if not self.loop_thread.alive:
            return _error(503, f"engine stopped: {self.loop_thread.error!r}", "server_error")
        if self.in_flight >= self.capacity:
            self.metrics.rejected.inc()
            return _error(429, f"server busy: {self.in_flight} requests in flight "
                               f"(limit {self.capacity}); retry later", "rate_limit_error")
        return None

    async def _events(self, req: ParsedRequest, seq_id: int, eos: int | None,
                      tokens: asyncio.Queue) -> AsyncIterator[tuple[str, str | None]]:
        """(text delta, finish_reason or None) per token; aborts the request if abandoned."""
        text, done = TextStream(self.tokenizer, req.stop), False
        try:
            while not done:
                ev = await tokens.get()
                if ev[0] == "error":  # the engine already freed its blocks
                    done = True
                    raise RequestFailed(ev[1])
                _, tok, done, reason = ev
                if tok == eos:  # EOS ends the text; it is not part of it
                    yield text.flush(), "stop"
                    return
                delta, hit = text.push(tok, last=done)
                if hit:
                    done = True
                    self.loop_thread.abort(seq_id)  # stop string: free the blocks now
                reason = "stop" if hit or reason == "eos" else reason
                yield delta, reason if done else None
        finally:
            self.in_flight -= 1
            if not done:  # client gone (or cancelled): stop computing for it
                self.loop_thread.abort(seq_id)

    async def _answer(self, request: Request, admitted: Admitted, events, chunk, seq
                      ) -> Response:
        """The whole completion as one JSON body (``"stream": false``). ``usage`` says how
        many prompt tokens the prefix cache served (``prompt_tokens_details.cached_tokens``,
        as OpenAI's API does), read off the finished sequence: nothing changes it now."""
        req = admitted.req
        parts: list[tuple[str, str | None]] = []

        async def collect() -> None:
            async for item in events:
                parts.append(item)

        try:
            if not await _unless_disconnected(request, collect()):
                return Response(status_code=499)  # nobody is listening; it was aborted
        except RequestFailed as e:
            return _error(500, f"the request failed while being served: {e}", "server_error")
        n = len(parts)
        body = chunk("".join(t for t, _ in parts), parts[-1][1], final=True)
        cached = min(seq.num_cached_tokens, len(req.ids))
        body["usage"] = {"prompt_tokens": len(req.ids), "completion_tokens": n,
                         "total_tokens": len(req.ids) + n,
                         "prompt_tokens_details": {"cached_tokens": cached}}
        body.update(admitted.body())
        return JSONResponse(body, headers=admitted.headers())

    async def health(self, request: Request) -> Response:
        lt = self.loop_thread
        ok = lt.alive
        why = None if ok else repr(lt.error) if lt.error else "not running"
        return JSONResponse({"status": "ok" if ok else "engine stopped", "error": why,
                             "request_errors": lt.num_request_errors},
                            status_code=200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")


def _chunker(model: str, chat: bool = False):
    """OpenAI's answer objects, one per streamed delta (or the whole, ``final``):
    ``text_completion``, or for chat ``chat.completion.chunk`` deltas and a
    ``chat.completion`` with the assistant's message."""
    rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}", int(time.time())

    def chunk(text: str, reason: str | None, final: bool = False) -> dict:
        if not chat:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            kind = "text_completion"
        elif final:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": reason}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": reason}
            kind = "chat.completion.chunk"
        return {"id": rid, "object": kind, "created": created, "model": model,
                "choices": [choice]}
    return chunk


async def _sse(events, chunk, first: dict | None = None) -> AsyncIterator[str]:
    """Server-sent events: a ``data:`` line per delta (the first with ``first``'s fields
    added), an error event if serving failed."""
    extra = first or {}
    try:
        async for delta, reason in events:
            yield f"data: {json.dumps({**chunk(delta, reason), **extra})}\n\n"
            extra = {}
    except RequestFailed as e:  # headers are sent: the error is an event
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"


def build_app(engine: ServingEngine, tokenizer: Any, max_queue: int = 64,
              limiter: Limiter | None = None, degrade: DegradePolicy | None = None
              ) -> Starlette:
    """The ASGI app. ``engine``: Engine, StaticBatcher or DynamicBatcher (not shared);
    ``limiter``: per-key rate limits; ``degrade``: cap max_tokens while the queue is long."""
    routes = CompletionsApp(engine, tokenizer, max_queue, limiter, degrade)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        routes.loop_thread.start()
        yield
        routes.loop_thread.stop()

    app = Starlette(routes=[Route("/v1/completions", routes.completions, methods=["POST"]),
                            Route("/v1/chat/completions", routes.chat_completions,
                                  methods=["POST"]),
                            Route("/health", routes.health),
                            Route("/metrics", routes.prometheus)], lifespan=lifespan)
    app.state.engine_loop, app.state.metrics = routes.loop_thread, routes.metrics
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    import infer_lab

    from .engine import Engine, EngineConfig

    p = argparse.ArgumentParser(prog="python -m infer_lab.serving.server",
                                description="OpenAI-compatible completions server")
    p.add_argument("--model", default="code-m")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num-blocks", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=64)
    add_cli_args(p)
    args = p.parse_args(argv)
    try:
        limiter, degrade = from_cli_args(args)
    except ValueError as e:  # say which flag is wrong, without a traceback
        p.error(str(e))
    model, tok = infer_lab.load(args.model)
    engine = Engine(model, EngineConfig(num_blocks=args.num_blocks,
                                        max_num_seqs=args.max_num_seqs,
                                        keep_step_records=False))  # a server runs forever
    uvicorn.run(build_app(engine, tok, args.max_queue, limiter, degrade), host="127.0.0.1",
                port=args.port)


if __name__ == "__main__":  # pragma: no cover
    main()
