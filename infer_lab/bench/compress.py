"""Distillation and pruning: parameters, bytes, perplexity, exact match and decode speed.

Every row is measured the same way, next to ``code-m`` (the teacher):

* students: a fresh model of code-s's shape trained from scratch for the same steps on
  the same batches, once with plain cross-entropy and once with knowledge distillation
  from code-m (Hinton et al. 2015; forward KL at temperature T, see
  :mod:`infer_lab.distill`).
* unstructured pruning: code-m with 50% of its linear weights zeroed by magnitude
  (global ranking), and with 2:4 sparsity. Same shapes, so the same (dense) speed.
* structured pruning: code-m with 25% / 50% of every MLP's neurons removed (activation
  scores on calibration text), with half of its KV groups removed, with its least
  influential layers dropped: smaller matrices, so a CPU decodes faster.
* prune, then distill: the 50%-MLP model healed by a short KD run with code-m as
  teacher. The share of the pruning loss recovered is

      recovery = (PPL_pruned - PPL_after) / (PPL_pruned - PPL_code-m)

Decode tokens/s: greedy, batch 1, fp32, new tokens over the whole call (prefill
included), contenders alternated (:func:`~infer_lab.bench.interleaved_times`), each
repeated so that :mod:`infer_lab.bench.load` can flag runs that disagree. "train s" is
one training run's wall time: what making the model cost, not a contender, so it is not
repeated (a second run would double the bench for a figure no ratio uses).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from ..config import get_config
from ..distill import DistillConfig, distill
from ..model import Transformer
from ..prune import (drop_layers, n_params, prune_2_4, prune_heads, prune_magnitude, prune_mlp,
                     sparsity_of)
from . import format_table
from .quant import decode_speeds, quality


def _cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 / AMX): then train in bf16."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class CompressBenchConfig:
    student_steps: int = 600  # CE and KD students, from scratch
    prune_steps: int = 120  # KD steps that heal the 50%-MLP model
    batch_size: int = 16
    seq_len: int = 128
    student_lr: float = 3e-3
    heal_lr: float = 1e-3  # a pretrained model needs a gentler step than a fresh one
    eval_every: int = 100
    eval_tokens: int = 8192
    temperature: float = 1.0
    kd_weight: float = 1.0
    ppl_tokens: int = 16384
    em_samples: int = 40
    em_line_tokens: int = 32
    em_context_chars: int = 1500
    new_tokens: int = 64
    prompt_tokens: int = 16
    repeats: int = 3
    calib_seqs: int = 16
    calib_len: int = 128
    seed: int = 0


FULL = CompressBenchConfig()
QUICK = CompressBenchConfig(student_steps=3, prune_steps=2, batch_size=2, seq_len=32,
                            eval_every=2, eval_tokens=128, ppl_tokens=256, em_samples=3,
                            em_line_tokens=6, em_context_chars=200, new_tokens=4,
                            prompt_tokens=4, repeats=1, calib_seqs=2, calib_len=32)
# --quick: random weights, a few hundred thousand parameters, the zoo's tokenizer.
TINY_TEACHER = {"n_layer": 2, "d_model": 64, "n_head": 4, "n_kv_head": 2, "d_ff": 128,
                "max_seq_len": 128}
TINY_STUDENT = {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 2, "d_ff": 64,
                "max_seq_len": 128}


def load_data(quick: bool):
    """Teacher, tokenizer, train and valid token streams, student config, weights' source."""
    from ..zoo import load_tokenizer, load_zoo
    from ..zoo.data import held_out_text
    from ..zoo.train import RUNS_DIR, load_tokens

    if quick:
        tok = load_tokenizer()
        torch.manual_seed(0)
        teacher = Transformer(get_config("code-m", **TINY_TEACHER, vocab_size=tok.vocab_size))
        ids = torch.tensor(tok.encode(held_out_text(max_chars=20000))).numpy()
        half = len(ids) // 2
        return (teacher.eval(), tok, ids[:half], ids[half:],
                get_config("code-s", **TINY_STUDENT, vocab_size=tok.vocab_size),
                "random (tiny shapes, --quick)")
    teacher, tok = load_zoo("code-m")
    data_dir = RUNS_DIR / "data"  # where zoo.train caches the token streams
    return (teacher.float().eval(), tok, load_tokens(tok, "train", data_dir),
            load_tokens(tok, "valid", data_dir), get_config("code-s", vocab_size=tok.vocab_size),
            "zoo weights")


