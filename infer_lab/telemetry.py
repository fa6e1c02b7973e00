"""Telemetry: what the kernel's infer_lab code is doing, for the JupyterLab inference monitor.

The channel is a Jupyter comm (target ``infer_lab.telemetry``), because a comm already
connects exactly one kernel to the frontends that show its notebook, through the
server's base URL and authentication, with no port or route of our own.

It observes from outside (:mod:`infer_lab.observe`): the decode loop, speculative decoding
and the serving engine do not import this module; they tell their observers, and
:data:`observer` (a :class:`Monitor`) is the one that turns what they say into the
panel's events. Who turns it on, and why it costs nothing when off::

    lab setup cell ──► connect(): offer a comm ("hello"), add `observer` to the defaults
    monitor opens  ──► frontend sends {"type": "subscribe", "on": true}
    hot loops      ──► `if trace:` / `if listening(...)`: publisher.active, one check
    events         ──► buffered; sent at most every FLUSH_INTERVAL = 0.25 s

* ``publisher`` is the one module-level object: off (``active = False``) until a frontend
  subscribes, and off again when every subscriber's panel closes or its comm closes.
* ``import infer_lab`` does none of this. Outside an ipykernel (plain Python, the command
  line, ``python -m infer_lab.bench``), ``connect()`` does nothing, so no observer is
  added and ``active`` stays False for the life of the process. A frontend without the
  extension closes the offered comm, which also leaves it off. ``INFER_LAB_TELEMETRY=0``
  in the environment skips even the offer.
* A kernel reads frontend messages only between cells (a running cell holds its shell;
  tried here, ipykernel 7.4 did not handle them on a subshell during a cell either), so
  opening or closing the monitor takes effect from the next cell. A lab's setup cell
  calls ``connect()``, so its later cells are live.
* Batching bounds the cost: a decode step adds a counter increment and a clock read;
  one comm message per 0.25 s carries everything since the last one (per-request token
  counts are summed, the KV state keeps only its latest value). ``python -m
  infer_lab.bench telemetry`` measures the overhead (aim: under 2% of decode time).

Events (``{"events": [...], "memory": {...}, "t": wall seconds}``, times are wall clock):

    {"type": "phase", "id", "source", "phase": queued|prefill|decode|done, "t"}
    {"type": "tokens", "id", "n", "dt"}          n tokens made in dt seconds of work
    {"type": "latency", "id", "ttft", "tpot", "tokens"}       when a request is done
    {"type": "kv", "used", "free", "total", "running", "waiting"}  serving engine
    {"type": "spec", "proposed", "accepted", "alpha", "acceptance_rate"}

What is observed: :func:`infer_lab.generate.decode_steps` (generate, stream, complete),
:meth:`infer_lab.serving.Engine.step`, :func:`infer_lab.speculative.speculative_decode`.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from .observe import Acceptance, EngineStep, add_default

TARGET = "infer_lab.telemetry"
FLUSH_INTERVAL = 0.25  # seconds: at most 4 comm messages per second
_ids = itertools.count()


class Channel(Protocol):
    """What the publisher sends on: a comm, or a list in a test."""

    def send(self, data: dict[str, Any]) -> None: ...


class Publisher:
    """Buffers telemetry events and sends them in batches, at most every ``interval`` s.

    ``active`` is the only attribute hot code reads; it is True only while a channel is
    attached and at least one frontend has subscribed.
    """

    def __init__(self, interval: float = FLUSH_INTERVAL,
                 clock: Callable[[], float] = time.perf_counter):
        self.active = False
        self.interval = interval
        self.clock = clock
        self.channel: Channel | None = None
        self.subscribers: set[str] = set()
        self.messages_sent = 0
        self.events_sent = 0
        self._events: list[dict[str, Any]] = []
        self._tokens: dict[str, list[float]] = {}  # id -> [n, dt]
        self._kv: dict[str, Any] | None = None
        self._last_flush = -float("inf")
        # What the panel last heard of each engine request: {engine id: {seq_id: phase}}.
        # Dropped with the buffer when turned off, so a new panel hears every phase again.
        self.engine_phases: dict[int, dict[int, str]] = {}

    # -- who listens ----------------------------------------------------------------------
    def attach(self, channel: Channel | None) -> None:
        """Send on ``channel`` from now on (None: detach, and stop)."""
        self.channel = channel
        if channel is None:
            self.subscribers.clear()
        self._update()

    def subscribe(self, client: str, on: bool = True) -> None:
        """A frontend's monitor opened (on) or closed (off)."""
        (self.subscribers.add if on else self.subscribers.discard)(client)
        self._update()

    def _update(self) -> None:
        was, self.active = self.active, self.channel is not None and bool(self.subscribers)
        if was and not self.active:
            self._clear()

    def _clear(self) -> None:
        self._events, self._tokens, self._kv = [], {}, None
        self.engine_phases.clear()

    # -- what happens -----------------------------------------------------------------------
    def event(self, type: str, **fields: Any) -> None:
        self._events.append({"type": type, "t": time.time(), **fields})
        self.maybe_flush()

    def tokens(self, key: str, n: int, dt: float) -> None:
        """``n`` tokens of request ``key`` took ``dt`` seconds (summed until the flush)."""
        acc = self._tokens.get(key)
        if acc is None:
            self._tokens[key] = [n, dt]
        else:
            acc[0] += n
            acc[1] += dt
        self.maybe_flush()

    def kv(self, **state: Any) -> None:
        self._kv = {"type": "kv", "t": time.time(), **state}  # only the latest matters

    def maybe_flush(self) -> None:
        if self.clock() - self._last_flush >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Send everything buffered as one message (nothing when inactive or empty)."""
        if not self.active or self.channel is None:
            self._clear()
            return
        if not (self._events or self._tokens or self._kv):
            return
        events = self._events
        events += [{"type": "tokens", "id": k, "n": int(n), "dt": dt}
                   for k, (n, dt) in self._tokens.items()]
        if self._kv is not None:
            events.append(self._kv)
        self._events, self._tokens, self._kv = [], {}, None
        self._last_flush = self.clock()
        self.messages_sent += 1
        self.events_sent += len(events)
        self.channel.send({"events": events, "memory": memory(), "t": time.time()})


publisher = Publisher()


class RequestTrace:
    """Timings of one request (a generate call, or a speculative decode) as it runs."""

    def __init__(self, source: str, pub: Publisher, batch: int = 1, **info: Any):
        self.pub, self.batch = pub, batch
        self.id = f"{source[0]}{next(_ids)}"
        self.start = self.last = time.perf_counter()
        self.first: float | None = None
        self.n = 0
        pub.event("phase", id=self.id, source=source, phase="prefill", batch=batch, **info)

    def token(self, n: int | None = None) -> None:
        """``n`` new tokens (default: one per row of the batch) exist now."""
        now, n = time.perf_counter(), self.batch if n is None else n
        if self.first is None:
            self.first = now
            self.pub.event("phase", id=self.id, phase="decode")
        self.n += n
        self.pub.tokens(self.id, n, now - self.last)
        self.last = now

    def done(self, spec: Acceptance | None = None) -> None:
        """The request ended; a speculative decode's acceptance becomes a "spec" event."""
        extra: dict[str, float] = {}
        if spec is not None:
            self.pub.event("spec", proposed=spec.proposed, accepted=spec.accepted,
                           alpha=spec.alpha, acceptance_rate=spec.acceptance_rate)
            extra["alpha"] = spec.alpha
        ttft = None if self.first is None else self.first - self.start
        steps = self.n // self.batch
        tpot = ((self.last - self.first) / (steps - 1)
                if self.first is not None and steps > 1 else None)
        self.pub.event("phase", id=self.id, phase="done")
        self.pub.event("latency", id=self.id, ttft=ttft, tpot=tpot, tokens=self.n, **extra)
        self.pub.flush()  # a finished request is shown at once, not up to 0.25 s later


