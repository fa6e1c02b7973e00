"""Hugging Face checkpoints <-> our Transformer (after minGPT's ``from_pretrained``).

A checkpoint is a ``config.json`` (the shape), safetensors files (a dict of named
tensors) and a ``tokenizer.json``. Loading one is three small translations:

* config: HF field names -> :class:`~infer_lab.config.ModelConfig`
  (``n_embd``/``hidden_size`` -> ``d_model``, ``rope_parameters`` -> ``rope_theta``, ...);
* weights: HF tensor names -> ours. Two layouts differ from ours: GPT-2 stores its
  linear layers as ``Conv1D`` with W of shape (in, out), so y = x W; ours are
  ``nn.Linear`` with (out, in) and y = x W^T, so those weights are transposed. And HF
  Llama keeps separate q/k/v projections, which we fuse into one matmul:
  W_qkv = [W_q; W_k; W_v] (one read of x, one kernel launch instead of three);
* tokenizer: ``tokenizer.json`` through :class:`~infer_lab.tokenizer.Tokenizer`.

Finding and reading a checkpoint folder (a path, or a hub name when online) is
:mod:`infer_lab.checkpoints`; :mod:`infer_lab.hf_export` goes back the other way.
``transformers`` is imported inside the functions that need it.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .model import Transformer, rope_frequencies

SUPPORTED = ("gpt2", "llama", "qwen2", "mistral")  # SmolLM checkpoints say "llama"
# -- config --------------------------------------------------------------------------

def config_from_hf(hf_config) -> ModelConfig:
    """A ModelConfig for a transformers config (object or ``config.json`` dict)."""
    if isinstance(hf_config, dict):
        from transformers import AutoConfig

        d = dict(hf_config)
        hf_config = AutoConfig.for_model(_check_type(d.pop("model_type", None)), **d)
    kind = _check_type(getattr(hf_config, "model_type", None))
    return _gpt2_config(hf_config) if kind == "gpt2" else _llama_config(hf_config)


def _check_type(model_type: str | None) -> str:
    if model_type not in SUPPORTED:
        raise ValueError(f"unsupported model_type {model_type!r}: infer_lab loads the "
                         f"families {', '.join(SUPPORTED)} (SmolLM is 'llama')")
    return model_type


def _gpt2_config(c) -> ModelConfig:
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported GPT-2 activation {c.activation_function!r}: our MLP "
                         "uses the tanh-approximate GELU ('gelu_new')")
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx or c.add_cross_attention:
        raise ValueError("unsupported GPT-2 variant: attention must be scaled by "
                         "1/sqrt(head_dim) only, without cross-attention")
    return ModelConfig(vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                       d_model=c.n_embd, d_ff=c.n_inner or 4 * c.n_embd,
                       max_seq_len=c.n_positions, block="gpt2", norm_eps=c.layer_norm_epsilon,
                       tie_embeddings=c.tie_word_embeddings, qkv_bias=True, bias=True)


def _llama_config(c) -> ModelConfig:
    """Llama, Qwen2, Mistral and SmolLM share one block: RMSNorm, RoPE, GQA, SwiGLU."""
    if c.hidden_act != "silu":
        raise ValueError(f"unsupported activation {c.hidden_act!r}: our MLP is SwiGLU (silu)")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise ValueError(f"unsupported: head_dim={head_dim} differs from hidden_size / "
                         f"num_attention_heads = {c.hidden_size // c.num_attention_heads}; "
                         "our attention assumes n_head * head_dim == d_model")
    window = getattr(c, "sliding_window", None)
    sliding = getattr(c, "use_sliding_window", True) and "sliding_attention" in (
        getattr(c, "layer_types", None) or ["sliding_attention"])
    if window is not None and sliding and window < c.max_position_embeddings:
        raise ValueError(f"unsupported: sliding-window attention (window {window} < context "
                         f"{c.max_position_embeddings}); our model attends to all positions")
    rope_theta, rope_scaling = _rope_from_hf(c)
    attention_bias, mlp_bias = getattr(c, "attention_bias", False), getattr(c, "mlp_bias", False)
    return ModelConfig(
        vocab_size=c.vocab_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
        n_kv_head=c.num_key_value_heads or c.num_attention_heads, d_model=c.hidden_size,
        d_ff=c.intermediate_size, max_seq_len=c.max_position_embeddings, block="llama",
        norm_eps=c.rms_norm_eps, rope_theta=rope_theta, rope_scaling=rope_scaling,
        tie_embeddings=c.tie_word_embeddings,
        qkv_bias=c.model_type == "qwen2" or attention_bias,  # Qwen2 biases q, k, v only
        # Our `bias` covers o_proj and the MLP together; a side HF lacks loads as zeros.
        bias=attention_bias or mlp_bias)


def _rope_from_hf(c) -> tuple[float, dict | None]:
    # transformers >= 5 keeps everything in `rope_parameters`; 4.x has rope_theta + rope_scaling.
    p = getattr(c, "rope_parameters", None)
    if p is None:
        p = {"rope_theta": getattr(c, "rope_theta", 10000.0),
             **(getattr(c, "rope_scaling", None) or {})}
    if "rope_theta" not in p and p and all(isinstance(v, dict) for v in p.values()):
        raise ValueError("unsupported: a different RoPE per layer type")
    kind = p.get("rope_type", p.get("type", "default"))
    if p.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", None) or 1.0) != 1.0:
        raise ValueError("unsupported: partial rotary embeddings (partial_rotary_factor != 1)")
    theta = float(p.get("rope_theta", getattr(c, "rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        return theta, {"rope_type": "llama3", **{k: p[k] for k in keys}}
    raise ValueError(f"unsupported rope scaling {kind!r}: only the default and 'llama3' are "
                     "implemented")


# -- weights -------------------------------------------------------------------------

# Per-layer module names, ours -> HF (under "h.{i}." for GPT-2, "layers.{i}." for Llama).
GPT2_NAMES = {"attn_norm": "ln_1", "attn.wqkv": "attn.c_attn", "attn.wo": "attn.c_proj",
              "mlp_norm": "ln_2", "mlp.w1": "mlp.c_fc", "mlp.w2": "mlp.c_proj"}
LLAMA_NAMES = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
               "attn.wo": "self_attn.o_proj", "mlp.w1": "mlp.gate_proj",
               "mlp.w2": "mlp.down_proj", "mlp.w3": "mlp.up_proj"}


def _module_pairs(cfg: ModelConfig) -> list[tuple[str, str, bool]]:
    """(our module, HF module without its 'model.'/'transformer.' prefix, is a Conv1D)."""
    if cfg.block == "gpt2":
        pairs = [("tok_emb", "wte", False), ("pos_emb", "wpe", False), ("norm", "ln_f", False)]
        layer, names = "h", GPT2_NAMES
    else:  # q/k/v are fused separately (see _fuse_qkv)
        pairs = [("tok_emb", "embed_tokens", False), ("norm", "norm", False)]
        layer, names = "layers", LLAMA_NAMES
    for i in range(cfg.n_layer):
        pairs += [(f"layers.{i}.{ours}", f"{layer}.{i}.{theirs}",
                   cfg.block == "gpt2" and not ours.endswith("norm"))
                  for ours, theirs in names.items()]
    return pairs


def state_dict_from_hf(hf_state: dict[str, torch.Tensor],
                       cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from HF tensors (names with or without 'model.'/'transformer.')."""
    sd = {k.removeprefix("model.").removeprefix("transformer."): v for k, v in hf_state.items()}
    out = {}
    for ours, theirs, conv1d in _module_pairs(cfg):
        for suffix in ("weight", "bias"):
            t = sd.pop(f"{theirs}.{suffix}", None)
            if t is not None:
                out[f"{ours}.{suffix}"] = _transpose(t) if conv1d else t
    if cfg.block == "llama":
        _fuse_qkv(sd, out, cfg)
    if cfg.tie_embeddings:  # a tied head is the embedding, whether saved or not
        sd.pop("lm_head.weight", None)
        out["lm_head.weight"] = out.get("tok_emb.weight")
    elif "lm_head.weight" in sd:
        out["lm_head.weight"] = sd.pop("lm_head.weight")
    # Buffers that old checkpoints saved; they are recomputed, never learned.
    left = [k for k in sd if not k.endswith((".inv_freq", ".attn.bias", ".attn.masked_bias"))]
    if left:
        raise ValueError(f"checkpoint tensors our model has no place for: {left[:6]}")
    with torch.device("meta"):
        expected = Transformer(cfg).state_dict()
    like = out.get("tok_emb.weight")
    for k, t in expected.items():
        if k not in out and k.endswith(".bias") and like is not None:
            out[k] = like.new_zeros(t.shape)  # a bias HF does not have is a zero bias
    missing = [k for k in expected if out.get(k) is None]
    if missing:
        raise KeyError(f"the checkpoint lacks tensors for: {missing[:6]}")
    return out


