"""``python -m infer_lab.bench runtimes``: one model, every way we can run its decode.

Per model (code-m, the GPT-2 shape with random weights, SmolLM2-135M when installed),
greedy, batch 1, the same torch threads, runs alternated and the median kept:

* eager fp32 / bf16 — our Transformer as it is;
* compiled — :class:`~infer_lab.runtimes.compiled.CompiledDecoder` (static cache, one
  graph; inductor's C++ on a CPU, CUDA graphs on a GPU);
* AOT package — the same compiled step built ahead of time into an AOTInductor package
  (:mod:`infer_lab.runtimes.aot`); its cold start is loading the package, not compiling;
* ONNX Runtime — :mod:`infer_lab.runtimes.onnx_export`, ORT owning the KV loop;
* fused int8 / int4 — weight-only layers that multiply packed codes through PyTorch's
  packed CPU kernels, tied embedding and head quantized too (:mod:`infer_lab.quant.packed`);
* compiled int4 — the fused int4 model's decode step compiled (the packed kernel stays a
  library call; the compiler fuses what lies between: norms, RoPE, attention, casts);
* llama.cpp — SmolLM2's GGUF file through ``llama-cpp-python``, when installed.

Each row: tokens/s, ms/token, the bytes its weights read per token over the measured
copy bandwidth (its fraction of the roofline), its cold start (load or quantize, plus
compile or export: the seconds before its first token), and how many of its greedy tokens
equal eager fp32's. ``continuous_vs_static`` comes from a ``bench serving --json`` file
(``--serving-json``), not rerun here (5 minutes).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..generate import generate
from ..hardware import HardwareSpec, probe, roofline
from . import format_table, interleaved_times, median

MODELS = ("code-m", "gpt2", "smollm2")
# Weight-only layers on PyTorch's packed CPU kernels (quant/packed.py), the tied
# embedding and head quantized too: the bench's "fused int8" / "fused int4" rows.
FUSED = {"fused int8": "int8-packed+head", "fused int4": "int4-g64-packed+head"}
# A compiled row must give the greedy tokens of the eager model it compiled.
EAGER_TWIN = {"compiled": "eager fp32", "compiled int4": "fused int4",
              "aot package": "eager fp32"}
KINDS = ("eager fp32", "eager bf16", *FUSED, "compiled", "compiled int4", "aot package",
         "onnxruntime", "llama.cpp")


@dataclass
class Contender:
    call: Callable[[], list[int]]  # decode n greedy tokens after the prompt
    bytes_per_weight: float
    cold_start_s: float  # seconds before it could decode: load, compile, export


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    p.add_argument("--skip", nargs="*", default=[], choices=KINDS, help="contenders to leave out")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens per call (64)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (3)")
    p.add_argument("--serving-json", type=Path, default=None,
                   help="a `bench serving --json` file: its continuous_vs_static ratio")


def load_model(name: str, quick: bool):
    """(model, prompt ids, seconds it took to load)."""
    import infer_lab

    from ..config import get_config
    from ..model import Transformer

    t0 = time.perf_counter()
    if name == "code-m":
        model, tok = infer_lab.load("code-m")
        prompt = tok.encode("def read_config(path):\n    \"\"\"Read a JSON config file.\"\"\"\n")
    elif name == "gpt2":  # the shape only: random weights (no download, same speed)
        torch.manual_seed(0)
        tiny = dict(n_layer=2, d_model=64, n_head=4, n_kv_head=4, d_ff=128, vocab_size=512,
                    max_seq_len=128) if quick else {}
        model = Transformer(get_config("gpt2", **tiny)).eval()
        prompt = torch.randint(0, model.config.vocab_size, (32,)).tolist()
    else:
        from ..chat import chat_prompt
        from .decode_smollm2 import PROMPT

        model, tok = infer_lab.load("smollm2-135m")
        prompt = tok.encode(chat_prompt(tok, PROMPT))
    return model, prompt, time.perf_counter() - t0


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def contenders(name: str, model, prompt: list[int], n: int, loaded_s: float, skip: list[str],
               workdir: Path) -> dict[str, Contender]:
    """Every contender for one model; each one's cold start is measured as it is built."""
    out: dict[str, Contender] = {}
    eager = lambda m: (lambda: generate(m, [prompt], n, eos_id=None)[0])

    def compiled(kind: str, m, per_weight: float, built_s: float) -> Contender:
        from ..runtimes.compiled import CompiledDecoder

        dec = CompiledDecoder(m, 1, len(prompt) + n)
        _, s = _timed(lambda: dec.generate([prompt], n))  # the first call compiles
        note = "" if dec.compiled else f" (fell back to eager: {dec.fallback_reason})"
        print(f"{name} {kind}: {s:.1f} s cold, {dec.graphs} graph(s){note}")
        return Contender(lambda: dec.generate([prompt], n)[0], per_weight, built_s + s)

    if "eager fp32" not in skip:
        out["eager fp32"] = Contender(eager(model), 4.0, loaded_s)
    if "eager bf16" not in skip:
        bf16, s = _timed(lambda: copy.deepcopy(model).to(torch.bfloat16))
        out["eager bf16"] = Contender(eager(bf16), 2.0, loaded_s + s)
    for kind, scheme in FUSED.items():
        if kind in skip:
            continue
        from ..hardware import matmul_params
        from .packed_decode import build, bytes_per_token

        (q, notes), s = _timed(lambda scheme=scheme: build(model, scheme))
        for note in notes:
            print(f"{name} {kind}: {note}")
        per_weight = bytes_per_token(q, 0) / matmul_params(model.config)
        out[kind] = Contender(eager(q), per_weight, loaded_s + s)
        if kind == "fused int4" and "compiled int4" not in skip:
            out["compiled int4"] = compiled("compiled int4", q, per_weight, loaded_s + s)
    if "compiled" not in skip:
        out["compiled"] = compiled("compiled", model, 4.0, loaded_s)
    if "aot package" not in skip:
        from ..runtimes.aot import PackagedDecoder, package_step

        path = workdir / f"{name}-step.pt2"
        built = package_step(model, 1, len(prompt) + n, path)
        dec = PackagedDecoder(model, path)
        print(f"{name} aot package: built in {built:.1f} s (once, ahead of time), "
              f"loaded in {dec.load_seconds:.2f} s")
        out["aot package"] = Contender(lambda: dec.generate([prompt], n)[0], 4.0,
                                       loaded_s + dec.load_seconds)
    if "onnxruntime" not in skip:
        from ..runtimes.onnx_export import OrtDecoder, export

        def build():
            path = export(model, workdir / f"{name}.onnx")
            return OrtDecoder(path, model.config, threads=torch.get_num_threads())

        try:
            ort, s = _timed(build)
            out["onnxruntime"] = Contender(lambda: ort.generate(prompt, n), 4.0, loaded_s + s)
        except ImportError as e:
            print(f"{name} onnxruntime row skipped: {e}")
    if name == "smollm2" and "llama.cpp" not in skip:
        from .decode_smollm2 import gguf_path, llama_cpp_call

        path = gguf_path()
        call, s = _timed(lambda: path and llama_cpp_call(path, prompt, n,
                                                         torch.get_num_threads()))
        if call is not None:
            out["llama.cpp"] = Contender(call, 0.717, s)  # Q4_1 blocks: 0.717 bytes/weight
    return out


