"""GPTQ and AWQ: both must beat round-to-nearest where their assumptions hold, store
codes on the RTN grid of their own scales, and run as ordinary int4 modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infer_lab.config import ModelConfig
from infer_lab.model import Transformer
from infer_lab.quant.apply import is_quantized
from infer_lab.quant.awq import (
    AWQLinear,
    awq_clip,
    awq_quantize_model,
    awq_search_scales,
)
from infer_lab.quant.calibrate import collect_inputs
from infer_lab.quant.gptq import (
    gptq_quantize_model,
    gptq_quantize_weight,
    hessian,
    int4_from_codes,
)
from infer_lab.quant.int4 import Int4Linear
from infer_lab.quant.primitives import dequantize_codes, quantize

OUT, IN, N, GS = 48, 128, 1024, 32


def correlated_inputs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(IN, IN, generator=g) / IN ** 0.5
    return torch.randn(N, IN, generator=g) @ mix + 0.05 * torch.randn(N, IN, generator=g)


def outlier_inputs(seed: int = 0) -> torch.Tensor:
    """Mostly small activations, a few channels 30x larger (the AWQ observation)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, IN, generator=g)
    x[:, torch.randperm(IN, generator=g)[:4]] *= 30
    return x


def weight(seed: int = 1) -> torch.Tensor:
    return torch.randn(OUT, IN, generator=torch.Generator().manual_seed(seed))


