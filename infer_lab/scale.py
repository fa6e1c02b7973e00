"""How big a lab's experiments are: one knob, the ``INFER_LAB_SCALE`` environment variable.

    ci      seconds per section, so the test suite can run every notebook top to bottom
    laptop  a minute or so per section on a CPU
    gpu     long sweeps and many repeats, for a machine with a CUDA GPU
    auto    gpu when CUDA is present, else laptop (the default)

Labs read their sizes (tokens to generate, repeats, sweep lengths) from the
:class:`Scale` that :func:`current_scale` returns, never from numbers typed in a cell,
so the same notebook runs in CI in seconds and on a GPU at full size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_VAR = "INFER_LAB_SCALE"


@dataclass(frozen=True)
class Scale:
    """Per-scale sizes of the labs' experiments."""

    name: str
    max_new_tokens: int  # tokens a demo generates
    repeats: int  # timed repetitions of one measurement (report the median)
    warmup: int  # untimed calls before timing
    n_requests: int  # requests behind a latency distribution (p50/p95/p99)
    decode_len: int  # tokens decoded in a with/without-cache timing run
    sweep_lengths: tuple[int, ...]  # sequence lengths of sweeps (prefill, KV growth)
    window: int  # sliding-window size of the KV-cache lab (tokens)
    probe_mb: int  # buffer size of the memory-bandwidth probe
    probe_matmul: int  # square matmul size of the FLOP/s probe

    def __str__(self) -> str:
        return (f"scale={self.name!r}: {self.max_new_tokens} new tokens, {self.repeats} "
                f"repeats, {self.n_requests} requests, decode runs of {self.decode_len} "
                f"tokens (set {ENV_VAR}=ci|laptop|gpu to change)")


SCALES: dict[str, Scale] = {
    "ci": Scale("ci", max_new_tokens=24, repeats=2, warmup=1, n_requests=12,
                decode_len=96, sweep_lengths=(16, 64, 128, 256), window=24,
                probe_mb=128, probe_matmul=512),
    "laptop": Scale("laptop", max_new_tokens=64, repeats=5, warmup=2, n_requests=40,
                    decode_len=384, sweep_lengths=(16, 64, 128, 256, 512, 768),
                    window=96, probe_mb=256, probe_matmul=1024),
    "gpu": Scale("gpu", max_new_tokens=128, repeats=10, warmup=3, n_requests=100,
                 decode_len=960, sweep_lengths=(16, 64, 128, 256, 512, 768, 960),
                 window=128, probe_mb=1024, probe_matmul=8192),
}
CHOICES = (*SCALES, "auto")


def scale_name(value: str | None = None) -> str:
    """The scale's name: ``value``, else ``$INFER_LAB_SCALE``, else auto, resolved."""
    raw = value if value is not None else os.environ.get(ENV_VAR, "auto")
    name = raw.strip().lower() or "auto"
    if name not in CHOICES:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a scale; choose one of "
                         f"{', '.join(CHOICES)} (auto = gpu with CUDA, else laptop)")
    if name == "auto":
        import torch

        name = "gpu" if torch.cuda.is_available() else "laptop"
    return name


def current_scale(value: str | None = None) -> Scale:
    """The :class:`Scale` the labs run at (see the module docstring)."""
    return SCALES[scale_name(value)]
