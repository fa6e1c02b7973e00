"""Device probe: which accelerator we run on, and the dtype that suits it.

(Measured bandwidth, FLOP/s and the roofline helper are added below.)
"""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA if present, else Apple MPS, else CPU: labs run unchanged on each."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on other GPUs and MPS, fp32 on CPU.

    CPUs run fp32 matmuls at full speed everywhere, while bf16 is only fast on chips
    with native support (AMX, AVX512-BF16); fp32 is the safe default there.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not its launch."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
