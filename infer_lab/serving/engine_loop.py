"""The engine thread of the HTTP server, and the Prometheus metrics it keeps.

``Engine.step()`` is synchronous and the engine is not thread-safe, so exactly one
thread owns it and loops

    drain commands (submit, abort)  ->  step()  ->  hand each new token to its request

Other threads (the asyncio event loop of :mod:`infer_lab.serving.server`) only put
commands on a thread-safe queue and receive tokens through the callback ("sink") they
registered with the request. An abort is applied before the next step, so a cancelled
request's KV blocks are free for it.

Faults: a request that fails while being served (the engine reports it as a
TokenOutput with ``error`` set) gets an ``("error", message)`` event and is counted in
``infer_lab_request_errors``; everyone else goes on. Only an exception out of
``step()`` itself, or out of the loop's own bookkeeping, means the engine's state is
unknown: then the loop stops, every open request hears why, and ``error`` says it to
``/health``.

Metrics live in a :class:`~prometheus_client.CollectorRegistry` of their own, one per
app, so two servers in one process (tests, notebooks) do not share counters.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..sampling import Sampling
from .interface import ServingEngine
from .sequence import TokenConstraint

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    """Prometheus metrics in a registry of their own (no global state: one per app)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.waiting = Gauge("infer_lab_queue_length", "requests waiting to run", registry=r)
        self.running = Gauge("infer_lab_running_sequences", "requests running", registry=r)
        self.kv_used = Gauge("infer_lab_kv_blocks_used", "KV blocks held", registry=r)
        self.kv_total = Gauge("infer_lab_kv_blocks_total", "KV blocks in the pool", registry=r)
        self.ttft = Histogram("infer_lab_ttft_seconds", "time to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("infer_lab_tpot_seconds", "time per output token after the first",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("infer_lab_generated_tokens", "output tokens", registry=r)
        self.tokens_per_s = Gauge("infer_lab_tokens_per_second",
                                  "output tokens/s over the last 5 s", registry=r)
        self.rejected = Counter("infer_lab_rejected_requests", "429s (queue full)", registry=r)
        self.request_errors = Counter("infer_lab_request_errors",
                                      "requests aborted by a fault while being served",
                                      registry=r)
        self.forward_faults = Counter("infer_lab_forward_faults", "model forwards that raised "
                                      "(retried one request at a time)", registry=r)
        self.bad_requests = Counter("infer_lab_bad_requests", "400s (invalid request)",
                                    registry=r)
        self._window: deque[tuple[float, int]] = deque()

    def observe_state(self, engine: ServingEngine) -> None:
        load = engine.load()
        self.waiting.set(load.num_waiting)
        self.running.set(load.num_running)
        self.kv_used.set(load.kv_blocks_used)
        self.kv_total.set(load.kv_blocks_total)

    def observe_tokens(self, num_tokens: int, now: float) -> None:
        self.tokens.inc(num_tokens)
        self._window.append((now, num_tokens))
        while self._window and now - self._window[0][0] > 5.0:
            self._window.popleft()
        span = now - self._window[0][0] if len(self._window) > 1 else 0.0
        self.tokens_per_s.set(sum(n for _, n in self._window) / span if span > 0 else 0.0)


class EngineLoop:
    """The one thread that owns the engine. Everything else talks to it by command."""

    def __init__(self, engine: ServingEngine, metrics: ServerMetrics):
        self.engine, self.metrics = engine, metrics
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[int, Callable[[tuple], None]] = {}  # seq_id -> deliver(token event)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.error: BaseException | None = None
        self.num_request_errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._cmds.put(("wake",))
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def submit(self, prompt: list[int], max_tokens: int, sampling: Sampling,
               eos_id: int | None, sink: Callable[[tuple], None],
               constraint: TokenConstraint | None = None) -> concurrent.futures.Future:
        """Future of the Sequence, or of the ValueError the engine refuses it with.
        ``constraint``: constrained output (a TokenConstraint), used on the engine thread
        only from now on."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._cmds.put(("add", prompt, max_tokens, sampling, eos_id, sink, fut, constraint))
        return fut

    def abort(self, seq_id: int) -> None:
        self._cmds.put(("abort", seq_id))

    def _handle(self, cmd: tuple) -> None:
        if cmd[0] == "add":
            _, prompt, max_tokens, sampling, eos_id, sink, fut, constraint = cmd
            try:
                seq = self.engine.add_request(prompt, max_tokens, sampling, eos_id,
                                              constraint=constraint)
            except Exception as e:  # noqa: BLE001 - the client hears why; the loop goes on
                fut.set_exception(e)
                return
            self._sinks[seq.seq_id] = sink
            fut.set_result(seq)
        elif cmd[0] == "abort":
            self.engine.abort(cmd[1])  # frees the blocks now, before the next step
            self._sinks.pop(cmd[1], None)

    def _drain(self, block: bool) -> None:
        try:  # block only when there is nothing to step
            self._handle(self._cmds.get(timeout=0.1) if block else self._cmds.get_nowait())
            while True:
                self._handle(self._cmds.get_nowait())
        except queue.Empty:
            pass

    def _deliver(self, seq_id: int, event: tuple) -> None:
        """Hand an event to its request; a sink that fails drops that request only."""
        sink = self._sinks.get(seq_id)
        if sink is None:
            return
        try:
            sink(event)
        except Exception:  # noqa: BLE001 - e.g. the client's event loop has closed
            log.exception("could not deliver to request %d; aborting it", seq_id)
            self._sinks.pop(seq_id, None)
            self.engine.abort(seq_id)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._iterate()
        except Exception as e:  # noqa: BLE001 - the engine's state is unknown: stop, say why
            log.exception("engine loop stopped")
            self.error = e
            for seq_id in list(self._sinks):
                self._deliver(seq_id, ("error", f"engine stopped: {e!r}"))
            self._sinks.clear()

    def _iterate(self) -> None:
        self._drain(block=not self.engine.has_unfinished())
        self.metrics.observe_state(self.engine)
        if not self.engine.has_unfinished():
            return
        before, faults = self.engine.num_steps, self.engine.num_forward_faults
        outputs = self.engine.step()
        self.metrics.forward_faults.inc(self.engine.num_forward_faults - faults)
        if self.engine.num_steps == before:
            time.sleep(0.001)  # nothing ran: a static batcher waiting for a full batch
            return
        num_tokens = 0
        for out in outputs:
            if out.error is not None:
                self.metrics.request_errors.inc()
                self.num_request_errors += 1
                self._deliver(out.seq_id, ("error", out.error))
                self._sinks.pop(out.seq_id, None)
                continue
            num_tokens += 1
            self._deliver(out.seq_id, ("token", out.token, out.finished,
                                       out.seq.finish_reason))
            if out.finished:
                self._sinks.pop(out.seq_id, None)
                s = out.seq
                if s.ttft is not None:
                    self.metrics.ttft.observe(s.ttft)
                if s.tpot is not None:
                    self.metrics.tpot.observe(s.tpot)
        self.metrics.observe_tokens(num_tokens, time.perf_counter())
        self.metrics.observe_state(self.engine)
