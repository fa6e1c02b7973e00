"""Decode speed: our cached decode vs transformers' generate, and with vs without a KV cache.

Two comparisons, measured in one run:

1. The same weights in our :class:`~infer_lab.model.Transformer` and in transformers
   (:func:`infer_lab.hf_export.to_hf`), greedy, batch 1, N new tokens, on ``code-m`` and on a
   GPT-2-124M-shaped model with random weights. Fair by construction: same dtype, same
   threads, same prompt, warm-up calls, runs alternated, the median of the repeats.
2. Our decode with and without the KV cache at 512 new tokens on ``code-m``: without
   it, step t runs a full forward over t tokens, O(n^2) work for n tokens in all. The
   two alternate too, median of 3.
3. The real model, SmolLM2-135M from its GGUF file, when its package is installed: ours
   (fp32, bf16, blocks kept) against transformers and llama.cpp (:mod:`.decode_smollm2`).

tokens/s counts new tokens over the whole call (prefill included) for every contender.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..config import get_config
from ..generate import GREEDY, generate
from ..hardware import HardwareSpec, default_device, default_dtype, probe, roofline
from ..model import Transformer
from . import format_table, interleaved_times, median
from .decode_smollm2 import bench_smollm2
from .decode_smollm2 import report as report_smollm2


@dataclass(frozen=True)
class DecodeBenchConfig:
    new_tokens: int = 256  # ours vs transformers
    kv_new_tokens: int = 512  # with vs without the cache
    prompt_tokens: int = 32
    repeats: int = 3
    warmup: int = 1
    # The uncached run is the slow one (~13 s at 512 tokens on 2 cores), but a row timed
    # once cannot show that a busy machine slowed it (0.3x "speedup" seen): 3 repeats,
    # interleaved with the cached run, cost about 30 s more than 1 and keep 512 tokens.
    kv_repeats: int = 3
    seed: int = 0
    smollm2_new_tokens: int = 64  # the real model's rows (0: skip them)


FULL = DecodeBenchConfig()
QUICK = DecodeBenchConfig(new_tokens=8, kv_new_tokens=24, prompt_tokens=8, repeats=1,
                          kv_repeats=1, smollm2_new_tokens=4)
# --quick keeps each model's block style but shrinks it to a few thousand parameters.
TINY = dict(n_layer=2, d_model=64, n_head=4, d_ff=128, vocab_size=512, max_seq_len=128)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new-tokens", type=int, default=None,
                        help=f"tokens per call, ours vs transformers ({FULL.new_tokens})")
    parser.add_argument("--kv-new-tokens", type=int, default=None,
                        help=f"tokens per call, with vs without cache ({FULL.kv_new_tokens})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per contender ({FULL.repeats})")
    parser.add_argument("--kv-repeats", type=int, default=None,
                        help=f"timed calls per contender, with vs without cache "
                             f"({FULL.kv_repeats})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--smollm2-new-tokens", type=int, default=None,
                        help=f"tokens per call on SmolLM2-135M ({FULL.smollm2_new_tokens}; "
                             "0 skips the real model)")


def build_models(quick: bool, device: torch.device, dtype: torch.dtype
                 ) -> dict[str, tuple[Transformer, str]]:
    """name -> (model, where its weights come from). code-m is the zoo model when shipped."""
    out = {}
    if quick:
        cfg = get_config("code-m", n_kv_head=2, **TINY)
        out["code_m"] = (Transformer(cfg), "random (tiny code-m shape, --quick)")
    else:
        try:
            from ..zoo import load_zoo

            out["code_m"] = (load_zoo("code-m")[0], "zoo weights")
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            print(f"code-m zoo weights not available ({e}); using random weights")
            out["code_m"] = (Transformer(get_config("code-m")), "random (zoo weights missing)")
    gpt2 = get_config("gpt2", n_kv_head=4, **TINY) if quick else get_config("gpt2")
    out["gpt2"] = (Transformer(gpt2), "random (GPT-2 124M shape)" if not quick
                   else "random (tiny GPT-2 shape, --quick)")
    return {k: (m.to(device=device, dtype=dtype).eval(), src) for k, (m, src) in out.items()}


def hf_generate_fn(hf_model, prompt: list[int], n: int):
    """transformers' generate: greedy, cached, exactly n new tokens (EOS cannot stop it)."""
    x = torch.tensor([prompt], device=hf_model.device)
    mask = torch.ones_like(x)

    def call() -> list[int]:
        out = hf_model.generate(input_ids=x, attention_mask=mask, do_sample=False,
                                max_new_tokens=n, min_new_tokens=n, use_cache=True,
                                eos_token_id=None, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    return call


def matching_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy outputs share (fp rounding may flip a near-tie)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' per-call generation notices, restoring the level after."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def bench_vs_hf(model: Transformer, cfg: DecodeBenchConfig, prompt: list[int],
                progress=None) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """tokens/s of our generate and of transformers' on the same weights and prompt,
    and the seconds of each timed call."""
    from ..hf_export import to_hf

    hf_model = to_hf(model)
    n = cfg.new_tokens
    outputs: dict[str, list[int]] = {}
    hf_call = hf_generate_fn(hf_model, prompt, n)

    def ours() -> None:
        outputs["ours"] = generate(model, [prompt], n, GREEDY, eos_id=None)[0]

    def hf() -> None:
        outputs["hf"] = hf_call()

    with _quiet_transformers():
        times = interleaved_times({"ours": ours, "hf": hf}, cfg.repeats, cfg.warmup,
                                  model.device, progress)
    del hf_model
    ours_tps, hf_tps = n / median(times["ours"]), n / median(times["hf"])
    # On a shared machine other work only ever adds time, so the best run is a second,
    # less noisy view of the same comparison.
    best = n / min(times["ours"]) / (n / min(times["hf"]))
    return {"ours_tokens_per_s": ours_tps, "hf_tokens_per_s": hf_tps,
            "ours_ms_per_token": 1e3 / ours_tps, "hf_ms_per_token": 1e3 / hf_tps,
            "ratio": ours_tps / hf_tps, "ratio_of_best_runs": best,
            "greedy_tokens_agree": matching_prefix(outputs["ours"], outputs["hf"]),
            "new_tokens": n}, times