def rtn(W: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    return quantize(W, 4, "group", GS, symmetric, torch.float16).dequantize()


def output_err(x: torch.Tensor, W: torch.Tensor, Wq: torch.Tensor) -> float:
    return (x @ (W - Wq).T).pow(2).mean().item()


# -- GPTQ on one layer ------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_reduces_output_error_vs_rtn_on_correlated_inputs(symmetric):
    x, W = correlated_inputs(), weight()
    *_, W_deq = gptq_quantize_weight(W, hessian(x), 4, GS, block_size=64,
                                     symmetric=symmetric)
    assert output_err(x, W, W_deq) < 0.7 * output_err(x, W, rtn(W, symmetric))


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_codes_lie_on_rtn_grid_of_their_scales(symmetric):
    W = weight()
    codes, scales, zeros, W_deq = gptq_quantize_weight(W, hessian(correlated_inputs()), 4,
                                                       GS, symmetric=symmetric)
    assert codes.shape == W.shape and scales.shape == (OUT, IN // GS)
    lo, hi = (-7, 7) if symmetric else (0, 15)
    assert codes.min() >= lo and codes.max() <= hi
    assert torch.equal(scales, scales.half().float())  # storable in fp16 without change
    assert torch.equal(W_deq, dequantize_codes(codes, scales, zeros, "group", GS))


def test_gptq_with_identity_hessian_is_rtn():
    # Uncorrelated unit inputs: H^-1 is diagonal, no error is worth propagating, so
    # GPTQ must reduce exactly to round-to-nearest.
    W = weight()
    codes, scales, _, W_deq = gptq_quantize_weight(W, torch.eye(IN), 4, GS)
    ref = quantize(W, 4, "group", GS, True, torch.float16)
    assert torch.equal(codes, ref.q)
    assert torch.equal(scales, ref.scale.float())
    assert torch.allclose(W_deq, ref.dequantize())


def test_gptq_block_size_does_not_change_the_result_much():
    # Lazy batching is an exact reordering of the same updates, up to rounding ties.
    x, W = correlated_inputs(), weight()
    H = hessian(x)
    a = gptq_quantize_weight(W, H, 4, GS, block_size=32)[3]
    b = gptq_quantize_weight(W, H, 4, GS, block_size=128)[3]
    assert (a != b).float().mean() < 0.01


def test_gptq_int4_module_forward_is_matmul_with_dequantized_weight():
    lin = nn.Linear(IN, OUT)
    x = correlated_inputs()
    codes, scales, zeros, W_deq = gptq_quantize_weight(lin.weight, hessian(x), 4, GS)
    m = int4_from_codes(lin, codes, scales, zeros, GS)
    assert isinstance(m, Int4Linear)
    assert torch.equal(m.codes(), codes)
    assert torch.equal(m.dequantized_weight(), W_deq)
    torch.testing.assert_close(m(x[:8]), x[:8] @ W_deq.T + lin.bias)


def test_gptq_bad_arguments_raise_clearly():
    W, H = weight(), torch.eye(IN)
    with pytest.raises(ValueError, match="group_size"):
        gptq_quantize_weight(W, H, 4, 48)
    with pytest.raises(ValueError, match="group_size"):
        gptq_quantize_weight(W, H, 4, 0)
    with pytest.raises(ValueError, match="bits"):
        gptq_quantize_weight(W, H, 9, GS)
    with pytest.raises(ValueError, match="block_size"):
        gptq_quantize_weight(W, H, 4, GS, block_size=48)
    with pytest.raises(ValueError, match="H must be"):
        gptq_quantize_weight(W, torch.eye(IN + 1), 4, GS)
    with pytest.raises(ValueError, match="NaN"):
        gptq_quantize_weight(W.index_fill(1, torch.tensor([3]), float("nan")), H, 4, GS)


def test_gptq_ignores_dead_input_channels():
    x = correlated_inputs()
    x[:, :5] = 0  # channels never active: H has zero rows, Cholesky must still work
    *_, W_deq = gptq_quantize_weight(weight(), hessian(x), 4, GS)
    assert torch.isfinite(W_deq).all() and (W_deq[:, :5] == 0).all()


# -- AWQ on one layer -------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
def test_awq_reduces_output_error_vs_rtn_with_outlier_channels(symmetric):
    x, W = outlier_inputs(), weight()
    s = awq_search_scales(W, x.abs().mean(0), x, 4, GS, symmetric=symmetric)
    W_deq = rtn(W * s, symmetric) / s
    assert output_err(x, W, W_deq) < 0.7 * output_err(x, W, rtn(W, symmetric))
    assert s.shape == (IN,) and (s > 0).all()


def test_awq_alpha_zero_only_is_rtn():
    x, W = outlier_inputs(), weight()
    s = awq_search_scales(W, x.abs().mean(0), x, 4, GS, grid=1)
    assert torch.equal(s, torch.ones(IN))


def test_awq_linear_forward_is_matmul_with_dequantized_weight():
    lin, x = nn.Linear(IN, OUT), outlier_inputs()
    s = awq_search_scales(lin.weight, x.abs().mean(0), x, 4, GS)
    m = AWQLinear.from_linear(lin, s, GS)
    W_eff = m.dequantized_weight()
    torch.testing.assert_close(m(x[:8]), x[:8] @ W_eff.T + lin.bias, rtol=1e-4, atol=1e-4)
    # the inner codes lie on the RTN grid of the scaled weight's own group scales
    ref = quantize(lin.weight.detach() * s, 4, "group", GS, True, torch.float16)
    assert torch.equal(m.inner.codes(), ref.q)


def test_awq_clip_never_increases_any_groups_partial_output_error():
    x, W = torch.randn(N, IN, generator=torch.Generator().manual_seed(2)), weight()
    Wc = awq_clip(W, x, 4, GS)
    assert (Wc.abs() <= W.abs()).all()  # clipping only ever shrinks weights

    def partial_err(Wq):  # per (row, group): || x_g . (w_g - q_g) ||^2
        d = (W - Wq).reshape(OUT, IN // GS, GS)
        return torch.einsum("ngk,ogk->nog", x.reshape(N, IN // GS, GS), d).pow(2).mean(0)

    assert (partial_err(rtn(Wc)) <= partial_err(rtn(W)) + 1e-6).all()
    assert partial_err(rtn(Wc)).sum() < partial_err(rtn(W)).sum()


def test_awq_bad_arguments_raise_clearly():
    x, W = outlier_inputs(), weight()
    with pytest.raises(ValueError, match="group_size"):
        awq_search_scales(W, x.abs().mean(0), x, 4, 48)
    with pytest.raises(ValueError, match="bits"):
        awq_search_scales(W, x.abs().mean(0), x, 1, GS)
    with pytest.raises(ValueError, match="grid"):
        awq_search_scales(W, x.abs().mean(0), x, 4, GS, grid=0)


# -- whole model ------------------------------------------------------------------------
CFG = ModelConfig(vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=128,
                  max_seq_len=64)


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(CFG).eval()


CALIB = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))


def test_collect_inputs_captures_each_linear_input():
    xs = collect_inputs(tiny_model(), CALIB, ["layers.0.attn.wqkv", "layers.1.mlp.w2"])
    assert xs["layers.0.attn.wqkv"].shape == (4 * 32, 64)
    assert xs["layers.1.mlp.w2"].shape == (4 * 32, 128)


@pytest.mark.parametrize("method", [gptq_quantize_model, awq_quantize_model])
def test_model_quantization_swaps_block_linears_and_stays_close(method):
    model = tiny_model()
    with torch.no_grad():
        ref = model(CALIB)
    method(model, CALIB, 4, 32)
    kinds = {n: type(m) for n, m in model.named_modules()}
    want = Int4Linear if method is gptq_quantize_model else AWQLinear
    for i in range(CFG.n_layer):
        for n in ("attn.wqkv", "attn.wo", "mlp.w1", "mlp.w2", "mlp.w3"):
            assert kinds[f"layers.{i}.{n}"] is want
    assert type(model.lm_head) is nn.Linear  # tied to the embedding: left alone
    assert is_quantized(model)
    with torch.no_grad():
        out = model(CALIB)
    assert torch.isfinite(out).all()
    assert (out - ref).pow(2).mean() < 0.05 * ref.pow(2).mean()
    with pytest.raises(ValueError, match="already quantized"):
        method(model, CALIB, 4, 32)


def test_awq_model_with_clipping_stays_close():
    model = tiny_model()
    with torch.no_grad():
        ref = model(CALIB)
        out = awq_quantize_model(model, CALIB, 4, 32, clip=True)(CALIB)
    assert (out - ref).pow(2).mean() < 0.05 * ref.pow(2).mean()


@pytest.mark.parametrize("method", [gptq_quantize_model, awq_quantize_model])
def test_model_bad_group_size_or_bits_fails_before_any_swap(method):
    model = tiny_model()
    with pytest.raises(ValueError, match="group_size"):
        method(model, CALIB, 4, 48)  # divides neither 64 nor 128
    with pytest.raises(ValueError, match="bits"):
        method(model, CALIB, 8, 32)
    assert not is_quantized(model)


def test_collect_inputs_stops_each_forward_once_every_layer_has_its_input(tiny):
    """Early exit changes nothing recorded, and the layers after the last named one
    (and the vocabulary projection) never run."""
    from infer_lab.quant.calibrate import collect_inputs

    ids = torch.randint(0, tiny.config.vocab_size, (3, 12))
    names = ["layers.0.attn.wqkv", "layers.0.mlp.w2", "layers.0.mlp.w3"]
    ran = []
    hook = tiny.lm_head.register_forward_hook(lambda *a: ran.append("lm_head"))
    tiny.layers[1].register_forward_hook(lambda *a: ran.append("layers.1"))
    got = collect_inputs(tiny, ids, names, batch_size=2)
    hook.remove()
    assert ran == []  # two batches, each stopped inside block 0
    want = {}
    hooks = [tiny.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: want.setdefault(n, []).append(a[0].flatten(0, -2)))
        for n in names]
    with torch.no_grad():
        tiny(ids[:2]), tiny(ids[2:])
    for h in hooks:
        h.remove()
    for n in names:
        assert torch.equal(got[n], torch.cat(want[n]))


def test_one_pass_walk_gives_each_layer_the_inputs_of_the_quadratic_walk(tiny):
    """quantize_blockwise feeds block i the hidden states that the quantized block i-1
    output. Each layer must see the same inputs as in the quadratic walk, which reruns the
    whole model (earlier blocks already swapped) to collect every block's inputs."""
    import copy

    from infer_lab.quant.calibrate import quantize_blockwise
    from infer_lab.quant.int8 import Int8Linear
    from infer_lab.surgery import block_index, linears, set_module

    torch.manual_seed(3)
    ids = torch.randint(0, tiny.config.vocab_size, (10, 16))  # two batches of 8 and 2
    seen: dict[str, torch.Tensor] = {}

    def make(name, linear, x):
        seen[name] = x
        return Int8Linear.from_linear(linear)

    fast = quantize_blockwise(copy.deepcopy(tiny), ids, make)
    slow = copy.deepcopy(tiny)
    names = list(linears(slow))
    for i in range(len(slow.layers)):
        group = [n for n in names if block_index(n) == i]
        xs = collect_inputs(slow, ids, group)
        for n in group:
            torch.testing.assert_close(seen[n], xs[n], atol=1e-6, rtol=1e-6)
            set_module(slow, n, Int8Linear.from_linear(slow.get_submodule(n)))
    assert set(seen) == set(names)
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), slow(ids), atol=1e-6, rtol=1e-6)
