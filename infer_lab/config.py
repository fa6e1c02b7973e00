"""Model configuration: one dataclass that describes every decoder-only model we run.

Two block styles cover the models this lab teaches with:

* ``"llama"``: pre-norm RMSNorm, rotary position embeddings (RoPE, Su et al. 2021),
  grouped-query attention (GQA, Ainslie et al. 2023) and a SwiGLU MLP
  (Shazeer 2020). Llama, Qwen2, SmolLM and our own zoo models use it.
* ``"gpt2"``: pre-norm LayerNorm with biases, learned absolute positions and a GELU MLP
  (Radford et al. 2019).

Presets hold the zoo models and the *shapes* of real models, so calculators and speed
benchmarks can use real shapes with random weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal


@dataclass
class ModelConfig:
    """Shape and flavour of a decoder-only Transformer (fields as in gpt-fast's ModelArgs)."""

    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: same as n_head (multi-head attention)
    d_model: int = 128
    d_ff: int | None = None  # None: 4*d (gpt2) or the Llama 8/3*d rounded to 64
    max_seq_len: int = 1024
    block: Literal["llama", "gpt2"] = "llama"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # Llama-3.1 style {"rope_type": "llama3", ...}
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 puts a bias on q, k and v only
    bias: bool = False  # biases on every other linear layer (GPT-2)
    # None: d_model // n_head. Set when the heads' total width differs from d_model, as
    # after head pruning (fewer heads of the same size).
    head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.block not in ("llama", "gpt2"):
            raise ValueError(f"block must be 'llama' or 'gpt2', got {self.block!r}")
        if self.head_dim is None and self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.d_ff is None:
            if self.block == "gpt2":
                self.d_ff = 4 * self.d_model
            else:  # SwiGLU keeps the parameter count of a 4d MLP with 2/3 of the width
                self.d_ff = 64 * ((8 * self.d_model // 3 + 63) // 64)
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_head

    # -- derived sizes, used by calculators in the labs ---------------------------
    @property
    def n_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, f, L = self.d_model, self.d_ff, self.n_layer
        q, kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        attn = d * (q + 2 * kv) + q * d
        attn += (q + 2 * kv) * (self.qkv_bias or self.bias) + d * self.bias
        mlp = (3 if self.block == "llama" else 2) * d * f + (f + d) * self.bias
        norms = (2 if self.block == "llama" else 4) * d
        per_layer = attn + mlp + norms
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        pos = self.max_seq_len * d if self.block == "gpt2" else 0
        final_norm = d * (1 if self.block == "llama" else 2)
        return L * per_layer + emb + pos + final_norm

    def kv_bytes_per_token(self, bytes_per_elem: float = 2.0) -> float:
        """Bytes of K and V one token adds to the cache across all layers."""
        return 2 * self.n_layer * self.n_kv_head * self.head_dim * bytes_per_elem

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.head_dim == self.d_model // self.n_head:
            d.pop("head_dim")  # derived: keep the saved cards as they were
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**d)


# Shapes from each model's published config.json; weights are random when used here.
PRESETS: dict[str, ModelConfig] = {
    # The embedded zoo (trained by infer_lab.zoo.train on the Python standard library).
    "code-s": ModelConfig(vocab_size=4096, n_layer=2, n_head=4, n_kv_head=4, d_model=192,
                          d_ff=512, max_seq_len=1024),
    "code-m": ModelConfig(vocab_size=4096, n_layer=8, n_head=8, n_kv_head=4, d_model=256,
                          d_ff=704, max_seq_len=1024),
    # GPT-2 family.
    "gpt2": ModelConfig(vocab_size=50257, n_layer=12, n_head=12, d_model=768, d_ff=3072,
                        max_seq_len=1024, block="gpt2", bias=True, qkv_bias=True),
    "gpt2-medium": ModelConfig(vocab_size=50257, n_layer=24, n_head=16, d_model=1024,
                               d_ff=4096, max_seq_len=1024, block="gpt2", bias=True,
                               qkv_bias=True),
    # Llama family.
    "llama-2-7b": ModelConfig(vocab_size=32000, n_layer=32, n_head=32, d_model=4096,
                              d_ff=11008, max_seq_len=4096, tie_embeddings=False),
    "llama-3-8b": ModelConfig(vocab_size=128256, n_layer=32, n_head=32, n_kv_head=8,
                              d_model=4096, d_ff=14336, max_seq_len=8192,
                              rope_theta=500000.0, tie_embeddings=False),
    "llama-3-70b": ModelConfig(vocab_size=128256, n_layer=80, n_head=64, n_kv_head=8,
                               d_model=8192, d_ff=28672, max_seq_len=8192,
                               rope_theta=500000.0, tie_embeddings=False),
    "llama-3.2-1b": ModelConfig(vocab_size=128256, n_layer=16, n_head=32, n_kv_head=8,
                                d_model=2048, d_ff=8192, max_seq_len=131072,
                                rope_theta=500000.0),
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, n_layer=24, n_head=14, n_kv_head=2,
                                d_model=896, d_ff=4864, max_seq_len=32768, norm_eps=1e-6,
                                rope_theta=1000000.0, qkv_bias=True),
    "smollm2-135m": ModelConfig(vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3,
                                d_model=576, d_ff=1536, max_seq_len=8192,
                                rope_theta=100000.0),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A copy of a named preset, with fields overridden (e.g. ``max_seq_len=256``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model config {name!r}; presets are: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if preset.head_dim == preset.d_model // preset.n_head:
        overrides.setdefault("head_dim", None)  # derived: re-derive from the new shape
    return replace(preset, **overrides)
