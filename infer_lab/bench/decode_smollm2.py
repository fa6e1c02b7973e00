"""Decode speed on a real model: SmolLM2-135M-Instruct from its GGUF file, every way we run it.

Contenders, one prompt (a chat turn), greedy, batch 1, the same torch threads, runs
alternated and the median kept (:func:`~infer_lab.bench.interleaved_times`):

* ours fp32 / bf16 — the file dequantized into our Transformer;
* ours Q4_1 kept — the file's blocks kept (:mod:`infer_lab.quant.gguf_linear`), decoded
  per call into fp32: the file's size in memory, not yet its speed (issue 16);
* transformers fp32 / bf16 — the same dequantized weights in ``LlamaForCausalLM``
  (:func:`infer_lab.hf_export.to_hf`; tests/test_gguf_smollm2.py shows they equal
  transformers' own load of the file);
* llama.cpp — the same file through ``llama-cpp-python`` with as many threads, when it
  is installed: what a user of this CPU would run instead, so the anchor to beat.

Bytes per token count each contender's own weight format (4, 2, or the blocks' bytes per
weight) plus its KV cache, against the machine's measured copy bandwidth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..generate import GREEDY, generate
from ..hardware import HardwareSpec, roofline
from ..model import Transformer
from . import interleaved_times, median

NAME = "smollm2-135m"
PROMPT = [{"role": "user", "content": "Write a Python function that checks whether a "
                                      "number is prime, and explain it briefly."}]


def gguf_path() -> Path | None:
    """The packaged file, or None (with the reason printed) when it is not installed."""
    from ..gguf import packaged_path

    try:
        return packaged_path(NAME)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        print(f"{NAME} rows skipped: {e}")
        return None


def stored_bytes_per_param(model: Transformer) -> float:
    """Bytes the matmuls read per weight: parameters' width, or quantized layers' blocks."""
    from ..quant.gguf_linear import GGUFLinear

    blocks = [m for m in model.modules() if isinstance(m, GGUFLinear)]
    if not blocks:
        return model.dtype.itemsize
    stored = sum(sum(p.data.numel() for p in m.parts()) for m in blocks)
    return stored / sum(m.in_features * m.out_features for m in blocks)


def llama_cpp_call(path: Path, prompt: list[int], n: int, threads: int
                   ) -> Callable[[], list[int]] | None:
    """llama.cpp decoding ``n`` greedy tokens after ``prompt``, or None if not installed."""
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp row skipped: llama-cpp-python is not installed (README: "
              "'Against llama.cpp')")
        return None
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + n + 8, n_batch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)

    def call() -> list[int]:
        llm.reset()  # forget the last run's KV cache: prefill the prompt again, as ours do
        out: list[int] = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            out.append(int(token))
            if len(out) == n:  # EOS does not stop it: every contender decodes n tokens
                break
        return out

    return call


@dataclass
class Contenders:
    calls: dict[str, Callable[[], list[int]]]  # name -> decode n greedy tokens
    bytes_per_weight: dict[str, float]  # name -> what its matmuls read per weight
    prompt: list[int]
    config: Any  # the model's ModelConfig


def contenders(path: Path, n: int) -> Contenders:
    """Every contender, built from one read of the file."""
    from ..chat import chat_prompt
    from ..gguf import model_from_gguf, read_gguf
    from ..gguf_tokenizer import tokenizer_from_metadata
    from ..hf_export import to_hf
    from .decode import _quiet_transformers, hf_generate_fn

    f = read_gguf(path)  # read once; three models from it
    tok = tokenizer_from_metadata(f.metadata)
    prompt = tok.encode(chat_prompt(tok, PROMPT))
    ours = {"ours fp32": model_from_gguf(f, torch.float32),
            "ours bf16": model_from_gguf(f, torch.bfloat16),
            "ours Q4_1 kept": model_from_gguf(f, torch.float32, keep_quantized=True)}
    hf32 = to_hf(ours["ours fp32"])
    hf16 = to_hf(ours["ours fp32"]).to(torch.bfloat16)
    calls = {name: (lambda m=m: generate(m, [prompt], n, GREEDY, eos_id=None)[0])
             for name, m in ours.items()}
    for name, hf in (("transformers fp32", hf32), ("transformers bf16", hf16)):
        call = hf_generate_fn(hf, prompt, n)

        def quiet(call=call) -> list[int]:
            with _quiet_transformers():
                return call()
        calls[name] = quiet
    bpp = {name: stored_bytes_per_param(m) for name, m in ours.items()}
    bpp |= {"transformers fp32": 4.0, "transformers bf16": 2.0}
    lcpp = llama_cpp_call(path, prompt, n, torch.get_num_threads())
    if lcpp is not None:
        calls["llama.cpp"] = lcpp
        bpp["llama.cpp"] = bpp["ours Q4_1 kept"]  # the same blocks
    return Contenders(calls, bpp, prompt, ours["ours fp32"].config)


def bench_smollm2(n: int, repeats: int, warmup: int, hw: HardwareSpec,
                  progress=None) -> dict[str, Any] | None:
    """tokens/s, bytes/s and the fraction of the roofline of every contender; None when
    the model is not installed."""
    from .decode import matching_prefix  # decode imports this module

    path = gguf_path()
    if path is None:
        return None
    c = contenders(path, n)
    calls, bpp, prompt = c.calls, c.bytes_per_weight, c.prompt
    outputs: dict[str, list[int]] = {}

    def keep(name: str, fn: Callable[[], list[int]]) -> Callable[[], None]:
        return lambda: outputs.__setitem__(name, fn())

    if progress is not None:
        progress.total += len(calls) * (warmup + repeats)
    times = interleaved_times({k: keep(k, fn) for k, fn in calls.items()}, repeats, warmup,
                              None, progress)
    context = len(prompt) + n // 2  # the mean context of a decode step
    rows = {}
    for name, t in times.items():
        tps = n / median(t)
        r = roofline(c.config, 1, context, bpp[name], hw=hw, compute_dtype="fp32"
                     if "bf16" not in name else "bf16")
        rows[name] = {"tokens_per_s": tps, "ms_per_token": 1e3 / tps,
                      "bytes_per_weight": bpp[name],
                      "achieved_gbs": r.achieved_bandwidth_gbs(tps),
                      "bandwidth_fraction": r.achieved_bandwidth_gbs(tps) / hw.mem_bandwidth_gbs,
                      "greedy_tokens_agree_with_ours_fp32": matching_prefix(
                          outputs[name], outputs["ours fp32"])}
    best_ours = max((r for k, r in rows.items() if k.startswith("ours")),
                    key=lambda r: r["tokens_per_s"])
    ratios = {"ours_vs_hf_smollm2": rows["ours fp32"]["tokens_per_s"]
              / rows["transformers fp32"]["tokens_per_s"],
              "smollm2_bandwidth_fraction": best_ours["bandwidth_fraction"]}
    if "llama.cpp" in rows:
        ratios["ours_vs_llamacpp_smollm2"] = (best_ours["tokens_per_s"]
                                              / rows["llama.cpp"]["tokens_per_s"])
    return {"file": str(path), "prompt_tokens": len(prompt), "new_tokens": n,
            "rows": rows, "ratios": ratios, "timings": times}


def report(r: dict[str, Any]) -> list[str]:
    """Lines of the SmolLM2 table."""
    from . import format_table

    rows = [[name, x["tokens_per_s"], x["ms_per_token"], f"{x['bytes_per_weight']:.3g}",
             f"{x['achieved_gbs']:.2f} GB/s ({x['bandwidth_fraction']:.0%})",
             f"{x['greedy_tokens_agree_with_ours_fp32']}/{r['new_tokens']}"]
            for name, x in r["rows"].items()]
    lines = [(f"{NAME} ({Path(r['file']).name}), {r['prompt_tokens']}-token chat prompt, "
              f"{r['new_tokens']} new tokens:"),
             format_table(rows, ["run", "tokens/s", "ms/token", "bytes/weight",
                                 "bytes read/s (of bandwidth)", "tokens = ours fp32"])]
    lines += [f"{k}: {v:.2f}" for k, v in r["ratios"].items()]
    return lines
