"""Lab 02: where a quantized model's bytes are stored, and what moving them costs.

* GGUF block bytes (llama.cpp): one Q8_0 block (an fp16 scale, 32 int8 codes: 34 bytes
  for 32 weights) and one Q4_K super-block (144 bytes for 256 weights), byte by byte.
* KV-cache quantization (KIVI, Liu et al. 2024): bytes the cache holds and how many
  greedy tokens still agree with the unquantized cache.
* Speed: one linear layer timed in fp32, dequantize-then-multiply, the same codes through
  PyTorch's packed CPU kernels (the fused path, :mod:`infer_lab.quant.packed`) and fbgemm
  int8. Dequantizing layers read the codes, write an fp32 W, then read it for the matmul,
  so they move more bytes than fp32 itself; a kernel that multiplies the codes directly
  reads 1 byte (int8) or half a byte (int4) per weight and is the path that gets faster.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import plotly.graph_objects as go
import torch
from torch import nn

from .figures import COLORS, layout

# -- GGUF bytes ----------------------------------------------------------------------------
Q8_0_FIELDS = [("d (fp16 scale)", 0, 2), ("qs: 32 int8 codes", 2, 34)]
Q4_K_FIELDS = [("d (fp16)", 0, 2), ("dmin (fp16)", 2, 4),
               ("scales: 8 six-bit scales + 8 six-bit mins", 4, 16),
               ("qs: 256 four-bit codes, two per byte", 16, 144)]


def block_bytes_figure(block: torch.Tensor, fields: list[tuple[str, int, int]], title: str,
                       cols: int = 16) -> go.Figure:
    """One cell per byte of a block (uint8 (n,)), coloured by field, labelled in hex."""
    n = block.numel()
    rows = -(-n // cols)
    z = [[None] * cols for _ in range(rows)]
    text = [[""] * cols for _ in range(rows)]
    hover = [[""] * cols for _ in range(rows)]
    for k, (name, a, b) in enumerate(fields):
        for i in range(a, b):
            r, c = divmod(i, cols)
            z[r][c], text[r][c] = k, f"{int(block[i]):02x}"
            hover[r][c] = f"byte {i}: 0x{int(block[i]):02x} = {int(block[i])}<br>{name}"
    scale = [[k / max(len(fields) - 1, 1), COLORS[k]] for k in range(len(fields))]
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra></extra>", xgap=2, ygap=2,
                               colorscale=scale, showscale=False))
    for k, (name, a, b) in enumerate(fields):  # a legend entry per field
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{name} "
                                 f"(bytes {a}..{b - 1})", marker={"color": COLORS[k],
                                                                  "symbol": "square", "size": 12}))
    layout(fig, title, "byte within the row (column)", "row of 16 bytes (row)",
           height=120 + 34 * rows)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    return fig


# -- KV cache ---------------------------------------------------------------------------------
def kv_cache_runs(model: nn.Module, prompt: list[int], n_tokens: int, group: int = 32
                  ) -> dict[str, dict]:
    """Greedy decode through an fp cache, an int8 cache and a KIVI int4 cache: bytes the
    cache holds (allocated for prompt + n_tokens) and how many tokens match the fp run."""
    from ..generate import collect, decode_steps
    from ..kv_cache import KVCache
    from ..quant.kv import QuantizedKVCache

    total = len(prompt) + n_tokens
    caches = {f"{str(model.dtype).replace('torch.', '')} (no quantization)":
              KVCache.for_model(model, 1, total),
              "int8 per token": QuantizedKVCache.for_model(model, 1, total, bits=8),
              f"int4 KIVI (keys per channel, group {group})":
              QuantizedKVCache.for_model(model, 1, total, bits=4, group=group)}
    from tqdm.auto import tqdm

    out, ref = {}, None
    for name, cache in tqdm(caches.items(), desc="KV caches", leave=False):
        toks = collect(decode_steps(model, [prompt], n_tokens, cache=cache), 1, n_tokens)[0]
        ref = toks if ref is None else ref
        same = next((i for i, (a, b) in enumerate(zip(toks, ref)) if a != b), len(ref))
        out[name] = {"bytes": cache.bytes(), "bytes_per_token": cache.bytes() / total,
                     "tokens": toks, "agree": same, "cache": cache}
    return out


def kv_bytes_per_token(model: nn.Module, lengths: list[int], group: int = 32
                       ) -> dict[str, list[float]]:
    """Bytes per token each cache allocates for a context of L tokens, for each L. KIVI's
    full-precision residual (one group of keys per layer and head) is a fixed cost that
    longer contexts amortize."""
    from ..kv_cache import KVCache
    from ..quant.kv import QuantizedKVCache

    make = {"no quantization": lambda L: KVCache.for_model(model, 1, L),
            "int8 per token": lambda L: QuantizedKVCache.for_model(model, 1, L, bits=8),
            f"int4 KIVI (group {group})":
            lambda L: QuantizedKVCache.for_model(model, 1, L, bits=4, group=group)}
    return {k: [f(L).bytes() / L for L in lengths] for k, f in make.items()}


def key_magnitude_figure(cache, layer: int = 0, head: int = 0) -> go.Figure:
    """|K| of one head over tokens x channels: a few channels are large in every token,
    which is why KIVI gives keys one scale per channel."""
    k = cache.k[layer, 0, head, :cache.length].abs().float()  # (T, head_dim)
    fig = go.Figure(go.Heatmap(z=k.tolist(), colorscale="Viridis",
                               colorbar={"title": "|k|"}))
    return layout(fig, f"Key magnitudes, layer {layer}, KV head {head}",
                  "channel of the key vector (index)", "token position (tokens)")


def kivi_key_errors(cache, kivi: Callable | None = None, group: int = 32
                    ) -> dict[str, float]:
    """Relative error ||K_hat - K|| / ||K|| of the keys an unquantized ``cache`` holds, at
    int4: one scale per token (what values get) against KIVI's per-channel scales per group
    of ``group`` tokens. kivi: (keys (..., T, D), group, bits) -> dequantized keys (lab
    02's exercise); None: the same scheme as :class:`infer_lab.quant.kv.QuantizedKVCache`.
    Both errors are over the complete groups only (KIVI keeps the rest exact)."""
    from ..quant.primitives import quantize

    k = cache.k[:, 0, :, :cache.length].float()  # (L, H, T, D): batch row 0
    full = k.shape[-2] // group * group
    if full == 0:
        raise ValueError(f"{k.shape[-2]} tokens hold no complete group of {group}")
    k = k[..., :full, :]
    if kivi is None:
        g = k.unflatten(-2, (full // group, group))  # (L, H, n_groups, G, D)
        s = (g.abs().amax(-2, keepdim=True) / 7).clamp(min=1e-8)  # per channel and group
        k_kivi = (torch.round(g / s).clamp(-7, 7) * s).flatten(-3, -2)
    else:
        k_kivi = kivi(k, group, 4)
    per_token = quantize(k, 4, "channel").dequantize()  # one scale per (layer, head, token)
    err = lambda kh: ((kh - k).norm() / k.norm()).item()
    return {"int4, one scale per token": err(per_token),
            f"int4 KIVI, one scale per channel per {group} tokens": err(k_kivi)}


# -- one linear layer, timed -------------------------------------------------------------
FUSED_INT8 = "int8 fused (packed kernel, reads the codes)"
FUSED_INT4 = "int4 g64 fused (packed kernel, reads the codes)"


def time_linear(in_features: int = 768, out_features: int = 3072, batches: Sequence[int] = (1,),
                repeats: int = 20, seed: int = 0) -> dict[int, dict[str, float]]:
    """Median ms per call of one linear layer (GPT-2's MLP up-projection by default) in
    fp32, as our dequantize-then-multiply Int8Linear / Int4Linear, as the same codes fused
    into PyTorch's packed weight-only kernels (PackedInt8Linear / PackedInt4Linear), and as
    PyTorch's dynamic int8 (fbgemm's int8 GEMM), for each batch of token rows."""
    from ..bench import interleaved_times
    from ..quant.catalog import Unavailable, dynamic_int8
    from ..quant.int4 import Int4Linear
    from ..quant.int8 import Int8Linear
    from ..quant.packed import pack_layer

    torch.manual_seed(seed)
    lin = nn.Linear(in_features, out_features).eval()
    int8, int4 = Int8Linear.from_linear(lin), Int4Linear.from_linear(lin, "group", 64)
    layers: dict[str, nn.Module] = {
        "fp32": lin,
        "Int8Linear (dequantize, fp32 matmul)": int8,
        "Int4Linear g64 (dequantize, fp32 matmul)": int4}
    for key, layer in ((FUSED_INT8, int8), (FUSED_INT4, int4)):
        fused, why = pack_layer(layer)
        if why is None:  # a shape or CPU the packed kernels cannot take: no fused row
            layers[key] = fused
    try:
        layers["int8 dynamic (fbgemm int8 GEMM)"] = dynamic_int8(nn.Sequential(lin), {})
    except Unavailable:
        pass  # no fbgemm here (e.g. an ARM build): the table says which paths ran
    out = {}
    with torch.inference_mode():
        for b in batches:
            x = torch.randn(b, in_features)  # (B, in): B tokens, one forward
            fns = {k: (lambda m=m, x=x: m(x)) for k, m in layers.items()}
            times = interleaved_times(fns, repeats, warmup=3)
            out[b] = {k: 1e3 * statistics.median(t) for k, t in times.items()}
    return out


def bytes_moved(in_features: int = 768, out_features: int = 3072) -> dict[str, int]:
    """Weight bytes each path reads or writes per call (activations are tiny at batch 1):
    the dequantizing layers read the codes, write an fp32 W, then read it for the matmul;
    the fused ones read the codes and their scales only (int4: a bf16 scale and zero per
    group of 64, int8: an fp16 scale per output row)."""
    n = in_features * out_features
    return {"fp32": 4 * n, "Int8Linear (dequantize, fp32 matmul)": n + 4 * n + 4 * n,
            "Int4Linear g64 (dequantize, fp32 matmul)": n // 2 + 4 * n + 4 * n,
            FUSED_INT8: n + 2 * out_features, FUSED_INT4: n // 2 + 4 * (n // 64),
            "int8 dynamic (fbgemm int8 GEMM)": n}
