"""How one decode step reads the paged pool, measured: gather vs block by block.

A decode step's attention must read every running sequence's keys and values. Three
ways, all exact, timed on the same batch (lab 06, section 2):

* **gather** (:func:`~infer_lab.serving.paged_attention.paged_attention`'s way): copy
  each sequence's slots out of the pool into a (B, H_kv, S, D) tensor padded to the
  *longest* sequence S, then run ordinary attention on the copy;
* **blocks** (:func:`~infer_lab.serving.paged_attention.paged_decode_attention`, the
  vLLM kernel's way): each query meets only its own blocks, whole blocks at a time,
  softmax combined across blocks; no padding to the longest sequence;
* **contiguous**: what a contiguous cache of the same batch would run, each row
  preallocated and padded to S, no copy at all (the request-level baselines);
* **in place (C++)**, where its build is on this machine
  (:mod:`infer_lab.runtimes.paged_cpu`): the vLLM loop compiled for CPU threads, each
  row's blocks read where they lie, online softmax across them; no copy, no padding.

Slots touched per layer: gather and contiguous B * S, blocks sum_b ceil(n_b / bs) * bs.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from ..metrics import Timer
from ..serving.paged_attention import decode_blocks, paged_attention, paged_decode_attention
from .figures import layout

WAYS = ("gather", "blocks", "contiguous")
IN_PLACE = "in place (C++)"


@dataclass
class ReadTimes:
    """Median ms per layer of each way, slots each reads, and the largest disagreement."""

    ms: dict[str, float]
    slots: dict[str, int]
    max_abs_diff: float
    context_lens: list[int]
    block_size: int


def compare_reads(context_lens: list[int], n_head: int = 8, n_kv_head: int = 4,
                  head_dim: int = 64, block_size: int = 16, repeats: int = 10,
                  seed: int = 0, in_place: bool | None = None) -> ReadTimes:
    """Time one layer's decode attention three ways (four with the C++ kernel) over
    sequences of these lengths, their blocks scattered at random over a pool twice the
    size they need. in_place: time the C++ kernel (default: when it is already built)."""
    from ..runtimes import paged_cpu

    rng = random.Random(seed)
    torch.manual_seed(seed)
    B, bs = len(context_lens), block_size
    need = [-(-n // bs) for n in context_lens]
    num_blocks = 2 * sum(need)
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(n)] for n in need]
    k_pool = torch.randn(num_blocks, n_kv_head, bs, head_dim)  # (blocks, H_kv, bs, D)
    v_pool = torch.randn(num_blocks, n_kv_head, bs, head_dim)
    q = torch.randn(B, n_head, head_dim)
    S = max(context_lens)
    width = -(-S // bs)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables])  # (B, width)
    lens = torch.tensor(context_lens)
    meta = decode_blocks(tables, context_lens, bs)
    k_c = torch.randn(B, n_kv_head, S, head_dim)  # a contiguous cache of the same batch
    v_c = torch.randn(B, n_kv_head, S, head_dim)
    mask = (torch.arange(S)[None] < lens[:, None])[:, None, None]  # (B, 1, 1, S)
    ways = {
        "gather": lambda: paged_attention(q, k_pool, v_pool, padded, lens),
        "blocks": lambda: paged_decode_attention(q, k_pool, v_pool, **meta),
        "contiguous": lambda: F.scaled_dot_product_attention(
            q[:, :, None], k_c, v_c, attn_mask=mask, enable_gqa=n_head != n_kv_head),
    }
    if paged_cpu.built() if in_place is None else in_place:
        ways[IN_PLACE] = lambda: paged_cpu.paged_decode_cpu(q, k_pool, v_pool, padded, lens)
    diff = max((ways["gather"]() - ways[w]()).abs().max().item()
               for w in ways if w != "contiguous")
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(repeats):  # alternate, so a busy moment lands on every way
        for w in ways:
            with Timer() as t:
                ways[w]()
            times[w].append(t.elapsed)
    ms = {w: 1000 * statistics.median(ts) for w, ts in times.items()}
    own = sum(need) * bs  # each row's own blocks, whole
    slots = {w: {"gather": B * S, "contiguous": B * S}.get(w, own) for w in ways}
    return ReadTimes(ms, slots, diff, list(context_lens), bs)


def reads_figure(r: ReadTimes, title: str = "One layer's decode attention over the pool"
                 ) -> go.Figure:
    """Bars of ms per layer, annotated with the K/V slots each way reads."""
    colors = {"gather": "#9e9ac8", "blocks": "#1f77b4", "contiguous": "#bdbdbd",
              IN_PLACE: "#2ca02c"}
    ways = list(r.ms)
    fig = go.Figure(go.Bar(
        x=ways, y=[r.ms[w] for w in ways],
        text=[f"{r.ms[w]:.2f} ms<br>{r.slots[w]:,} slots" for w in ways],
        textposition="outside", marker_color=[colors[w] for w in ways]))
    mean = sum(r.context_lens) / len(r.context_lens)
    layout(fig, f"{title}: {len(r.context_lens)} sequences, mean {mean:.0f} / longest "
                f"{max(r.context_lens)} tokens, blocks of {r.block_size}",
           "how attention reads K/V", "ms per layer (median)")
    fig.update_yaxes(range=[0, 1.25 * max(r.ms.values())])  # room for the labels
    return fig
