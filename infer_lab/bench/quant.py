"""Weight quantization: bytes, bits per weight, perplexity, exact match and decode speed.

Every scheme runs on the same weights: ``code-m`` (the zoo model: quality and speed) and
a GPT-2-124M-shaped model with random weights (bytes and speed only; random weights have
no quality to lose). Rows come from four families:

* ours, round-to-nearest (RTN): :data:`~infer_lab.quant.apply.SCHEMES` (int8 / int4 at
  several granularities), NF4, FP8 e4m3, GGUF Q8_0 / Q4_K / a Q4_K_M-style mix. These
  dequantize then multiply: they show the bytes saved, not a fused kernel's speed.
* calibrated 4-bit: GPTQ and AWQ at the RTN group size.
* PyTorch's dynamic int8 (``quantize_dynamic``): int8 weights *and* int8 activations,
  multiplied by the fbgemm int8 GEMM, the one int8 path here with a real int8 kernel.
* bitsandbytes ``Linear8bitLt`` (LLM.int8()) and ``Linear4bit`` NF4, built from the
  same weights, when bitsandbytes runs on this machine.

The tied ``lm_head`` stays in fp32 everywhere (a quantized copy would add bytes). The
share of RTN's 4-bit perplexity gap a calibrated method recovers is

    gap_recovered = (PPL_rtn - PPL_method) / (PPL_rtn - PPL_fp32)     (same group size)

The schemes themselves are built by :mod:`infer_lab.quant.catalog`. Decode tokens/s counts new tokens over the whole call (prefill included), greedy, batch
1, fp32 activations; contenders alternate (:func:`~infer_lab.bench.interleaved_times`).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..config import get_config
from ..generate import GREEDY, generate
from ..model import Transformer
from ..quant.catalog import METHODS, build_all, eligible, linear_bits_per_weight, stored_bytes
from . import format_table, interleaved_times, median


@dataclass(frozen=True)
class QuantBenchConfig:
    ppl_tokens: int = 16384  # held-out tokens scored for perplexity
    seq_len: int = 256
    em_samples: int = 50  # next-line exact match samples
    em_line_tokens: int = 48
    em_context_chars: int = 2000  # file text before each target line
    new_tokens: int = 64  # decode, code-m
    gpt2_new_tokens: int = 32  # decode, GPT-2 shape (fp32 runs at a few tokens/s on CPU)
    prompt_tokens: int = 16
    repeats: int = 3
    # 3, not 2: a median of 2 is their mean, which one slowed run drags along; the third
    # costs about 40 s here (the slow dequantizing rows run at 4-15 tokens/s).
    gpt2_repeats: int = 3
    calib_seqs: int = 16  # GPTQ / AWQ calibration windows of calib_len training tokens
    calib_len: int = 256
    group_size: int = 64  # RTN, GPTQ and AWQ 4-bit compared at this group size
    awq_grid: int = 20  # alpha values AWQ's scale search tries per layer
    awq_sample: int = 1024  # token inputs per layer that score each alpha
    seed: int = 0


FULL = QuantBenchConfig()
QUICK = QuantBenchConfig(ppl_tokens=256, seq_len=64, em_samples=4, em_line_tokens=8,
                         em_context_chars=200, new_tokens=4, gpt2_new_tokens=4,
                         prompt_tokens=4, repeats=1, gpt2_repeats=1, calib_seqs=2,
                         calib_len=32, awq_grid=4, awq_sample=64)
# --quick: random weights, each model's block style, a few hundred thousand parameters;
# d_model 256 so every format (Q4_K's 256-weight super-blocks included) applies.
TINY = {"n_layer": 2, "d_model": 256, "n_head": 4, "d_ff": 512, "max_seq_len": 128}


def decode_speeds(models: dict[str, nn.Module], n: int, repeats: int, prompt: list[int],
                  progress=None) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """tokens/s of each model, runs alternated across all of them; and the seconds of
    each timed call, for the spread check of :mod:`infer_lab.bench.load`."""
    with torch.inference_mode():
        for m in models.values():  # warm-up on a few tokens: one-off costs do not scale
            generate(m, [prompt], min(n, 4), GREEDY, eos_id=None)
        fns = {k: (lambda m=m: generate(m, [prompt], n, GREEDY, eos_id=None))
               for k, m in models.items()}
        times = interleaved_times(fns, repeats, 0, "cpu", progress)
    return {k: {"tokens_per_s": n / median(t), "best_tokens_per_s": n / min(t)}
            for k, t in times.items()}, times


def quality(model: nn.Module, ctx: dict, cfg: QuantBenchConfig) -> dict[str, float]:
    """Perplexity of the held-out token ids (encoded once) and next-line exact match."""
    from ..quality import next_line_exact_match, perplexity

    with torch.inference_mode():
        p = perplexity(model, ctx["ppl_ids"], seq_len=cfg.seq_len, progress=False)
        em = next_line_exact_match(model, ctx["tok"], ctx["text"], cfg.em_samples, cfg.seed,
                                   max_line_tokens=cfg.em_line_tokens,
                                   context_chars=cfg.em_context_chars, progress=False)
    return {"ppl": p.ppl, "ppl_tokens": p.n_tokens,
            "exact_match": em.score, "exact_match_n": em.n}


def bench_model(fp: nn.Module, ctx: dict, cfg: QuantBenchConfig, with_quality: bool,
                n: int, repeats: int, bar
                ) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """Every scheme's row on ``fp``, and the seconds of each scheme's timed decodes."""
    built = build_all(fp, ctx, bar)
    ready = {k: m for k, m in built.items() if isinstance(m, nn.Module)}
    names = list(eligible(fp))
    rows: dict[str, dict[str, Any]] = {}
    for k, m in built.items():
        if isinstance(m, str):
            rows[k] = {"available": False, "reason": m}
            continue
        rows[k] = {"available": True, "weight_bytes": stored_bytes(m),
                   "bits_per_weight": linear_bits_per_weight(m, names)}
        if with_quality:
            rows[k].update(quality(m, ctx, cfg))
            _tick(bar)
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randint(fp.config.vocab_size, (cfg.prompt_tokens,), generator=gen).tolist()
    speeds, times = decode_speeds(ready, n, repeats, prompt, bar)
    for k, r in speeds.items():
        rows[k].update(r, new_tokens=n)
    return rows, times


def _tick(progress, k: int = 1) -> None:
    if progress is not None:
        progress.update(k)


def build_models(quick: bool) -> tuple[Transformer, Transformer, Any, str]:
    """code-m (zoo weights when shipped), the GPT-2 shape, the tokenizer, code-m's source."""
    from ..zoo import load_zoo

    if quick:
        from ..zoo import load_tokenizer

        tok = load_tokenizer()
        code_m = Transformer(get_config("code-m", **TINY, n_kv_head=2,
                                       vocab_size=tok.vocab_size))
        source = "random (tiny code-m shape, --quick)"
    else:
        code_m, tok = load_zoo("code-m")
        source = "zoo weights"
    gpt2 = Transformer(get_config("gpt2", **TINY, n_kv_head=4, vocab_size=512) if quick
                       else get_config("gpt2"))
    return code_m.float().eval(), gpt2.float().eval(), tok, source