def _transpose(t: torch.Tensor) -> torch.Tensor:
    """Conv1D weight (in, out) <-> nn.Linear weight (out, in); a bias passes unchanged."""
    return t.t().contiguous() if t.ndim == 2 else t


def _fuse_qkv(sd: dict, out: dict, cfg: ModelConfig) -> None:
    for i in range(cfg.n_layer):
        h = f"layers.{i}.self_attn."
        ws = [sd.pop(f"{h}{p}_proj.weight", None) for p in "qkv"]
        if any(w is None for w in ws):
            continue  # reported as missing by the caller
        out[f"layers.{i}.attn.wqkv.weight"] = torch.cat(ws)  # (d + 2 kv_dim, d)
        bs = [sd.pop(f"{h}{p}_proj.bias", None) for p in "qkv"]
        if any(b is not None for b in bs):
            out[f"layers.{i}.attn.wqkv.bias"] = torch.cat(
                [b if b is not None else w.new_zeros(w.shape[0]) for b, w in zip(bs, ws)])


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Transformer:
    """A Transformer holding ``state`` (already on its device and dtype), in eval mode.

    Built on the meta device, so no memory or time goes into random weights that the
    checkpoint would overwrite.
    """
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:  # assign=True made two Parameters; make them one again
        model.lm_head.weight = model.tok_emb.weight
    if getattr(model, "inv_freq", None) is not None:
        # Not in any checkpoint; kept in fp32 (as HF does) because bf16 angles drift with position.
        model.inv_freq = rope_frequencies(cfg).to(state["tok_emb.weight"].device)
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"tensors left unset after loading: {meta}")
    return model.eval()


def from_hf_model(hf_model) -> Transformer:
    """Our Transformer with the weights of an in-memory transformers model."""
    cfg = config_from_hf(hf_model.config)
    # Cloned, so the two models do not share storage (editing one would change the other).
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    return build_model(cfg, state_dict_from_hf(state, cfg))


# -- files, the hub and the tokenizer --------------------------------------------------
