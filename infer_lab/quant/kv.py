"""KV-cache quantization: store keys and values in int8 or int4 instead of 16/32 bits.

The cache, not the weights, dominates memory at long context and large batch (lab 01),
so shrinking it buys batch size and context. Two schemes:

* int8, per token and head: each (token, head) vector of K and V gets one absmax scale,
  x ~ q * s / 127. Simple and nearly lossless.
* int4 after KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization
  for KV Cache"): keys have outlier *channels* (fixed dimensions that are large for every
  token), so keys are quantized per channel over groups of G tokens, while values are
  quantized per token. The newest incomplete group of keys stays in full precision
  (the "residual"), since a per-channel scale needs all G tokens.

Storage holds the codes (int4 packed two per byte) and scales; each attention call
dequantizes what it reads. That dequantization is the reference here; a fused kernel
would do it inside attention, which is where the bandwidth saving turns into speed.
"""

from __future__ import annotations

import torch

from ..kv_cache import KVCache, KVStep
from .primitives import pack_int4, unpack_int4


class QuantizedKVCache(KVCache):
    """A :class:`KVCache` whose K and V are stored as int8 or int4 codes plus scales."""

    def __init__(self, *args, bits: int = 8, group: int = 32, **kwargs):
        if bits not in (8, 4):
            raise ValueError(f"KV-cache quantization supports bits 8 or 4, got {bits}")
        if kwargs.get("window") is not None:
            raise ValueError("a quantized KV cache does not support a sliding window")
        self.bits, self.group = bits, group
        super().__init__(*args, **kwargs)

    @classmethod
    def for_model(cls, model, batch: int = 1, max_len: int | None = None,
                  window: int | None = None, bits: int = 8, group: int = 32
                  ) -> "QuantizedKVCache":
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, batch, cfg.n_kv_head, cfg.head_dim, max_len or cfg.max_seq_len,
                   window=window, dtype=p.dtype, device=p.device, bits=bits, group=group)

    def _allocate(self, shape, dtype, device) -> None:
        L, B, H, S, D = shape
        if self.bits == 4 and D % 2:
            raise ValueError(f"int4 packing needs an even head_dim, got {D}")
        code_d = D if self.bits == 8 else D // 2
        code_dtype = torch.int8 if self.bits == 8 else torch.uint8
        self.kq = torch.zeros(L, B, H, S, code_d, dtype=code_dtype, device=device)
        self.vq = torch.zeros(L, B, H, S, code_d, dtype=code_dtype, device=device)
        self.vs = torch.ones(L, B, H, S, 1, dtype=torch.float16, device=device)
        if self.bits == 8:  # per token and head
            self.ks = torch.ones(L, B, H, S, 1, dtype=torch.float16, device=device)
        else:  # per channel, per group of G tokens; the incomplete group kept in full
            n_groups = -(-S // self.group)
            self.ks = torch.ones(L, B, H, n_groups, D, dtype=torch.float16, device=device)
            self.k_residual = torch.zeros(L, B, H, self.group, D, dtype=dtype, device=device)
        self.shape = shape

    def bytes(self) -> int:
        """Bytes of codes and scales (and the int4 scheme's full-precision residual)."""
        t = [self.kq, self.vq, self.ks, self.vs] + ([self.k_residual] if self.bits == 4 else [])
        return sum(x.numel() * x.element_size() for x in t)

    # -- quantize / dequantize -------------------------------------------------------------
    def _encode(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        qmax = 127 if self.bits == 8 else 7
        s = (x.float().abs().amax(dim=dim, keepdim=True) / qmax).clamp(min=1e-8).half()
        q = torch.round(x.float() / s.float()).clamp(-qmax, qmax)
        if self.bits == 8:
            return q.to(torch.int8), s
        return pack_int4((q + 8).to(torch.uint8)), s  # offset to 1..15, two per byte

    def _decode(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        codes = q.float() if self.bits == 8 else unpack_int4(q).float() - 8
        return (codes * s.float()).to(self.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, step: KVStep
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The storage step of :meth:`KVCache.attend`: encode k, v; decode all (B, H, S, D)."""
        start, T = step.start, k.shape[2]
        end = start + T
        self.vq[layer, :, :, start:end], self.vs[layer, :, :, start:end] = self._encode(v, -1)
        v_all = self._decode(self.vq[layer, :, :, :end], self.vs[layer, :, :, :end])
        if self.bits == 8:
            self.kq[layer, :, :, start:end], self.ks[layer, :, :, start:end] = self._encode(k, -1)
            return self._decode(self.kq[layer, :, :, :end], self.ks[layer, :, :, :end]), v_all
        return self._update_keys_int4(layer, k, start, end), v_all

    def _update_keys_int4(self, layer: int, k: torch.Tensor, start: int, end: int
                          ) -> torch.Tensor:
        G = self.group
        done = start // G * G  # tokens already in complete (quantized) groups
        recent = torch.cat([self.k_residual[layer, :, :, : start - done], k], dim=2)  # (B,H,n,D)
        full = (end // G) * G
        for g0 in range(done, full, G):  # quantize each group that is now complete
            chunk = recent[:, :, g0 - done:g0 - done + G]  # (B, H, G, D)
            q, s = self._encode(chunk.transpose(2, 3), -1)  # per channel: absmax over tokens
            codes = unpack_int4(q).transpose(2, 3).contiguous()  # (B, H, G, D)
            self.kq[layer, :, :, g0:g0 + G] = pack_int4(codes)  # packed along D, like V
            self.ks[layer, :, :, g0 // G] = s.squeeze(-1)  # (B, H, D)
        tail = recent[:, :, full - done:]  # the incomplete group, kept in full precision
        self.k_residual[layer, :, :, : tail.shape[2]] = tail
        if full == 0:
            return tail
        codes = unpack_int4(self.kq[layer, :, :, :full]).float() - 8  # (B, H, full, D)
        scales = self.ks[layer, :, :, : full // G].float().repeat_interleave(G, dim=2)
        return torch.cat([(codes * scales).to(self.dtype), tail], dim=2)

    def rollback(self, length: int) -> None:
        if self.bits == 4 and length // self.group < self.length // self.group:
            raise NotImplementedError("rolling an int4 cache back past a quantized group")
        super().rollback(length)
