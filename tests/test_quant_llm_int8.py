"""LLM.int8(): the decomposition is exact for outliers and close for the rest."""

import copy

import pytest
import torch
from torch import nn

from infer_lab.config import ModelConfig
from infer_lab.model import Transformer
from infer_lab.quant.llm_int8 import (LLMInt8Linear, activation_outliers,
                                      int8_matmul_decomposed, llm_int8_model, outlier_columns)


def test_outlier_dimensions_found():
    x = torch.randn(5, 16)
    x[2, 3] = 9.0
    x[0, 11] = -7.0
    assert outlier_columns(x).nonzero().flatten().tolist() == [3, 11]


def test_decomposition_beats_plain_int8_when_outliers_exist():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    x[:, 5] *= 40  # an outlier feature dimension, as in large models' activations
    ref = lin(x)
    mixed = LLMInt8Linear.from_linear(lin)(x)
    plain = LLMInt8Linear.from_linear(lin, threshold=float("inf"))(x)  # no decomposition
    err_mixed = (mixed - ref).abs().max()
    err_plain = (plain - ref).abs().max()
    assert err_mixed < err_plain / 4
    assert err_mixed < 0.05


def test_int8_part_matches_float_matmul_of_codes():
    torch.manual_seed(1)
    w = torch.randn(16, 32)
    q = LLMInt8Linear.from_linear(nn.Linear(32, 16, bias=False).requires_grad_(False))
    q.qweight.copy_(torch.round(w * 127 / w.abs().amax(1, keepdim=True)).to(torch.int8))
    q.absmax.copy_(w.abs().amax(1, keepdim=True).half())
    x = torch.randn(4, 32)
    y = int8_matmul_decomposed(x, q.qweight, q.absmax.float())
    torch.testing.assert_close(y, x @ q.dequantized_weight().T, atol=0.05, rtol=0.02)


def test_model_swap_close_to_fp32_and_refuses_double_quantization():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, n_layer=2, n_head=4, d_model=64)).eval()
    idx = torch.randint(0, 97, (2, 12))
    ref = model(idx)
    q = llm_int8_model(copy.deepcopy(model))
    # wqkv, wo, w1, w2, w3 in each of 2 layers; the tied lm_head stays in floating point
    assert sum(isinstance(m, LLMInt8Linear) for m in q.modules()) == 2 * 5
    assert type(q.lm_head) is nn.Linear
    out = q(idx)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    with pytest.raises(ValueError, match="already quantized"):
        llm_int8_model(q)


def test_bad_weights_raise():
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        LLMInt8Linear.from_linear(lin)


def test_activation_outlier_report():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, n_layer=1, n_head=2, d_model=32)).eval()
    stats = activation_outliers(model, torch.randint(0, 97, (1, 8)), threshold=0.0)
    assert set(stats) >= {"layers.0.attn.wqkv", "layers.0.mlp.w2", "lm_head"}
    assert stats["layers.0.mlp.w2"]["outlier_dims"] == stats["layers.0.mlp.w2"]["in_features"]