def _distill_cfg(cfg: CompressBenchConfig, loss: str, steps: int, lr: float) -> DistillConfig:
    return DistillConfig(steps=steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=lr,
                         min_lr=lr / 10, warmup=max(1, steps // 20), eval_every=cfg.eval_every,
                         eval_tokens=cfg.eval_tokens, seed=cfg.seed, loss=loss,
                         temperature=cfg.temperature, kd_weight=cfg.kd_weight, bf16=_cpu_bf16())


def build_models(cfg: CompressBenchConfig, teacher: nn.Module, student_cfg, train_ids,
                 valid_ids, progress: bool) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Every model of the table, and how each was made (training curves, seconds)."""
    from ..zoo.train import get_batch

    made: dict[str, Any] = {}
    models: dict[str, nn.Module] = {"code-m": teacher}
    torch.manual_seed(cfg.seed)
    init = Transformer(student_cfg)  # one initialisation for both students
    for name, loss in (("student CE", "ce"), ("student KD", "kd")):
        student = copy.deepcopy(init)
        r = distill(student, teacher if loss == "kd" else None,
                    _distill_cfg(cfg, loss, cfg.student_steps, cfg.student_lr),
                    train_ids, valid_ids, progress=progress)
        models[name] = student.eval()
        made[name] = {"steps": r.steps, "train_seconds": r.seconds, "history": r.history}
    models["magnitude 50%"] = prune_magnitude(copy.deepcopy(teacher), 0.5, "global")
    models["2:4"] = prune_2_4(copy.deepcopy(teacher))
    calib = get_batch(train_ids, cfg.calib_seqs, cfg.calib_len,
                      torch.Generator().manual_seed(cfg.seed))[0]  # (N, T)
    for frac in (0.25, 0.5):
        models[f"MLP -{frac:.0%}"] = prune_mlp(teacher, frac, "activation", calib).eval()
    models["KV groups -50%"] = prune_heads(teacher, 0.5, "activation", calib,
                                           unit="kv_group").eval()
    n_drop = max(1, teacher.config.n_layer // 4)
    models[f"layers -{n_drop}"] = drop_layers(teacher, n_drop, "activation", calib).eval()
    healed = copy.deepcopy(models["MLP -50%"])
    r = distill(healed, teacher, _distill_cfg(cfg, "kd", cfg.prune_steps, cfg.heal_lr),
                train_ids, valid_ids, progress=progress)
    models["MLP -50% + KD"] = healed.eval()
    made["MLP -50% + KD"] = {"steps": r.steps, "train_seconds": r.seconds, "history": r.history}
    return models, made


def ratios_of(rows: dict[str, dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, str]]:
    ppl = {k: r["ppl"] for k, r in rows.items()}
    tps = {k: r["tokens_per_s"] for k, r in rows.items()}
    ratios: dict[str, float | None] = {
        "kd_vs_ce_student_ppl": ppl["student KD"] / ppl["student CE"],
        "unstructured50_ppl_increase": (ppl["magnitude 50%"] - ppl["code-m"]) / ppl["code-m"],
        "unstructured50_speedup": tps["magnitude 50%"] / tps["code-m"],
        "structured25_mlp_speedup": tps["MLP -25%"] / tps["code-m"],
        "structured50_mlp_speedup": tps["MLP -50%"] / tps["code-m"],
        "structured50_mlp_ppl_increase": (ppl["MLP -50%"] - ppl["code-m"]) / ppl["code-m"],
    }
    notes = {
        "kd_vs_ce_student_ppl": "PPL(KD student) / PPL(CE student), same init, steps, batches "
                                "(< 1: distillation helps)",
        "unstructured50_ppl_increase": "(PPL_magnitude50 - PPL_code-m) / PPL_code-m",
        "unstructured50_speedup": "decode tok/s, 50% zeros vs dense: same dense matmuls",
        "structured25_mlp_speedup": "decode tok/s, 25% of MLP neurons removed vs code-m",
        "structured50_mlp_speedup": "decode tok/s, 50% of MLP neurons removed vs code-m",
        "structured50_mlp_ppl_increase": "(PPL_MLP-50% - PPL_code-m) / PPL_code-m",
    }
    gap = ppl["MLP -50%"] - ppl["code-m"]
    key = "prune_then_distill_recovery"
    if gap > 0:
        ratios[key] = (ppl["MLP -50%"] - ppl["MLP -50% + KD"]) / gap
        notes[key] = "(PPL_pruned - PPL_after_KD) / (PPL_pruned - PPL_code-m), MLP -50%"
    else:
        ratios[key], notes[key] = None, "pruning cost no perplexity: nothing to recover"
    return ratios, notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps of each student ({FULL.student_steps})")
    parser.add_argument("--prune-steps", type=int, default=None,
                        help=f"KD steps after structured pruning ({FULL.prune_steps})")
    parser.add_argument("--em-samples", type=int, default=None,
                        help=f"next-line exact match samples ({FULL.em_samples})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ..quality import heldout_ids
    from ..zoo.data import held_out_text

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    over = {k: v for k, v in (("student_steps", getattr(args, "steps", None)),
                              ("prune_steps", getattr(args, "prune_steps", None)),
                              ("em_samples", getattr(args, "em_samples", None))) if v}
    cfg = replace(QUICK if args.quick else FULL, **over)
    t0 = time.time()
    teacher, tok, train_ids, valid_ids, student_cfg, source = load_data(args.quick)
    print(f"students: {student_cfg.n_params / 1e6:.2f}M params ({student_cfg.n_layer} layers x "
          f"{student_cfg.d_model}), {cfg.student_steps} steps of {cfg.batch_size}x{cfg.seq_len} "
          f"tokens each (CE, then KD from code-m at T={cfg.temperature}); prune-then-distill: "
          f"{cfg.prune_steps} KD steps; bf16 training: {_cpu_bf16()}")
    models, made = build_models(cfg, teacher, student_cfg, train_ids, valid_ids,
                                progress=not args.quick)
    text = held_out_text()
    ctx = {"tok": tok, "text": text, "ppl_ids": heldout_ids(tok, cfg.ppl_tokens)}
    rows: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(models) * (cfg.repeats + 2), desc="compress bench",
              disable=args.quick) as bar:
        for name, m in models.items():
            rows[name] = {"params": n_params(m), "nonzero_params": _nonzero(m),
                          "weight_bytes": sum(p.numel() * p.element_size()
                                              for p in m.parameters()),
                          "sparsity": sparsity_of(m), **quality(m, ctx, cfg), **made.get(name, {})}
            bar.update(1)
        gen = torch.Generator().manual_seed(cfg.seed)
        prompt = torch.randint(teacher.config.vocab_size, (cfg.prompt_tokens,),
                               generator=gen).tolist()
        speeds, timings = decode_speeds(models, cfg.new_tokens, cfg.repeats, prompt, bar)
        for name, r in speeds.items():
            rows[name].update(r, new_tokens=cfg.new_tokens)
    ratios, notes = ratios_of(rows)
    print(report(rows, cfg, source, ratios, notes, time.time() - t0))
    return {"settings": {**asdict(cfg), "threads": torch.get_num_threads(),
                         "student_config": student_cfg.to_dict(), "weights": source},
            "results": rows, "ratios": ratios, "ratio_notes": notes, "timings": timings,
            "total_seconds": time.time() - t0}


def _nonzero(m: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in m.parameters())


def report(rows: dict[str, dict[str, Any]], cfg: CompressBenchConfig, source: str,
           ratios: dict[str, float | None], notes: dict[str, str], seconds: float) -> str:
    base = rows["code-m"]
    table = format_table(
        [[name, r["params"] / 1e6, r["nonzero_params"] / 1e6, r["weight_bytes"] / 2**20,
          r["ppl"], f"{r['exact_match']:.0%}", r["tokens_per_s"],
          f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x",
          f"{r['train_seconds']:.0f}" if "train_seconds" in r else "-"]
         for name, r in rows.items()],
        ["model", "params M", "nonzero M", "fp32 MiB", "ppl", "exact match", "tok/s",
         "vs code-m", "train s"])
    head = (f"code-m ({source}): ppl on {base['ppl_tokens']} held-out tokens, next-line exact "
            f"match on {base['exact_match_n']} lines, decode {cfg.new_tokens} tokens greedy "
            f"batch 1 fp32, {torch.get_num_threads()} threads, median of {cfg.repeats}. "
            f"Students: {cfg.student_steps} steps; healing KD: {cfg.prune_steps} steps. "
            f"Total {seconds / 60:.1f} min.")
    lines = [head, table, ""]
    for k, v in ratios.items():
        lines.append(f"{k}: {'null' if v is None or math.isnan(v) else f'{v:.4g}'}  ({notes[k]})")
    return "\n".join(lines)