class Monitor:
    """The observer (:class:`infer_lab.observe.Observer`) that feeds the monitor panel.

    It listens only while ``pub`` is active, and turns requests and engine steps into
    the events above; an engine step arrives as plain data (:class:`EngineStep`).
    """

    def __init__(self, pub: Publisher):
        self.pub = pub

    @property
    def listening(self) -> bool:
        return self.pub.active

    def request(self, source: str, batch: int = 1, **info: Any) -> RequestTrace:
        return RequestTrace(source, self.pub, batch, **info)

    def engine_step(self, step: EngineStep) -> None:
        """Phases (each change once), latencies of finished requests, KV blocks, tokens."""
        pub = self.pub
        phases = pub.engine_phases.setdefault(step.engine, {})
        key = f"e{step.engine % 10_000}"
        for seq_id, phase in step.phases:
            if phases.get(seq_id) != phase:
                phases[seq_id] = phase
                pub.event("phase", id=f"{key}-{seq_id}", source="engine", phase=phase)
        for f in step.finished:
            phases.pop(f.seq_id, None)
            pub.event("phase", id=f"{key}-{f.seq_id}", source="engine", phase="done")
            pub.event("latency", id=f"{key}-{f.seq_id}", tokens=f.tokens, ttft=f.ttft,
                      tpot=f.tpot)
        pub.kv(used=step.kv_used, free=step.kv_free, total=step.kv_total,
               running=step.num_running, waiting=step.num_waiting)
        pub.tokens(key, step.num_sampled, step.end - step.start)
        if not step.unfinished:
            pub.flush()


