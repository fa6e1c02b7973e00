"""Device probe, measured bandwidth and FLOP/s, and the roofline (Williams et al. 2009).

The roofline says a kernel can go no faster than either limit of the machine:

    time >= max(bytes moved / memory bandwidth, FLOPs / peak FLOP/s)

Its arithmetic intensity I = FLOPs / bytes decides which: below the ridge point
peak FLOP/s / bandwidth it is memory-bound. One decode step of a transformer reads
every weight once (plus each sequence's KV cache) to do ~2 FLOPs per weight per
sequence, so at batch 1 in 16-bit its intensity is ~1 FLOP/byte: far below any
modern chip's ridge (~300 on an H100), so decode speed is set by bytes, not FLOPs.

Spec-sheet figures (:data:`PRESETS`) sit beside what :func:`probe` measures here, and
each :class:`HardwareSpec` says which it is.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field

import torch

from .config import ModelConfig


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


def device_name(device: torch.device | str | None = None) -> str:
    """Human-readable name of the device: the GPU's name, or the CPU's model name."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple GPU (MPS, {platform.machine()})"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


DTYPE_KEYS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
              torch.int8: "int8"}


def dtype_key(dtype: torch.dtype | str) -> str:
    """'fp32', 'bf16', ... : the key of a dtype in :attr:`HardwareSpec.tflops`."""
    if isinstance(dtype, str):
        return dtype
    if "float8" in str(dtype):
        return "fp8"
    return DTYPE_KEYS.get(dtype, str(dtype).removeprefix("torch."))


