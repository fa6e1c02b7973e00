"""A streaming HTTP server over the engine: OpenAI's completions API on starlette + uvicorn.

    POST /v1/completions   {"prompt", "max_tokens", "temperature", "top_p", "stop", "stream"}
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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..generate import _partial_stop
from ..sampling import Sampling
from ..tokenizer import StreamDecoder
from ..validate import flag, integer, token_ids
from .engine_loop import EngineLoop, ServerMetrics


class TextStream:
    """Token ids -> text deltas: whole UTF-8 characters, stop strings cut and held back."""

    def __init__(self, tokenizer: Any, stop: list[str]):
        self.dec, self.stop = StreamDecoder(tokenizer), stop
        self.text, self.sent = "", 0

    def push(self, token: int, last: bool) -> tuple[str, bool]:
        """(new text safe to send, stop string reached)."""
        self.text += self.dec.push(token)
        hit = min((self.text.find(s) for s in self.stop if s in self.text), default=-1)
        # A tail that may still grow into a stop string waits, unless nothing follows.
        end = hit if hit >= 0 else len(self.text) - (0 if last else _partial_stop(self.text, self.stop))
        delta, self.sent = self.text[self.sent:end], max(self.sent, end)
        return delta, hit >= 0

    def flush(self) -> str:
        """Text held back for a stop string that never came (the request ended)."""
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta


class BadRequest(ValueError):
    pass


class RequestFailed(RuntimeError):
    """The engine aborted this request for a fault while serving it."""


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


MAX_BODY_BYTES = 1 << 20  # a prompt of a million bytes is far past any context here
MAX_STOP = 16
# The body's fields: OpenAI's completions parameters we honour, plus vLLM's top_k and
# ignore_eos. Anything else is refused by name: a typo ("temprature") or a parameter we
# do not implement ("logprobs") must not be silently ignored.
FIELDS = ("prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
          "stream", "ignore_eos", "n", "model", "user")


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a valid JSON number (JSON has no NaN or Infinity)")


def decode_body(raw: bytes) -> Any:
    """Bytes -> JSON value; BadRequest for anything that is not strict JSON."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"body of {len(raw)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        if isinstance(e, BadRequest):
            raise
        raise BadRequest(f"malformed JSON: {e}") from None


def _prompt_ids(prompt: Any, tokenizer: Any) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise BadRequest("'prompt' is empty: give at least one character")
        try:
            ids = tokenizer.encode(prompt)
        except Exception as e:  # noqa: BLE001 - e.g. a lone surrogate; the client hears why
            raise BadRequest(f"'prompt' cannot be tokenized: {e}") from None
        if not ids:
            raise BadRequest("'prompt' encodes to no tokens")
        return ids
    if isinstance(prompt, list):  # pre-tokenized, as the OpenAI API allows
        try:
            return token_ids("'prompt'", prompt, tokenizer.vocab_size)
        except ValueError as e:
            raise BadRequest(str(e)) from None
    raise BadRequest("'prompt' must be a non-empty string or a list of token ids "
                     f"(one prompt per request), got {type(prompt).__name__}")


def _stop_strings(stop: Any) -> list[str]:
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("'stop' must be a string or a list of non-empty strings")
    if len(stop) > MAX_STOP:
        raise BadRequest(f"'stop' has {len(stop)} strings; at most {MAX_STOP}")
    return stop


def parse_request(body: Any, tokenizer: Any) -> dict[str, Any]:
    """Validate an OpenAI completions body; raise BadRequest with a message that says why.

    Each parameter goes through the rule the Python API uses (:mod:`infer_lab.validate`,
    :class:`~infer_lab.sampling.Sampling`), so the server refuses exactly what
    ``generate`` refuses.
    """
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unsupported field(s) {', '.join(map(repr, unknown))}; this "
                         f"server takes {', '.join(FIELDS)}")
    ids = _prompt_ids(body.get("prompt"), tokenizer)
    stop = _stop_strings(body.get("stop"))
    try:
        max_tokens = integer("'max_tokens'", body.get("max_tokens", 16), lo=1)
        if integer("'n'", body.get("n", 1)) != 1:
            raise BadRequest("only n = 1 is supported")
        stream, ignore_eos = (flag(f"'{k}'", body.get(k, False))
                              for k in ("stream", "ignore_eos"))
        opt = {k: body[k] for k in ("top_k", "top_p", "seed") if body.get(k) is not None}
        sampling = Sampling(temperature=body.get("temperature", 1.0), **opt)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    model = body.get("model", "infer-lab")
    if not isinstance(model, str):
        raise BadRequest(f"'model' must be a string, got {type(model).__name__}")
    return {"ids": ids, "max_tokens": max_tokens, "stop": stop, "sampling": sampling,
            "stream": stream, "ignore_eos": ignore_eos, "model": model}


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