def measure(name: str, quick: bool, n: int, repeats: int, skip: list[str], hw: HardwareSpec,
            workdir: Path) -> dict[str, Any]:
    from .decode import matching_prefix

    model, prompt, loaded_s = load_model(name, quick)
    cs = contenders(name, model, prompt, n, loaded_s, skip, workdir)
    outputs: dict[str, list[int]] = {}
    keep = lambda k, c: (lambda: outputs.__setitem__(k, c.call()))
    times = interleaved_times({k: keep(k, c) for k, c in cs.items()}, repeats, warmup=1)
    ref = outputs.get("eager fp32")
    rows = {}
    for k, c in cs.items():
        tps = n / median(times[k])
        r = roofline(model.config, 1, len(prompt) + n // 2, c.bytes_per_weight, hw=hw)
        rows[k] = {"tokens_per_s": tps, "ms_per_token": 1e3 / tps,
                   "bytes_per_weight": c.bytes_per_weight,
                   "achieved_gbs": r.achieved_bandwidth_gbs(tps),
                   "roofline_fraction": r.achieved(tps),
                   "cold_start_s": c.cold_start_s,
                   "tokens_equal_eager_fp32": None if ref is None else matching_prefix(
                       outputs[k], ref)}
        if EAGER_TWIN.get(k) in outputs:
            rows[k]["tokens_equal_eager_twin"] = matching_prefix(outputs[k],
                                                                 outputs[EAGER_TWIN[k]])
    return {"model": name, "prompt_tokens": len(prompt), "new_tokens": n, "rows": rows,
            "timings": {f"{name} {k}": v for k, v in times.items()}}


def ratios(results: dict[str, dict], serving_json: Path | None) -> dict[str, float]:
    out = {}
    tps = {(m, k): r["tokens_per_s"] for m, res in results.items() for k, r in res["rows"].items()}
    pairs = {"aot_vs_eager_code_m": (("code-m", "aot package"), ("code-m", "eager fp32")),
             "compile_speedup_code_m": (("code-m", "compiled"), ("code-m", "eager fp32")),
             "compile_speedup_smollm2": (("smollm2", "compiled"), ("smollm2", "eager fp32")),
             "ort_vs_eager_code_m": (("code-m", "onnxruntime"), ("code-m", "eager fp32"))}
    for key, (a, b) in pairs.items():
        if a in tps and b in tps:
            out[key] = tps[a] / tps[b]
    for bits in ("int8", "int4"):
        for m in ("smollm2", "gpt2", "code-m"):
            if (m, f"fused {bits}") in tps and (m, "eager fp32") in tps:
                out[f"{bits}_fused_vs_fp32_{m.replace('-', '_')}"] = (
                    tps[(m, f"fused {bits}")] / tps[(m, "eager fp32")])
    if ("smollm2", "compiled int4") in tps:
        out["compiled_int4_vs_fp32_smollm2"] = (tps[("smollm2", "compiled int4")]
                                                / tps[("smollm2", "eager fp32")])
    ours = [v for (m, k), v in tps.items() if m == "smollm2" and k != "llama.cpp"]
    if ours and ("smollm2", "llama.cpp") in tps:
        out["ours_vs_llamacpp_smollm2"] = max(ours) / tps[("smollm2", "llama.cpp")]
    if serving_json is not None:
        out["continuous_vs_static"] = json.loads(serving_json.read_text())["ratios"][
            "continuous_vs_static"]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.new_tokens or (4 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    models = [m for m in args.models if not (args.quick and m == "smollm2")]
    hw = probe(bandwidth_mb=64 if args.quick else 256, repeats=3)
    results = {}
    with tempfile.TemporaryDirectory(prefix="infer-lab-onnx-") as tmp:
        for m in models:
            results[m] = measure(m, args.quick, n, repeats, args.skip, hw, Path(tmp))
    table = [[m, k, r["tokens_per_s"], r["ms_per_token"], f"{r['bytes_per_weight']:.3g}",
              f"{r['achieved_gbs']:.2f} ({r['roofline_fraction']:.0%})", r["cold_start_s"],
              "-" if r["tokens_equal_eager_fp32"] is None else
              f"{r['tokens_equal_eager_fp32']}/{res['new_tokens']}"]
             for m, res in results.items() for k, r in res["rows"].items()]
    print(f"decode, batch 1, greedy, {n} new tokens, {torch.get_num_threads()} threads; "
          f"measured copy bandwidth {hw.mem_bandwidth_gbs:.1f} GB/s")
    print(format_table(table, ["model", "run", "tokens/s", "ms/token", "bytes/weight",
                               "GB/s (of roofline)", "cold start s", "tokens = eager fp32"]))
    out = ratios(results, args.serving_json)
    for k, v in out.items():
        print(f"{k}: {v:.2f}")
    timings = {k: v for res in results.values() for k, v in res["timings"].items()}
    return {"models": results, "ratios": out, "timings": timings,
            "bandwidth_gbs": hw.mem_bandwidth_gbs}
