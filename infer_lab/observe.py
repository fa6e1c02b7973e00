"""Observers: the decode loop, speculative decoding and the serving engine report what
they do to callbacks they are given, and never import who listens (DESIGN.md rule 15).

    decode_steps (generate, stream, complete) ─┐  request(source, batch) -> RequestObserver
    speculative_decode                         ├─►   .token(n) ... .token(n)
                                               │     .done(spec=None | acceptance)
    Engine.step                                ┘  engine_step(EngineStep)   (plain data)

Who is told. Each of those functions (and ``Engine``'s constructor) takes ``observers``:
a list or tuple is used as given (``[]``: nobody), and ``None``, the default, means
:data:`default_observers`, read at the moment of the call. That list is a declared
registry, public and documented here, not hidden state: it starts empty, so plain Python
reports to no one; :func:`add_default` / :func:`remove_default` change it, and
``infer_lab.telemetry.connect()`` (which a lab's setup cell calls) adds the JupyterLab
monitor's observer to it. ``import infer_lab`` adds nothing.

What it costs when nobody listens. An observer says whether it is ``listening`` (the
monitor: only while a panel is subscribed). :func:`request` returns None unless one is,
so the decode loop's per-token cost is one ``if trace:``; the engine builds its
:class:`EngineStep` only when :func:`listening` finds someone.

An observer gets plain data (numbers, ids, phase names), never the engine, its scheduler
or its block manager: the engine decides what it reports, the observer what it does with it.
This module imports nothing of infer_lab and no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Acceptance", "EngineStep", "FinishedRequest", "Observer", "Recorder",
           "RequestObserver", "add_default", "default_observers", "listening",
           "remove_default", "request", "resolve"]


class Acceptance(Protocol):
    """How a speculative decode went (:class:`infer_lab.speculative.SpecStats` is one)."""

    proposed: int
    accepted: int

    @property
    def alpha(self) -> float: ...

    @property
    def acceptance_rate(self) -> float: ...


class RequestObserver(Protocol):
    """One request as it runs: a generate / stream call, or a speculative decode."""

    def token(self, n: int | None = None) -> None:
        """``n`` new tokens exist now (None: one per row of the batch)."""

    def done(self, spec: Acceptance | None = None) -> None:
        """The request ended (also when its caller stopped early); speculative decoding
        passes its acceptance statistics."""


@dataclass(frozen=True)
class FinishedRequest:
    """A request the engine finished in this step, with its latencies (s; None if unknown)."""

    seq_id: int
    tokens: int
    ttft: float | None
    tpot: float | None


@dataclass(frozen=True)
class EngineStep:
    """What one ``Engine.step()`` did, as plain data: all an observer gets of the engine."""

    engine: int  # which engine (its id): an observer keys per-engine state by it
    start: float  # time.perf_counter() seconds
    end: float
    phases: list[tuple[int, str]]  # (seq_id, queued|prefill|decode) in the step's order
    finished: list[FinishedRequest]  # these are done now
    num_sampled: int  # requests that got a token this step
    kv_used: int  # KV blocks held after the step
    kv_free: int
    kv_total: int
    num_running: int
    num_waiting: int
    unfinished: bool  # requests remain after this step (False: the engine is idle now)


class Observer(Protocol):
    """What the decode loop, speculative decoding and the engine report to."""

    @property
    def listening(self) -> bool:
        """False: skip me, build no events (e.g. no monitor panel is open)."""

    def request(self, source: str, batch: int = 1, **info: Any) -> RequestObserver:
        """A request starts: ``source`` is "generate" or "speculative", ``batch`` its rows,
        ``info`` what else it says about itself (speculative: ``k``)."""

    def engine_step(self, step: EngineStep) -> None:
        """One serving step happened."""


default_observers: list[Observer] = []  # the registry that observers=None means


def add_default(observer: Observer) -> None:
    """Tell ``observer`` of every call that is not given its own observers (once only)."""
    if not any(o is observer for o in default_observers):
        default_observers.append(observer)


def remove_default(observer: Observer) -> None:
    """Stop telling ``observer`` by default (no error if it was not there)."""
    default_observers[:] = [o for o in default_observers if o is not observer]


def resolve(observers: Sequence[Observer] | None) -> Sequence[Observer]:
    """The observers a call tells: the ones it was given, or the defaults (None)."""
    return default_observers if observers is None else observers


def listening(observers: Sequence[Observer] | None) -> list[Observer]:
    """Those of :func:`resolve` that are listening now (usually none: a cheap empty list)."""
    return [o for o in resolve(observers) if o.listening]


class _Fanout:
    """One request told to several observers at once."""

    def __init__(self, requests: list[RequestObserver]):
        self.requests = requests

    def token(self, n: int | None = None) -> None:
        for r in self.requests:
            r.token(n)

    def done(self, spec: Acceptance | None = None) -> None:
        for r in self.requests:
            r.done(spec)


def request(observers: Sequence[Observer] | None, source: str, batch: int = 1,
            **info: Any) -> RequestObserver | None:
    """Start observing one request, or None (the common case) when nobody listens."""
    heard = [o.request(source, batch, **info) for o in listening(observers)]
    if not heard:
        return None
    return heard[0] if len(heard) == 1 else _Fanout(heard)


@dataclass
class Recorder:
    """An observer that keeps everything it is told, as plain data (tests, a lab's probe).

        rec = Recorder()
        generate(model, prompts, 16, observers=[rec])
        rec.requests[0]["tokens"]     # 16 per row, summed over the batch
    """

    listening: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)
    steps: list[EngineStep] = field(default_factory=list)

    def request(self, source: str, batch: int = 1, **info: Any) -> RequestObserver:
        entry: dict[str, Any] = {"source": source, "batch": batch, "info": info,
                                 "tokens": 0, "done": False, "spec": None}
        self.requests.append(entry)
        return _RecordedRequest(entry)

    def engine_step(self, step: EngineStep) -> None:
        self.steps.append(step)


class _RecordedRequest:
    def __init__(self, entry: dict[str, Any]):
        self.entry = entry

    def token(self, n: int | None = None) -> None:
        self.entry["tokens"] += self.entry["batch"] if n is None else n

    def done(self, spec: Acceptance | None = None) -> None:
        self.entry["done"] = True
        if spec is not None:
            self.entry["spec"] = {"proposed": spec.proposed, "accepted": spec.accepted,
                                  "alpha": spec.alpha,
                                  "acceptance_rate": spec.acceptance_rate}
