"""Serving: static vs dynamic vs continuous batching vs transformers, paged KV, prefix cache.

One workload of held-out-code requests (Poisson arrivals; prompt = code up to a ``def``,
output = the real length of that function's body, clipped to 16..512 tokens) through

* StaticBatcher (waits for a full batch of B), DynamicBatcher (takes what is queued,
  up to B) and the continuous-batching Engine (at most B running), all with the same
  maximum batch B, on code-m; greedy, EOS ignored so every run makes the same tokens;
* transformers' ``generate`` one request at a time on the same weights
  (:mod:`.hf_baseline`), on a fixed random subset of the requests (throughput is
  output tokens/s, so it compares).

Reported: throughput, p50/p95 TTFT and TPOT, goodput under a latency objective; the KV
memory the paged pool holds vs what contiguous preallocation at the maximum length
would hold, over the continuous run's steps,

    waste = 1 - sum_steps tokens_stored / sum_steps slots_reserved,

and the TTFT speedup of prefix caching when every request starts with the same long
system prompt. Every row runs ``--repeats`` times (3), the rows alternated, and reports
its median run whole (percentiles of different runs do not average). A benchmark
measures; it never asserts speed.
"""

from __future__ import annotations

import argparse
import math
import random
from typing import Any, NamedTuple

import torch

from . import format_table
from .hf_baseline import hf_sequential, run_sequential

SYSTEM_CHARS = 2400  # the shared system prompt: ~700 tokens of held-out code


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals, requests/s")
    p.add_argument("--batch", type=int, default=32, help="maximum batch, the same for all")
    p.add_argument("--hf-requests", type=int, default=16,
                   help="transformers runs this random subset, one request at a time")
    p.add_argument("--slo-ttft", type=float, default=5.0, help="goodput objective, s")
    p.add_argument("--slo-tpot", type=float, default=0.25, help="goodput objective, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-budget", type=int, default=512,
                   help="continuous batching's tokens per step (static and dynamic batching "
                        "prefill a whole batch in one step, unbudgeted)")
    p.add_argument("--decode-attention", default="best",
                   choices=("best", "blocks", "cpp", "kernel", "auto"),
                   help="how continuous batching's decode reads the paged pool (best: the "
                        "C++ kernel reading blocks in place on a CPU where it builds, the "
                        "Triton kernel on CUDA, else block by block)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of every row, alternated; each row reports its median run "
                        "(3: about three times the ~5.5 min of one pass; 1: no spread check)")


def _waste(kv: list, reserved) -> float:
    stored = sum(u.tokens for u in kv)
    slots = sum(reserved(u) for u in kv)
    return 1 - stored / slots if slots else math.nan


def _row(name: str, s: dict[str, Any]) -> list:
    ms = lambda d, p: 1000 * d[p]
    return [name, s["requests"], s["output_tokens"], s["tokens_per_s"], s["requests_per_s"],
            ms(s["ttft"], "p50"), ms(s["ttft"], "p95"), ms(s["tpot"], "p50"),
            ms(s["tpot"], "p95"), s["e2e"]["p95"], s["goodput"]]


