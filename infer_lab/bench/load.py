"""Notice a busy machine: the load average around a benchmark, and repeats that disagree.

A CPU benchmark with torch's default of one thread per core needs every core. When
another process holds one, the threads of each small op wait for the slowest of them,
and decoding gets 2-100x slower (seen: cached decode at 170 ms/token in a run whose
first table had 2.4 ms/token, and a "KV cache speedup" of 0.3x). Two checks say so in
the output instead of leaving it to a reader's doubt:

* **load**: Linux's 1-minute load average ``L`` (runnable threads, an exponentially
  damped mean with a 60 s time constant) before the run and after it. Before, it counts
  other work only (this process has done nothing but import). After, it also counts the
  bench's own ``t`` threads, at most ``t (1 - exp(-s / 60))`` after ``s`` seconds of
  running, so the others' share after is estimated as ``L_after - t (1 - exp(-s/60))``
  (an under-estimate when the bench idles: the check errs towards silence). The machine
  was busy when

      others + min(t, cores) > (1 + BUSY_MARGIN) x cores,      BUSY_MARGIN = 0.25

  for the load before or the estimate after: with one thread per core, others' load
  above a quarter of the cores (0.5 on 2 cores, where one other busy process gives 1);
  with ``--threads 1`` on 2 cores, one other process still leaves the bench a core.
  Caveats: a second bench started from the same Python process right after another sees
  the first one's tail in its "before"; in some containers the load average is the
  host's. Where there is no load average (Windows), this check is skipped.
* **spread**: each timed row is repeated; its spread is ``max / min`` of the repeats
  (other work only ever adds time, so this is how much the slowest run lost against the
  best). Above SPREAD_THRESHOLD = 1.25 the runs disagree by more than 25% and the
  row's median is not to be trusted. A row timed once has no spread.

Torch-free, so it reads the same in any process; the caller passes the thread count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

BUSY_MARGIN = 0.25  # others' load + bench threads may exceed the cores by this fraction
SPREAD_THRESHOLD = 1.25  # max / min of a row's repeats
LOAD_TIME_CONSTANT_S = 60.0  # the kernel's damping of the 1-minute load average
SLOW_NOTE = "other processes compete for the cores; timings may be 2-100x slow"


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS keeps none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which a cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LoadRecord:
    """The load average around one benchmark run, and what the run itself added to it."""

    before: float | None
    after: float | None
    cores: int
    threads: int  # the bench's compute threads (torch.get_num_threads())
    seconds: float  # wall time of the run

    def own_share(self) -> float:
        """The most the bench's own threads can have added to the 1-minute average."""
        return self.threads * (1 - math.exp(-self.seconds / LOAD_TIME_CONSTANT_S))

    def others_after(self) -> float | None:
        if self.after is None:
            return None
        return max(0.0, self.after - self.own_share())

    def busy(self, margin: float = BUSY_MARGIN) -> bool:
        others = [x for x in (self.before, self.others_after()) if x is not None]
        limit = (1 + margin) * self.cores
        return any(x + min(self.threads, self.cores) > limit for x in others)

    def as_dict(self, margin: float = BUSY_MARGIN) -> dict[str, Any]:
        return {**asdict(self), "others_after": self.others_after(),
                "busy": self.busy(margin), "busy_margin": margin}


def load_warning(record: LoadRecord, margin: float = BUSY_MARGIN) -> str | None:
    """The "machine was busy" line, or None when the load left the bench its cores."""
    if not record.busy(margin):
        return None
    return (f"machine was busy: load average {_fmt(record.before)} before / "
            f"{_fmt(record.after)} after on {record.cores} cores ({SLOW_NOTE}); "
            f"{record.threads} bench threads, others' share after about "
            f"{_fmt(record.others_after())}")


def spread(times: Sequence[float]) -> float | None:
    """max / min of a row's repeated timings; None for fewer than two usable ones."""
    ok = [t for t in times if t > 0 and math.isfinite(t)]
    return max(ok) / min(ok) if len(ok) >= 2 else None


def spreads(timings: Mapping[str, Sequence[float]]) -> dict[str, float | None]:
    return {row: spread(t) for row, t in timings.items()}


def spread_warnings(timings: Mapping[str, Sequence[float]],
                    threshold: float = SPREAD_THRESHOLD) -> list[str]:
    """One "runs disagree" line per row whose repeats spread more than ``threshold``."""
    return [f"runs disagree: row {row!r} spread {s:.2f} > threshold {threshold:.2f} "
            f"(max / min of {len(timings[row])} runs)"
            for row, s in spreads(timings).items() if s is not None and s > threshold]


def warnings(record: LoadRecord, timings: Mapping[str, Sequence[float]],
             margin: float = BUSY_MARGIN, threshold: float = SPREAD_THRESHOLD) -> list[str]:
    """Every reason to distrust this run's timings; empty when there is none."""
    busy = load_warning(record, margin)
    return ([busy] if busy else []) + spread_warnings(timings, threshold)


def summary_line(record: LoadRecord) -> str:
    """The load context printed under every bench's table, warnings or not."""
    return (f"load average {_fmt(record.before)} before / {_fmt(record.after)} after on "
            f"{record.cores} cores, {record.threads} threads, {record.seconds:.0f} s")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