# -- what a machine can do ---------------------------------------------------------------
@dataclass(frozen=True)
class HardwareSpec:
    """Memory bandwidth and peak dense FLOP/s of one device.

    tflops maps a dtype key ('fp32', 'tf32', 'bf16', 'fp16', 'fp8', 'int8') to dense
    (no 2:4 sparsity) tera-FLOP/s, or tera-OP/s for int8.
    """

    name: str
    kind: str  # "gpu", "apple", "cpu"
    mem_bandwidth_gbs: float
    tflops: dict[str, float]
    memory_gb: float | None = None
    source: str = "spec sheet"  # or "measured"
    note: str = ""

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.mem_bandwidth_gbs * 1e9

    def flops(self, dtype: torch.dtype | str = "fp32") -> float:
        """Peak FLOP/s for ``dtype``; 16-bit falls back to the other 16-bit type, then fp32."""
        key = dtype_key(dtype)
        fallbacks = {"bf16": ["fp16"], "fp16": ["bf16"], "fp8": ["int8", "bf16", "fp16"],
                     "int8": ["fp8", "bf16", "fp16"]}.get(key, [])
        for k in [key, *fallbacks, "fp32"]:
            if k in self.tflops:
                return self.tflops[k] * 1e12
        raise KeyError(f"{self.name} has no FLOP/s figure for {key!r}")

    def ridge(self, dtype: torch.dtype | str = "fp32") -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel becomes compute-bound."""
        return self.flops(dtype) / self.bandwidth


# Spec-sheet figures, dense (no sparsity). Sources: NVIDIA datasheets for H100 SXM5 and
# H200 SXM (3.35 / 4.8 TB/s; 989 TFLOPS bf16, 1979 fp8), A100 80GB SXM (2,039 GB/s;
# 19.5 fp32, 312 bf16), L4 (300 GB/s; 30.3 fp32; 121 bf16 = half the 242 "with
# sparsity"), T4 (320 GB/s; 8.1 fp32, 65 fp16, 130 int8), the Ada whitepaper for the
# RTX 4090 (1,008 GB/s; 82.6 fp32; 165 fp16/bf16 with fp32 accumulate). Derived, not
# published as such: RTX 4060 Laptop from its 3,072 cores at 2,370 MHz max boost and
# 128-bit 16 Gbps GDDR6 (laptop clocks vary with the power limit); Apple M3 Max 40-core
# GPU: Apple quotes 400 GB/s, the FLOP/s is the common estimate 40 cores x 128 ALUs x
# 2 x 1.6 GHz; desktop CPU: Ryzen 9 7950X with dual-channel DDR5-5200 (2 x 8 B x 5.2
# GT/s = 83 GB/s), 16 cores x 32 fp32 FLOP/cycle (2 x 256-bit FMA) x 4.5 GHz base.
PRESETS: dict[str, HardwareSpec] = {s.name: s for s in [
    HardwareSpec("H100 SXM", "gpu", 3350, {"fp32": 67, "tf32": 494.7, "bf16": 989.4,
                 "fp16": 989.4, "fp8": 1978.9, "int8": 1978.9}, 80),
    HardwareSpec("H200 SXM", "gpu", 4800, {"fp32": 67, "tf32": 494.7, "bf16": 989.4,
                 "fp16": 989.4, "fp8": 1978.9, "int8": 1978.9}, 141),
    HardwareSpec("A100 80GB SXM", "gpu", 2039, {"fp32": 19.5, "tf32": 156, "bf16": 312,
                 "fp16": 312, "int8": 624}, 80),
    HardwareSpec("L4", "gpu", 300, {"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121,
                 "fp8": 242, "int8": 242}, 24),
    HardwareSpec("T4", "gpu", 320, {"fp32": 8.1, "fp16": 65, "int8": 130}, 16,
                 note="no bf16 tensor cores"),
    HardwareSpec("RTX 4090", "gpu", 1008, {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2,
                 "fp16": 165.2, "fp8": 330.3, "int8": 660.6}, 24),
    HardwareSpec("RTX 4060 Laptop", "gpu", 256, {"fp32": 14.6, "bf16": 29.1, "fp16": 29.1,
                 "fp8": 58.2, "int8": 116.5}, 8, note="derived from cores x clock"),
    HardwareSpec("Apple M3 Max (40-core GPU)", "apple", 400, {"fp32": 16.4, "fp16": 16.4,
                 "bf16": 16.4}, 128, note="FLOP/s is an estimate; Apple publishes GB/s"),
    HardwareSpec("Desktop CPU (Ryzen 9 7950X, DDR5-5200)", "cpu", 83.2, {"fp32": 2.3}, 64,
                 note="theoretical peaks; derived from cores x clock x SIMD width"),
]}


# -- what this machine measures ------------------------------------------------------------
def _best_seconds(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls: the machine's capability, not its noise."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_bandwidth(device: torch.device | str | None = None, size_mb: float = 256,
                      repeats: int = 5) -> float:
    """Memory bandwidth in GB/s from copying a ``size_mb`` buffer: bytes read + written.

    The buffer should be much larger than the caches, or this measures the cache. On a
    CPU the figure is what torch's current threads can pull (one thread reaches only a
    part of a socket's bandwidth).
    """
    device = torch.device(device) if device is not None else default_device()
    n = max(1, int(size_mb * 1e6) // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, repeats)
    return 2 * n * 4 / seconds / 1e9


def measure_matmul_flops(device: torch.device | str | None = None,
                         dtype: torch.dtype | None = None, n: int | None = None,
                         repeats: int = 5) -> float:
    """Achieved FLOP/s of an n x n matmul (2 n^3 FLOPs) in ``dtype``.

    n defaults to 1024 on CPU (tens of ms) and 8192 on GPUs, where smaller matrices do
    not fill the chip.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    n = n or (1024 if device.type == "cpu" else 8192)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    seconds = _best_seconds(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds


def probe(device: torch.device | str | None = None,
          dtypes: tuple[torch.dtype, ...] | None = None, bandwidth_mb: float = 256,
          matmul_n: int | None = None, repeats: int = 5) -> HardwareSpec:
    """This machine's measured bandwidth and matmul FLOP/s, as a HardwareSpec.

    Nothing is cached globally: keep the returned object and pass it around.
    """
    device = torch.device(device) if device is not None else default_device()
    dtypes = dtypes or tuple(dict.fromkeys([torch.float32, default_dtype(device)]))
    tflops = {dtype_key(dt): measure_matmul_flops(device, dt, matmul_n, repeats) / 1e12
              for dt in dtypes}
    memory_gb = None
    if device.type == "cuda":
        memory_gb = torch.cuda.get_device_properties(device).total_memory / 1e9
    kind = {"cuda": "gpu", "mps": "apple"}.get(device.type, "cpu")
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' * (n != 1)}" if device.type == "cpu" else ""
    return HardwareSpec(device_name(device), kind,
                        measure_bandwidth(device, bandwidth_mb, repeats), tflops,
                        memory_gb, source="measured", note=f"{device.type}{threads}")


# -- the roofline of one decode step ---------------------------------------------------
@dataclass(frozen=True)
class Roofline:
    """Bytes, FLOPs and the speed limit of one decode step (one token per sequence)."""

    batch: int
    context: int
    weight_bytes: float  # weights read once per step, shared by the batch
    kv_bytes: float  # every sequence reads its own cache
    flops_per_token: float
    hw: HardwareSpec = field(repr=False)
    compute_dtype: str = "bf16"

    @property
    def bytes_per_step(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def flops_per_step(self) -> float:
        return self.batch * self.flops_per_token

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte moved."""
        return self.flops_per_step / self.bytes_per_step

    @property
    def memory_time(self) -> float:
        return self.bytes_per_step / self.hw.bandwidth

    @property
    def compute_time(self) -> float:
        return self.flops_per_step / self.hw.flops(self.compute_dtype)

    @property
    def bound(self) -> str:
        """'memory' or 'compute': whichever takes longer sets the step time."""
        return "memory" if self.memory_time >= self.compute_time else "compute"

    @property
    def max_tokens_per_s(self) -> float:
        """Output tokens/s over the batch if the step ran exactly at the roofline."""
        return self.batch / max(self.memory_time, self.compute_time)

    def achieved(self, tokens_per_s: float) -> float:
        """Fraction of the roofline reached by a measured output tokens/s."""
        return tokens_per_s / self.max_tokens_per_s

    def achieved_bandwidth_gbs(self, tokens_per_s: float) -> float:
        """GB/s the measured speed implies: bytes per step x steps per second."""
        return self.bytes_per_step * tokens_per_s / self.batch / 1e9


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters a decode step multiplies with: all but the embedding-table lookups.

    Looking up B rows of the token (and GPT-2 position) table reads almost nothing; a
    tied table is still read in full, by the output projection.
    """
    lookups = cfg.max_seq_len * cfg.d_model if cfg.block == "gpt2" else 0
    if not cfg.tie_embeddings:
        lookups += cfg.vocab_size * cfg.d_model
    return cfg.n_params - lookups


def roofline(cfg: ModelConfig, batch: int = 1, context: int = 0, bytes_per_param: float = 2,
             kv_bytes_per_elem: float | None = None, hw: HardwareSpec | None = None,
             compute_dtype: str | torch.dtype | None = None) -> Roofline:
    """The roofline of one decode step of ``batch`` sequences holding ``context`` tokens.

    bytes/step  = matmul params x bytes_per_param + batch x context x KV bytes/token
    FLOPs/token = 2 x matmul params + 4 x n_layer x d_model x context
                  (q.k and p.v: 2 FLOPs per multiply-add over each head's cached keys)

    kv_bytes_per_elem defaults to the weights' width, at least 2 (quantized weights
    usually keep a 16-bit cache); compute_dtype to fp32 for 4-byte weights, else bf16
    (weight-only quantization multiplies in 16-bit after dequantizing).
    """
    if hw is None:
        raise ValueError("pass hw: a HardwareSpec from hardware.PRESETS or hardware.probe()")
    if batch < 1 or context < 0:
        raise ValueError(f"need batch >= 1 and context >= 0, got {batch=}, {context=}")
    kv_elem = kv_bytes_per_elem if kv_bytes_per_elem is not None else max(bytes_per_param, 2)
    dtype = dtype_key(compute_dtype) if compute_dtype else (
        "fp32" if bytes_per_param >= 4 else "bf16")
    p = matmul_params(cfg)
    return Roofline(batch=batch, context=context,
                    weight_bytes=p * bytes_per_param,
                    kv_bytes=batch * context * cfg.kv_bytes_per_token(kv_elem),
                    flops_per_token=2 * p + 4 * cfg.n_layer * cfg.d_model * context,
                    hw=hw, compute_dtype=dtype)