def build_app(engine: Any, tokenizer: Any, max_queue: int = 64) -> Starlette:
    """The ASGI app. ``engine``: Engine, StaticBatcher or DynamicBatcher (not shared)."""
    metrics = ServerMetrics()
    loop_thread = EngineLoop(engine, metrics)
    capacity = getattr(getattr(engine, "config", None), "max_num_seqs",
                       getattr(engine, "max_batch_size", 1)) + max_queue
    in_flight = [0]  # touched only on the event loop thread

    async def completions(request: Request) -> Response:
        try:
            req = parse_request(decode_body(await request.body()), tokenizer)
        except BadRequest as e:
            metrics.bad_requests.inc()
            return _error(400, str(e))
        if not loop_thread.alive:
            return _error(503, f"engine stopped: {loop_thread.error!r}", "server_error")
        if in_flight[0] >= capacity:
            metrics.rejected.inc()
            return _error(429, f"server busy: {in_flight[0]} requests in flight "
                               f"(limit {capacity}); retry later", "rate_limit_error")
        aloop, tokens = asyncio.get_running_loop(), asyncio.Queue()
        sink = lambda ev: aloop.call_soon_threadsafe(tokens.put_nowait, ev)
        eos = None if req["ignore_eos"] else tokenizer.eos_id
        in_flight[0] += 1
        try:
            seq = await asyncio.wrap_future(loop_thread.submit(
                req["ids"], req["max_tokens"], req["sampling"], eos, sink))
        except ValueError as e:  # longer than the context or the whole KV pool
            in_flight[0] -= 1
            metrics.bad_requests.inc()
            return _error(400, str(e))
        rid, created = f"cmpl-{uuid.uuid4().hex[:16]}", int(time.time())

        async def events() -> AsyncIterator[tuple[str, str | None]]:
            """(text delta, finish_reason or None) per token; aborts if abandoned."""
            text, done = TextStream(tokenizer, req["stop"]), False
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
                        loop_thread.abort(seq.seq_id)  # stop string: free the blocks now
                    reason = "stop" if hit or reason == "eos" else reason
                    yield delta, reason if done else None
            finally:
                in_flight[0] -= 1
                if not done:  # client gone (or cancelled): stop computing for it
                    loop_thread.abort(seq.seq_id)

        def chunk(text: str, reason: str | None) -> dict:
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": req["model"],
                    "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": reason}]}

        if req["stream"]:
            async def sse() -> AsyncIterator[str]:
                try:
                    async for delta, reason in events():
                        yield f"data: {json.dumps(chunk(delta, reason))}\n\n"
                except RequestFailed as e:  # headers are sent: the error is an event
                    err = {"error": {"message": str(e), "type": "server_error"}}
                    yield f"data: {json.dumps(err)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        parts: list[tuple[str, str | None]] = []

        async def collect() -> None:
            async for item in events():
                parts.append(item)

        try:
            if not await _unless_disconnected(request, collect()):
                return Response(status_code=499)  # nobody is listening; it was aborted
        except RequestFailed as e:
            return _error(500, f"the request failed while being served: {e}", "server_error")
        n, reason = len(parts), parts[-1][1]
        body = chunk("".join(t for t, _ in parts), reason)
        body["usage"] = {"prompt_tokens": len(req["ids"]), "completion_tokens": n,
                         "total_tokens": len(req["ids"]) + n}
        return JSONResponse(body)

    async def health(request: Request) -> Response:
        ok = loop_thread.alive
        why = None if ok else repr(loop_thread.error) if loop_thread.error else "not running"
        return JSONResponse({"status": "ok" if ok else "engine stopped", "error": why,
                             "request_errors": loop_thread.num_request_errors},
                            status_code=200 if ok else 503)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @asynccontextmanager
    async def lifespan(app: Starlette):
        loop_thread.start()
        yield
        loop_thread.stop()

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                            Route("/health", health), Route("/metrics", prometheus)],
                    lifespan=lifespan)
    app.state.engine_loop, app.state.metrics = loop_thread, metrics
    return app


class ServerThread:
    """Run uvicorn on 127.0.0.1 in a background thread: ``with ServerThread(app) as s: s.url``."""

    def __init__(self, app: Starlette, port: int = 0, host: str = "127.0.0.1"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                    log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:  # noqa: PYI034
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


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
    args = p.parse_args(argv)
    model, tok = infer_lab.load(args.model)
    engine = Engine(model, EngineConfig(num_blocks=args.num_blocks,
                                        max_num_seqs=args.max_num_seqs,
                                        keep_step_records=False))  # a server runs forever
    uvicorn.run(build_app(engine, tok, args.max_queue), host="127.0.0.1", port=args.port)


if __name__ == "__main__":  # pragma: no cover
    main()