# -- run and report -----------------------------------------------------------------------
def ratios_of(code_m: dict, gpt2: dict) -> tuple[dict[str, float | None], dict[str, str]]:
    """The headline ratios, and a note for each: what it compares, or why it is null."""
    ratios: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    fp = code_m["fp32"]["ppl"]
    int8 = code_m["int8"]
    ratios["int8_ppl_increase"] = (int8["ppl"] - fp) / fp if int8["available"] else None
    notes["int8_ppl_increase"] = "(PPL_int8 - PPL_fp32) / PPL_fp32, int8 per-channel RTN"
    rtn4 = code_m["int4-g64"]
    gap = rtn4["ppl"] - fp if rtn4["available"] else float("nan")
    for key, name in (("gptq4_gap_recovered", "gptq int4-g64"),
                      ("awq4_gap_recovered", "awq int4-g64")):
        r = code_m[name]
        if not r["available"]:
            ratios[key], notes[key] = None, f"{name}: {r['reason']}"
        elif not gap > 0:
            ratios[key], notes[key] = None, "RTN int4-g64 has no perplexity gap to recover"
        else:
            ratios[key] = (rtn4["ppl"] - r["ppl"]) / gap
            notes[key] = f"(PPL_rtn - PPL_{name.split()[0]}) / (PPL_rtn - PPL_fp32), g64"
    speeds = {m.name: gpt2[m.name]["tokens_per_s"] for m in METHODS
              if m.int8 and gpt2[m.name]["available"]}
    if speeds:
        best = max(speeds, key=speeds.get)
        ratios["int8_speed_vs_fp32_gpt2"] = speeds[best] / gpt2["fp32"]["tokens_per_s"]
        notes["int8_speed_vs_fp32_gpt2"] = f"fastest int8 path: {best}"
        notes["int8_speed_vs_fp32_gpt2_path"] = best
    else:
        ratios["int8_speed_vs_fp32_gpt2"] = None
        notes["int8_speed_vs_fp32_gpt2"] = "no int8 path ran"
    return ratios, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ppl-tokens", type=int, default=None,
                        help=f"held-out tokens for perplexity ({FULL.ppl_tokens})")
    parser.add_argument("--em-samples", type=int, default=None,
                        help=f"next-line exact match samples ({FULL.em_samples})")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help=f"decode tokens per call on code-m ({FULL.new_tokens})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ..quality import heldout_ids
    from ..zoo.data import held_out_text

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    base = QUICK if args.quick else FULL
    over = {k: v for k, v in (("ppl_tokens", args.ppl_tokens),
                              ("em_samples", args.em_samples),
                              ("new_tokens", args.new_tokens)) if v}
    cfg = QuantBenchConfig(**{**asdict(base), **over})
    torch.manual_seed(cfg.seed)
    code_m, gpt2, tok, source = build_models(args.quick)
    text = held_out_text()
    calib = None
    try:
        from ..quant.calibrate import calibration_ids

        calib = calibration_ids(tok, cfg.calib_seqs, cfg.calib_len, cfg.seed)
    except (ImportError, ValueError) as e:
        print(f"no calibration ids ({e}); GPTQ/AWQ rows skipped")
    # Encoded once for every row: EOS first, as the zoo was trained, then the text.
    ppl_ids = heldout_ids(tok, cfg.ppl_tokens)
    ctx = {"tok": tok, "text": text, "ppl_ids": ppl_ids, "calib_ids": calib,
           "group_size": cfg.group_size,
           "options": {"grid": cfg.awq_grid, "n_sample": cfg.awq_sample}}

    # bitsandbytes logs on every int8 matmul that fp32 inputs are cast to fp16.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    n = len(METHODS)
    steps = (2 * n + n + n * (cfg.repeats + 1) + n * (cfg.gpt2_repeats + 1))
    with tqdm(total=steps, desc="quant bench") as bar:
        res_m, times_m = bench_model(code_m, ctx, cfg, True, cfg.new_tokens, cfg.repeats,
                                     bar)
        res_g, times_g = bench_model(gpt2, {**ctx, "calib_ids": None}, cfg, False,
                                     cfg.gpt2_new_tokens, cfg.gpt2_repeats, bar)
    timings = {**{f"code-m {k}": t for k, t in times_m.items()},
               **{f"gpt2 {k}": t for k, t in times_g.items()}}
    ratios, notes = ratios_of(res_m, res_g)
    results = {"code_m": {"weights": source, "n_params": code_m.config.n_params,
                          "methods": res_m},
               "gpt2": {"weights": "random (GPT-2 124M shape)" if not args.quick
                        else "random (tiny GPT-2 shape, --quick)",
                        "n_params": gpt2.config.n_params, "methods": res_g}}
    print(report(results, cfg, ratios, notes))
    return {"settings": {**asdict(cfg), "threads": torch.get_num_threads()},
            "results": results, "ratios": ratios, "ratio_notes": notes, "timings": timings}