def bench_kv_cache(model: Transformer, cfg: DecodeBenchConfig, prompt: list[int],
                   progress=None) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """tokens/s of our decode with and without the KV cache, and the seconds of each
    timed call (the two alternate: with, without, with, ...)."""
    n = cfg.kv_new_tokens
    fns = {"with_cache": lambda: generate(model, [prompt], n, eos_id=None),
           "without_cache": lambda: generate(model, [prompt], n, eos_id=None,
                                             use_cache=False)}
    # Warm up on a few tokens: one-off costs do not grow with n, and a full uncached
    # warm-up run would double the slowest part of the bench.
    for use_cache in (True, False):
        generate(model, [prompt], min(n, 8), eos_id=None, use_cache=use_cache)
    times = interleaved_times(fns, cfg.kv_repeats, 0, model.device, progress)
    w, wo = n / median(times["with_cache"]), n / median(times["without_cache"])
    return {"with_cache_tokens_per_s": w, "without_cache_tokens_per_s": wo,
            "speedup": w / wo, "new_tokens": n}, times


def roofline_note(model: Transformer, tokens_per_s: float, context: int,
                  hw: HardwareSpec) -> dict[str, float]:
    """GB/s of weights + KV read that a decode speed implies, vs the roofline of ``hw``."""
    r = roofline(model.config, 1, context, model.dtype.itemsize, hw=hw,
                 compute_dtype=model.dtype)
    return {"achieved_gbs": r.achieved_bandwidth_gbs(tokens_per_s),
            "roofline_tokens_per_s": r.max_tokens_per_s,
            "fraction_of_roofline": r.achieved(tokens_per_s), "bound": r.bound}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    base = QUICK if args.quick else FULL
    cfg = DecodeBenchConfig(
        new_tokens=args.new_tokens or base.new_tokens,
        kv_new_tokens=args.kv_new_tokens or base.kv_new_tokens,
        prompt_tokens=base.prompt_tokens, repeats=args.repeats or base.repeats,
        warmup=base.warmup, kv_repeats=args.kv_repeats or base.kv_repeats, seed=base.seed,
        smollm2_new_tokens=base.smollm2_new_tokens if args.smollm2_new_tokens is None
        else args.smollm2_new_tokens)
    device = default_device()
    dtype = default_dtype(device)  # fp32 on CPU; both implementations get the same
    torch.manual_seed(cfg.seed)  # random weights are the same run to run
    models = build_models(args.quick, device, dtype)
    hw = probe(device, (dtype,), bandwidth_mb=16 if args.quick else 256,
               matmul_n=128 if args.quick else None, repeats=2 if args.quick else 5)

    steps = 2 * (len(models) * (cfg.warmup + cfg.repeats) + cfg.kv_repeats)
    results: dict[str, Any] = {}
    timings: dict[str, list[float]] = {}  # table row -> seconds of each repeat
    with tqdm(total=steps, desc="decode bench") as bar:
        for name, (model, source) in models.items():
            gen = torch.Generator().manual_seed(cfg.seed)
            prompt = torch.randint(model.config.vocab_size, (cfg.prompt_tokens,),
                                   generator=gen).tolist()
            r, times = bench_vs_hf(model, cfg, prompt, bar)
            timings[f"{name} ours"], timings[f"{name} transformers"] = times["ours"], times["hf"]
            context = cfg.prompt_tokens + cfg.new_tokens // 2  # mean context of a step
            results[name] = {"weights": source, "n_params": model.config.n_params,
                             **r, **roofline_note(model, r["ours_tokens_per_s"], context,
                                                  hw)}
        model = models["code_m"][0]
        prompt = torch.randint(model.config.vocab_size, (cfg.prompt_tokens,),
                               generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        results["kv_cache_code_m"], times = bench_kv_cache(model, cfg, prompt, bar)
        timings["code_m with KV cache"] = times["with_cache"]
        timings["code_m without cache"] = times["without_cache"]
        real = (bench_smollm2(cfg.smollm2_new_tokens, cfg.repeats, cfg.warmup, hw, bar)
                if cfg.smollm2_new_tokens > 0 else None)

    ratios = {"ours_vs_hf_code_m": results["code_m"]["ratio"],
              "ours_vs_hf_gpt2": results["gpt2"]["ratio"],
              "kv_cache_speedup_512": results["kv_cache_code_m"]["speedup"]}
    print(report(results, cfg, dtype, hw))
    if real is not None:
        timings |= {f"smollm2 {k}": v for k, v in real.pop("timings").items()}
        results["smollm2"] = real
        ratios |= real["ratios"]
        print("\n" + "\n".join(report_smollm2(real)))
    return {"settings": {**asdict(cfg), "dtype": str(dtype), "device": str(device),
                         "threads": torch.get_num_threads()},
            "hardware": asdict(hw),
            "results": results, "ratios": ratios, "timings": timings}


def report(results: dict[str, Any], cfg: DecodeBenchConfig, dtype: torch.dtype,
           hw: HardwareSpec) -> str:
    rows = []
    for name in ("code_m", "gpt2"):
        r = results[name]
        rows.append([f"{name} ours", r["ours_tokens_per_s"], r["ours_ms_per_token"],
                     f"{r['achieved_gbs']:.1f} GB/s ({r['fraction_of_roofline']:.0%})"])
        rows.append([f"{name} transformers", r["hf_tokens_per_s"], r["hf_ms_per_token"], ""])
    kv = results["kv_cache_code_m"]
    rows.append(["code_m with KV cache", kv["with_cache_tokens_per_s"],
                 1e3 / kv["with_cache_tokens_per_s"], ""])
    rows.append(["code_m without cache", kv["without_cache_tokens_per_s"],
                 1e3 / kv["without_cache_tokens_per_s"], ""])
    table = format_table(rows, ["run", "tokens/s", "ms/token",
                                "bytes read/s (of roofline)"])
    head = (f"greedy, batch 1, {str(dtype).removeprefix('torch.')}, "
            f"{torch.get_num_threads()} threads; median of {cfg.repeats} (KV: "
            f"{cfg.kv_repeats}); {hw.name}: measured {hw.mem_bandwidth_gbs:.1f} GB/s copy "
            "bandwidth")
    lines = [head, table, ""]
    for name in ("code_m", "gpt2"):
        r = results[name]
        lines.append(f"ours / transformers, {name} ({r['weights']}): {r['ratio']:.2f}x "
                     f"(best runs {r['ratio_of_best_runs']:.2f}x); greedy outputs agree on "
                     f"{r['greedy_tokens_agree']}/{r['new_tokens']} tokens")
    lines.append(f"KV cache speedup at {cfg.kv_new_tokens} new tokens: {kv['speedup']:.1f}x")
    return "\n".join(lines)
