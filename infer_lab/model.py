"""A decoder-only Transformer, written from scratch (Vaswani et al. 2017).

One class serves both block styles of :mod:`infer_lab.config`:

* Llama-style: x + Attn(RMSNorm(x)) with RoPE and grouped-query attention, then
  x + SwiGLU(RMSNorm(x)) where SwiGLU(x) = W2 (silu(W1 x) * W3 x).
* GPT-2-style: x + Attn(LN(x)) with learned absolute positions, then
  x + W2 gelu(W1 x), biases everywhere.

The same ``forward`` runs prefill (T tokens) and decode (T = 1), with or without a
cache. Attention goes through the cache contract of :mod:`infer_lab.kv_cache`
(``begin`` once per forward, ``attend`` per layer), so the model has one attention
path whatever stores K/V: no cache (:class:`~infer_lab.kv_cache.NoCache`), the
contiguous or ring-buffer KVCache, a quantized cache, or the serving engine's paged
pool. Visibility is computed from token *positions*: key j is visible to query i iff
0 <= pos_j <= pos_i (and, with a sliding window, pos_i - pos_j < W). Padding slots carry
position -1, so batches of prompts of different lengths need no other machinery.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .kv_cache import AttentionCache, NoCache, Step, attention_mask  # noqa: F401 - re-export


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * g."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: squares of bf16/fp16 activations overflow or lose precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d) of RoPE, with optional Llama-3.1 scaling."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    s = cfg.rope_scaling
    if s and s.get("rope_type", s.get("type")) == "llama3":
        # Long wavelengths are stretched by `factor`, short ones kept, a smooth ramp between.
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_ctx = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old_ctx / lo, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_ctx / lo) & (wavelen >= old_ctx / hi)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq,
                               scaled)
    elif s:
        raise ValueError(f"unsupported rope_scaling {s!r} (only 'llama3' is implemented)")
    return inv_freq.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) by angle pos * theta_i (the 'rotate half' layout)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, q_dim + 2 * kv_dim, bias=cfg.qkv_bias or cfg.bias)
        self.wo = nn.Linear(q_dim, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: AttentionCache, step: Step) -> torch.Tensor:
        B, T, _ = x.shape
        # Widths from this layer's own head counts, not d_model: a head-pruned layer
        # (infer_lab.prune.structured) keeps fewer heads of the same size.
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # The cache stores k, v and reads K/V where they live (one path for every cache).
        y = cache.attend(self.layer, q, k, v, step)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, q_dim)  # (B, T, H * D)
        return self.wo(y)


class MLP(nn.Module):
    """SwiGLU (Llama) or GELU (GPT-2) feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.block == "llama"
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias) if self.gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        Norm = RMSNorm if cfg.block == "llama" else nn.LayerNorm
        self.attn_norm = Norm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = Norm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, cache, step):
        x = x + self.attn(self.attn_norm(x), rope, cache, step)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Decoder-only LM: tokens (B, T) -> logits (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.block == "gpt2" else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        Norm = RMSNorm if cfg.block == "llama" else nn.LayerNorm
        self.norm = Norm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.block == "llama":
            self.register_buffer("inv_freq", rope_frequencies(cfg), persistent=False)
        self.apply(self._init_weights)

    def _apply(self, fn, recurse=True):
        # Keep RoPE frequencies in fp32 whatever dtype the weights move to: in bf16,
        # pos * inv_freq is off by radians at a context of a few thousand tokens.
        super()._apply(fn, recurse)
        if self.pos_emb is None:
            self.inv_freq = rope_frequencies(self.config).to(self.norm.weight.device)
        return self

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    # Read off the final norm: a float parameter whatever replaces the embedding and the
    # linears (quantized layers hold integer buffers).
    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def _rope(self, pos: torch.Tensor, dtype: torch.dtype):
        angles = pos.clamp(min=0)[:, None, :, None].float() * self.inv_freq  # (B, 1, T, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (B, 1, T, D)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, idx: torch.Tensor, cache: AttentionCache | None = None,
                pos: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits for tokens ``idx`` (B, T).

        cache: where K/V live (:mod:`infer_lab.kv_cache`); None attends over ``idx`` only.
        pos: absolute position of each token (B, T), -1 for left padding. Defaults to
        continuing from the cache (or 0..T-1 without one).
        last_only: return logits of the last position only (B, 1, V): prefill needs
        nothing else, and the vocabulary projection is a large share of a small model.
        """
        x = self.hidden(idx, cache, pos)  # (B, T, C)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))  # (B, T, V)

    def hidden(self, idx: torch.Tensor, cache: AttentionCache | None = None,
               pos: torch.Tensor | None = None, n_layer: int | None = None) -> torch.Tensor:
        """The output (B, T, C) of the last layer, or of the first ``n_layer``, before the
        final norm: :meth:`forward` without the head (an early-exit draft stacks its own
        head on the first few layers, with a cache of that many layers)."""
        B, T = idx.shape
        if pos is not None:  # refuse before the cache records anything
            self._check_context(pos)
        cache = NoCache(B, idx.device) if cache is None else cache
        step = cache.begin(T, pos)
        if pos is None:
            self._check_context(step.pos)
        pos = step.pos  # (B, T)
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos.clamp(min=0))
        rope = self._rope(pos, x.dtype) if self.pos_emb is None else None
        for block in self.layers if n_layer is None else self.layers[:n_layer]:
            x = block(x, rope, cache, step)
        return x

    def _check_context(self, pos: torch.Tensor) -> None:
        # A host sync: skipped inside a compiled graph, whose caller checked the lengths
        # before the first step (infer_lab.runtimes.compiled).
        if torch.compiler.is_compiling():
            return
        if int(pos.max()) >= self.config.max_seq_len:
            raise ValueError(f"position {int(pos.max())} exceeds the model's context of "
                             f"{self.config.max_seq_len} tokens; shorten the prompt or "
                             "max_new_tokens")