observer = Monitor(publisher)  # what connect() adds to infer_lab.observe.default_observers


def trace(source: str, batch: int = 1, **info: Any) -> RequestTrace | None:
    """A trace of one request, or None (the common case) when no monitor listens."""
    return observer.request(source, batch, **info) if observer.listening else None


def memory() -> dict[str, int | None]:
    """This process's resident memory and, if CUDA is in use, GPU memory (bytes)."""
    rss = None
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, KiB
        except (ImportError, OSError):
            pass
    gpu = None
    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = int(torch.cuda.memory_allocated())
    return {"rss": rss, "gpu": gpu}


# -- the comm (ipykernel only) ----------------------------------------------------------------
def _kernel() -> Any | None:
    if "ipykernel" not in sys.modules:  # plain Python never imports IPython for this
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return getattr(get_ipython(), "kernel", None)


def _bind(c: Any) -> None:
    def on_msg(msg: dict[str, Any]) -> None:
        data = msg.get("content", {}).get("data", {})
        if data.get("type") == "subscribe":
            publisher.attach(c)
            publisher.subscribe(str(data.get("client", "")), bool(data.get("on", True)))

    def on_close(_msg: Any = None) -> None:
        if publisher.channel is c:
            publisher.attach(None)

    c.on_msg(on_msg)
    c.on_close(on_close)
    publisher.attach(c)  # inactive until a frontend subscribes on it


def connect() -> bool:
    """Offer telemetry to the frontend when running in an ipykernel; True if offered.

    Registers the comm target (so a frontend that reloads can reopen the channel), opens
    one comm to the frontend's target (so an open JupyterLab hears at once) and adds
    :data:`observer` to :data:`infer_lab.observe.default_observers`. Safe to call again;
    a no-op outside a kernel or with ``INFER_LAB_TELEMETRY=0``. Each lab's setup cell
    calls it.
    """
    if os.environ.get("INFER_LAB_TELEMETRY", "1") == "0" or _kernel() is None:
        return False
    import comm  # ipykernel installs its own create_comm / get_comm_manager here

    manager = comm.get_comm_manager()
    if TARGET not in manager.targets:
        manager.register_target(TARGET, lambda c, _msg: _bind(c))
    _bind(comm.create_comm(target_name=TARGET, data={"hello": 1, "pid": os.getpid()}))
    add_default(observer)
    return True


def disable() -> None:
    """Stop publishing in this process (until a frontend subscribes again)."""
    publisher.attach(None)
