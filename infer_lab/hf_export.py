"""Our Transformer -> a transformers model with the same weights.

The inverse of :mod:`infer_lab.hf`, so that a benchmark can run transformers' own
``generate`` on exactly our weights (and a test can check the round trip is exact).
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .hf import _module_pairs, _transpose
from .model import Transformer


def to_hf(model: Transformer):
    """A transformers model holding the same weights (same device and dtype), in eval mode.

    gpt2 blocks -> GPT2LMHeadModel; llama blocks -> Qwen2ForCausalLM when only q/k/v have
    biases, else LlamaForCausalLM (with attention and MLP biases when ``cfg.bias``).
    """
    import transformers as T

    cfg = model.config
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if cfg.block == "gpt2":
        if cfg.n_kv_head != cfg.n_head:
            raise ValueError("GPT-2 has no grouped-query attention: n_kv_head must equal n_head")
        hf_cfg = T.GPT2Config(
            n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff,
            n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            **common)
    else:
        qwen = cfg.qkv_bias and not cfg.bias
        extra = {} if qwen else dict(attention_bias=cfg.bias, mlp_bias=cfg.bias,
                                     head_dim=cfg.head_dim)
        hf_cfg = (T.Qwen2Config if qwen else T.LlamaConfig)(
            hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
            max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta, rope_scaling=dict(cfg.rope_scaling or {}) or None,
            **extra, **common)
    with torch.device(model.device):  # RoPE buffers are made in fp32 there, as HF loads do
        hf = T.AutoModelForCausalLM.from_config(hf_cfg, dtype=model.dtype)
    state = state_dict_to_hf(model.state_dict(), cfg)
    for k, t in hf.state_dict().items():  # e.g. GPT-2 biases our bias-free config lacks
        if k not in state and k.endswith(".bias"):
            state[k] = torch.zeros_like(t)
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def state_dict_to_hf(state: dict[str, torch.Tensor],
                     cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`infer_lab.hf.state_dict_from_hf`, with the prefixes transformers uses."""
    prefix = "transformer." if cfg.block == "gpt2" else "model."
    out = {"lm_head.weight": state["lm_head.weight"]}
    for ours, theirs, conv1d in _module_pairs(cfg):
        for suffix in ("weight", "bias"):
            t = state.get(f"{ours}.{suffix}")
            if t is not None:
                out[f"{prefix}{theirs}.{suffix}"] = _transpose(t) if conv1d else t
    if cfg.block == "gpt2":
        return out
    for i in range(cfg.n_layer):
        kv_dim = cfg.n_kv_head * cfg.head_dim
        for suffix in ("weight", "bias"):
            fused = state.get(f"layers.{i}.attn.wqkv.{suffix}")
            if fused is not None:
                for p, t in zip("qkv", fused.split([cfg.d_model, kv_dim, kv_dim])):
                    out[f"model.layers.{i}.self_attn.{p}_proj.{suffix}"] = t
    return out