def _median_run(values: list[float]) -> int:
    """Index of the median of ``values`` (the lower one of an even count): the run a row
    reports, whole, since percentiles of different runs do not average."""
    return sorted(range(len(values)), key=values.__getitem__)[(len(values) - 1) // 2]


BLOCK = 16
POLICIES = ("static", "dynamic", "continuous")
HF = "transformers sequential"


def _setup(args: argparse.Namespace):
    """The model, tokenizer, held-out texts, workload and engine config: the same in
    every process, since the workload is drawn from ``args.seed``."""
    import infer_lab

    from ..serving import EngineConfig
    from ..serving.loadgen import make_workload
    from ..zoo.data import iter_files

    q = args.quick
    n, batch = (12, 4) if q else (args.requests, args.batch)
    out_len, chars = ((4, 24), (50, 300)) if q else ((16, 512), (200, 1200))
    model, tok = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
    ctx = model.config.max_seq_len
    texts = [f.text for f in iter_files("valid")]
    work = make_workload(tok, n, args.rate, args.seed, out_len, chars, max_seq_len=ctx,
                         source=texts)
    # Enough blocks that B requests at their longest always fit: no preemption.
    cfg = EngineConfig(block_size=BLOCK, num_blocks=batch * -(-ctx // BLOCK),
                       max_num_seqs=batch, max_num_batched_tokens=args.token_budget,
                       enable_prefix_caching=False,
                       decode_attention=decode_attention(args.decode_attention))
    return model, tok, texts, work, cfg, batch


def decode_attention(choice: str) -> str:
    """``best``: the C++ in-place kernel on a CPU where it builds, else the engine's auto."""
    if choice != "best":
        return choice
    from ..runtimes import paged_cpu

    return "cpp" if not torch.cuda.is_available() and paged_cpu.available() else "auto"


def _run_policy(args: argparse.Namespace, name: str, threads: int):
    """One batching policy over the workload, in a process of its own (see run())."""
    from ..serving import DynamicBatcher, Engine, StaticBatcher
    from ..serving.loadgen import run_engine

    torch.set_num_threads(threads)
    model, _, _, work, cfg, batch = _setup(args)
    make = {"static": lambda: StaticBatcher(model, batch),
            "dynamic": lambda: DynamicBatcher(model, batch),
            "continuous": lambda: Engine(model, cfg)}[name]
    run_engine(make(), [type(r)(0.0, r.prompt[:32], 2) for r in work[:2]])  # warm-up
    eng = make()
    rep = run_engine(eng, work, mode="open", progress=not args.quick)
    return rep, (len(eng.records), sum(r.duration for r in eng.records))


class Prefix(NamedTuple):
    """Prefix caching off / on: median runs (summary, hit rate), TTFT p50 of each run."""

    median: dict[bool, tuple[dict[str, Any], float]]
    timings: dict[str, list[float]]
    requests: int
    system_tokens: int

    def ttft_p50(self, on: bool) -> float:
        return self.median[on][0]["ttft"]["p50"]


def _batching_runs(args: argparse.Namespace, hf, subset: list,
                   repeats: int) -> tuple[dict[str, list], dict[str, list]]:
    """Every run's report, for each row; each policy run's (steps, seconds)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Each policy runs in a fresh process, so none inherits another's heap and threads:
    # back-to-back runs in one process drifted slower here (a continuous decode step
    # 26.9 -> 28.8 ms over four runs, a plain forward 10.6 -> 12.8 ms), which favours
    # whichever policy runs first. The rows alternate over the repeats (static, dynamic,
    # continuous, transformers, static, ...), so a slow minute of a busy host lands on
    # each of them alike, and each row's runs feed the spread check.
    runs: dict[str, list] = {name: [] for name in (*POLICIES, HF)}
    steps_of: dict[str, list] = {name: [] for name in POLICIES}
    spawn = multiprocessing.get_context("spawn")
    for _ in range(repeats):
        for name in POLICIES:
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                rep, st = pool.submit(_run_policy, args, name, torch.get_num_threads()).result()
            runs[name].append(rep)
            steps_of[name].append(st)
        runs[HF].append(run_sequential(hf, subset))
    return runs, steps_of


def _medians(runs: dict[str, list], steps_of: dict[str, list]):
    """Each row's durations, median run and its steps; the KV use per step (continuous)."""
    # Every run of a row makes the same tokens (EOS ignored), so durations compare.
    timings = {name: [r.duration for r in reps] for name, reps in runs.items()}
    pick = {name: _median_run(t) for name, t in timings.items()}
    reports = {name: runs[name][i] for name, i in pick.items()}
    steps = {name: steps_of[name][pick[name]] for name in POLICIES}
    kv = []
    for name in POLICIES:
        kv = reports[name].kv or kv
    return timings, reports, steps, kv


def _prefix_cache(args: argparse.Namespace, model, tok, texts: list[str], cfg, batch: int,
                  rng: random.Random, repeats: int) -> Prefix:
    """TTFT with prefix caching off and on, every request starting with the same long
    system prompt. One request at a time (closed loop, concurrency 1), so TTFT is the
    prefill alone, no queueing."""
    from ..serving import Engine, EngineConfig
    from ..serving.loadgen import make_workload, run_engine

    q = args.quick
    start = rng.randrange(len(texts[0]) // 2)
    system = "".join(texts)[start:start + (400 if q else SYSTEM_CHARS)]
    pwork = make_workload(tok, 4 if q else 12, math.inf, args.seed + 1,
                          (4, 8) if q else (16, 32), (50, 200), shared_prefix=system,
                          max_seq_len=model.config.max_seq_len, source=texts)
    runs: dict[bool, list] = {False: [], True: []}
    for _ in range(repeats):
        for on in (False, True):
            pcfg = EngineConfig(block_size=BLOCK, num_blocks=cfg.num_blocks,
                                max_num_seqs=batch, max_num_batched_tokens=args.token_budget,
                                enable_prefix_caching=on)
            eng = Engine(model, pcfg)
            rep = run_engine(eng, pwork, mode="closed", concurrency=1)
            runs[on].append((rep.summary(), eng.block_manager.prefix_hit_rate))
    median, timings = {}, {}
    for on, label in ((False, "prefix cache off, TTFT p50"), (True, "prefix cache on, TTFT p50")):
        timings[label] = [summary["ttft"]["p50"] for summary, _ in runs[on]]
        median[on] = runs[on][_median_run(timings[label])]
    return Prefix(median, timings, len(pwork), len(tok.encode(system)))


def _kv_waste(kv: list) -> dict[str, float]:
    """Share of reserved KV slots holding no token: paged, contiguous, sized per request."""
    return {"paged": _waste(kv, lambda u: u.blocks_used * u.block_size),
            "contiguous": _waste(kv, lambda u: u.num_running * u.max_seq_len),
            "per_request": _waste(kv, lambda u: u.reserved_tokens)}


RATIOS = {  # name -> what it measures, as printed beside it
    "continuous_vs_static": "continuous / static batching, output tokens/s (aim >= 3)",
    "continuous_vs_dynamic": "continuous / dynamic batching, output tokens/s",
    "continuous_vs_hf_sequential": "continuous / transformers generate one at a time, tok/s",
    "paged_kv_waste": "fraction of paged KV slots holding no token (aim < 0.05)",
    "contiguous_kv_waste": "same, contiguous preallocation at the maximum length",
    "prefix_cache_ttft_speedup": "TTFT p50 without / with prefix caching (aim >= 2)",
}


def _ratios(summaries: dict[str, dict], waste: dict[str, float],
            prefix: Prefix) -> dict[str, float]:
    cont, stat = summaries["continuous"], summaries["static"]
    return {
        "continuous_vs_static": cont["tokens_per_s"] / stat["tokens_per_s"],
        "continuous_vs_dynamic": cont["tokens_per_s"] / summaries["dynamic"]["tokens_per_s"],
        "continuous_vs_hf_sequential": cont["tokens_per_s"] / summaries[HF]["tokens_per_s"],
        "paged_kv_waste": waste["paged"],
        "contiguous_kv_waste": waste["contiguous"],
        "prefix_cache_ttft_speedup": prefix.ttft_p50(False) / prefix.ttft_p50(True),
    }


def _print_runs(args: argparse.Namespace, work: list, batch: int, n_hf: int, repeats: int,
                summaries: dict[str, dict]) -> None:
    """The workload in one line, the goodput objective, and the table of every row."""
    lens, n = [r.max_tokens for r in work], len(work)
    print(f"code-m, {n} requests, Poisson {args.rate:g} req/s, outputs {min(lens)}-{max(lens)} "
          f"tokens (mean {sum(lens) / n:.0f}, from held-out function bodies), max batch "
          f"{batch}, greedy, {torch.get_num_threads()} threads; transformers runs "
          f"{n_hf} random requests of the {n}, one at a time, no queueing; each row: "
          f"the median of {repeats} runs, rows alternated")
    print(f"goodput = requests/s with TTFT <= {args.slo_ttft:g} s and TPOT <= "
          f"{args.slo_tpot:g} s")
    print(format_table([_row(k, s) for k, s in summaries.items()],
                       ["run", "reqs", "out tok", "tok/s", "req/s", "TTFT p50 ms",
                        "TTFT p95 ms", "TPOT p50 ms", "TPOT p95 ms", "e2e p95 s", "goodput"]))


def _print_memory(kv: list, waste: dict[str, float], ctx: int, prefix: Prefix) -> None:
    print(f"KV memory over the continuous run's {len(kv)} steps: paged blocks of {BLOCK} waste "
          f"{waste['paged']:.1%}; contiguous preallocation at max_seq_len={ctx} would waste "
          f"{waste['contiguous']:.1%} (sized to each request's prompt + max_tokens: "
          f"{waste['per_request']:.1%})")
    print(f"prefix caching, {prefix.requests} requests sharing a {prefix.system_tokens}-token "
          f"system prompt: TTFT p50 {1000 * prefix.ttft_p50(False):.0f} ms off -> "
          f"{1000 * prefix.ttft_p50(True):.0f} ms on "
          f"(prefix hit rate {prefix.median[True][1]:.0%})")


def _print_ratios(ratios: dict[str, float], steps: dict[str, tuple[int, float]]) -> None:
    """Each ratio with what it measures, and why continuous batching's ratio is what it is."""
    for name, v in ratios.items():
        print(f"{name}: {v:.3f}   ({RATIOS[name]})")
    (n_s, t_s), (n_c, t_c) = steps["static"], steps["continuous"]
    print(f"why: throughput ratio = step-count ratio x step-cost ratio; static ran {n_s} "
          f"steps at {1000 * t_s / n_s:.1f} ms, continuous {n_c} steps at "
          f"{1000 * t_c / n_c:.1f} ms ({n_s / n_c:.2f} x {t_s / n_s / (t_c / n_c):.2f}); "
          "fewer steps: finished rows leave at once (but no run ends before its longest "
          "request); cheaper steps: continuous decode attention reads each sequence's own "
          "blocks, static's reads every row padded to its batch's longest, finished rows too")


def run(args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    repeats = 1 if q else args.repeats
    model, tok, texts, work, cfg, batch = _setup(args)
    rng = random.Random(args.seed)  # draws the transformers subset, then the system prompt
    hf, subset = hf_sequential(model, work, rng, 2 if q else args.hf_requests)
    runs, steps_of = _batching_runs(args, hf, subset, repeats)
    del hf
    timings, reports, steps, kv = _medians(runs, steps_of)
    prefix = _prefix_cache(args, model, tok, texts, cfg, batch, rng, repeats)
    timings.update(prefix.timings)
    summaries = {k: r.summary(args.slo_ttft, args.slo_tpot) for k, r in reports.items()}
    waste = _kv_waste(kv)
    ratios = _ratios(summaries, waste, prefix)
    print(f"continuous batching's decode reads the pool by: {cfg.decode_attention} "
          "(serving/paged_attention.py)")
    _print_runs(args, work, batch, len(subset), repeats, summaries)
    _print_memory(kv, waste, model.config.max_seq_len, prefix)
    _print_ratios(ratios, steps)
    return {"figures": {"summaries": summaries,
                        "prefix": {str(k): v[0] for k, v in prefix.median.items()},
                        "output_lengths": [r.max_tokens for r in work], "hf_subset": len(subset),
                        "steps": {k: {"steps": a, "seconds": b} for k, (a, b) in steps.items()},
                        "repeats": repeats, "decode_attention": cfg.decode_attention},
            "ratios": ratios, "timings": timings}