def report(results: dict[str, Any], cfg: QuantBenchConfig, ratios: dict[str, float | None],
           notes: dict[str, str]) -> str:
    m, g = results["code_m"]["methods"], results["gpt2"]["methods"]
    fp_m, fp_g = m["fp32"]["weight_bytes"], g["fp32"]["weight_bytes"]
    fp_tps = g["fp32"]["tokens_per_s"]
    rows, missing = [], []
    for method in METHODS:
        a, b = m[method.name], g[method.name]
        if not a["available"]:
            missing.append(f"  {method.name}: {a['reason']}")
            rows.append([method.name, *["n/a"] * 5, *(["n/a"] * 3 if not b["available"]
                                                      else _speed_cells(b, fp_tps))])
            continue
        rows.append([method.name, a["weight_bytes"] / 2**20, a["bits_per_weight"], a["ppl"],
                     f"{a['exact_match']:.0%}", a["tokens_per_s"],
                     *(_speed_cells(b, fp_tps) if b["available"] else ["n/a"] * 3)])
        if not b["available"]:
            missing.append(f"  {method.name} (gpt2): {b['reason']}")
    table = format_table(rows, ["scheme", "code-m MiB", "bits/w", "ppl", "exact match",
                                "tok/s", "gpt2 MiB", "gpt2 tok/s", "vs fp32"])
    head = (f"code-m ({results['code_m']['weights']}): ppl on {m['fp32']['ppl_tokens']} "
            f"held-out tokens, next-line exact match on {m['fp32']['exact_match_n']} "
            f"lines, decode {cfg.new_tokens} tokens; gpt2 ({results['gpt2']['weights']}): "
            f"decode {cfg.gpt2_new_tokens} tokens. Greedy, batch 1, fp32 activations, "
            f"{torch.get_num_threads()} threads, median of {cfg.repeats} / "
            f"{cfg.gpt2_repeats}. bits/w: quantized linears only (codes + scales), "
            f"lm_head tied and fp32. fp32: {fp_m / 2**20:.1f} / {fp_g / 2**20:.1f} MiB. "
            "Widths a group or block does not fit (code-m's d_ff = 704) fall back: "
            "int4-g128 -> g64, Q4_K -> Q8_0.")
    lines = [head, table, ""]
    if missing:
        lines += ["not run:", *missing, ""]
    for k, v in ratios.items():
        lines.append(f"{k}: {'null' if v is None else f'{v:.4g}'}  ({notes[k]})")
    return "\n".join(lines)


def _speed_cells(r: dict[str, Any], fp_tokens_per_s: float) -> list[Any]:
    return [r["weight_bytes"] / 2**20, r["tokens_per_s"],
            f"{r['tokens_per_s'] / fp_tokens_per_s:.2f}x"]
