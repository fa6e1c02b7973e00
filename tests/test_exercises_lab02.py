"""Lab 02's exercises against the package code they teach, and checkers that cannot be fooled:
GPTQ's loop = quant.gptq, AWQ's search = quant.awq, the LLM.int8() split = quant.llm_int8,
KIVI's keys = quant.kv's int4 cache; the dtype of pack_int4 is part of the answer; any
correct rounding of halves passes (the cases hold no exact ties)."""

import random
from unittest import mock

import pytest
import torch

from infer_lab.exercises import EXERCISES
from infer_lab.exercises import quantization as ex
from infer_lab.exercises import quantization_methods as qm
from infer_lab.exercises import quantization_outliers as qo
from infer_lab.quant import awq, gptq, llm_int8
from infer_lab.quant.kv import QuantizedKVCache
from infer_lab.quant.primitives import pack_int4, quantize

LAB02 = [e.name for e in ex.EXERCISES]


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))


def test_lab_order_and_kinds():
    assert LAB02 == ["absmax_quantize", "group_quantize", "pack_int4", "llm_int8_matmul",
                     "gptq_quantize", "awq_scale_search", "kivi_quantize_keys"]
    kinds = {e.name: e.kind for e in ex.EXERCISES}
    assert {n for n, k in kinds.items() if k == "technique"} == {
        "llm_int8_matmul", "gptq_quantize", "awq_scale_search", "kivi_quantize_keys"}
    assert len(ex.PREDICTIONS) >= 2 and all(p.name.startswith("quant_") for p in ex.PREDICTIONS)


# -- the warm-ups equal the package's primitives ---------------------------------------------
def test_warm_ups_equal_the_primitives():
    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4, 8):
        assert torch.allclose(ex.absmax_quantize(w, bits),
                              quantize(w, bits, "tensor").dequantize(), atol=1e-6)
        for g in (8, 32, 64):
            assert torch.allclose(ex.group_quantize(w, bits, g),
                                  quantize(w, bits, "group", g).dequantize(), atol=1e-6)
    q = torch.randint(0, 16, (3, 10), dtype=torch.uint8)
    assert torch.equal(ex.pack_int4(q), pack_int4(q))


# -- GPTQ ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("group", [None, 8, 16])
def test_gptq_loop_equals_the_package(seed, group):
    W, H, bits, _ = qm.gptq_case(6, 32, 3, 8, seed).args
    mine = qm.gptq_quantize(W, H, bits, group or 32)  # one group per row = group_size None
    # damp=0: H is already damped; fp32 scales, as the exercise keeps them
    pkg = gptq.gptq_quantize_weight(W, H, bits, group_size=group, damp=0.0, block_size=8,
                                    scale_dtype=torch.float32)[3]
    assert torch.allclose(mine.float(), pkg, rtol=1e-5, atol=1e-6)


def test_gptq_beats_rtn_on_the_output_and_the_fixed_hinv_loop_is_worse():
    x = qm.calib_inputs(256, 32, 1).double()
    H = 2 * x.T @ x / len(x)
    H += 0.01 * H.diagonal().mean() * torch.eye(32, dtype=H.dtype)
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    err = lambda wq: (x @ (W - wq).T).pow(2).mean().item()
    right = err(qm.gptq_quantize(W, H, 3, 32))
    assert right < err(qm._gptq_rtn(W, H, 3, 32))
    assert right < err(qm._gptq_fixed_hinv(W, H, 3, 32))  # the markdown's old formula


# -- AWQ -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_awq_search_equals_the_package(seed):
    W, x, bits, g, grid, _ = qm.awq_case(8, 32, 3, 8, 10, seed).args
    pkg_rtn = lambda w, b, gs: awq._rtn(w, b, gs, True)  # the package's quantizer: fp16 scales
    mine = qm.awq_scale_search(W, x, bits, g, grid, pkg_rtn)
    pkg = awq.awq_search_scales(W, x.abs().mean(0), x, bits, g, grid)
    assert torch.allclose(mine, pkg)


def test_awq_cases_do_search():
    """In most cases the best alpha is not 0 (else s = 1 and a search-free answer passes)."""
    picked = [not torch.allclose(qm.awq_scale_search(*c.args), torch.ones(c.args[0].shape[1]))
              for c in EXERCISES["awq_scale_search"].cases(seed=0)]
    assert sum(picked) >= 0.75 * len(picked)


# -- LLM.int8() ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_int8_split_equals_the_package(seed):
    x, wq, cw, t = qo._random_int8_case(random.Random(seed)).args
    assert torch.equal(qo.llm_int8_matmul(x, wq, cw, t),
                       llm_int8.int8_matmul_decomposed(x, wq, cw, t))


def test_int8_split_equals_the_module():
    lin = torch.nn.Linear(32, 8, bias=False)
    m = llm_int8.LLMInt8Linear.from_linear(lin)
    x = torch.randn(5, 32)
    x[2, 3] = 40.0
    mine = qo.llm_int8_matmul(x, m.qweight, m.absmax.float(), m.threshold)
    assert torch.allclose(mine, m(x), atol=1e-6) and m.last_outliers == 1


# -- KIVI ------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,G", [(32, 8), (37, 8), (5, 8), (64, 32)])
def test_kivi_keys_equal_the_int4_cache(T, G):
    k = torch.randn(2, 3, T, 16, generator=torch.Generator().manual_seed(T))
    k[..., 5] *= 30  # an outlier channel
    cache = QuantizedKVCache(1, 2, 3, 16, 64, bits=4, group=G)
    got, _ = cache.update(0, k, k, cache.begin(T, torch.arange(T)[None].expand(2, -1)))
    assert torch.equal(got, qo.kivi_quantize_keys(k, G, 4, torch.float16))


def test_kivi_keys_equal_the_cache_token_by_token():
    k = torch.randn(1, 2, 20, 8, generator=torch.Generator().manual_seed(0))
    cache = QuantizedKVCache(1, 1, 2, 8, 32, bits=4, group=8)
    for t in range(20):
        got, _ = cache.update(0, k[:, :, t:t + 1], k[:, :, t:t + 1],
                              cache.begin(1, torch.tensor([[t]])))
    assert torch.equal(got, qo.kivi_quantize_keys(k, 8, 4, torch.float16))


# -- checkers that cannot be fooled -------------------------------------------------------------
@pytest.mark.parametrize("wrong", [lambda q: ex.pack_int4(q).long(),
                                   lambda q: ex.pack_int4(q).float(),
                                   lambda q: ex.pack_int4(q).to(torch.int32)],
                         ids=["int64", "float", "int32"])
def test_pack_int4_dtype_is_part_of_the_answer(wrong):
    r = EXERCISES["pack_int4"].check(wrong, seed=0, verbose=False)
    assert not r.passed and "dtype" in r.message


def test_pack_int4_equivalent_integer_answers_pass():
    plus = lambda q: q[..., 0::2] + q[..., 1::2] * 16  # uint8 arithmetic: the same bytes
    assert EXERCISES["pack_int4"].check(plus, seed=0, verbose=False).passed


ROUNDINGS = {
    "floor(x + 0.5)": lambda x: torch.floor(x + 0.5),
    "half away from zero": lambda x: torch.sign(x) * torch.floor(x.abs() + 0.5),
}


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", [n for n in LAB02 if n != "pack_int4"])
def test_any_rounding_of_halves_passes(name, rounding):
    """torch.round rounds halves to even; a learner's floor(x + 0.5) is just as right. The
    cases hold no exact ties, so every way of rounding a half passes."""
    e, torch_round = EXERCISES[name], torch.round

    def learner(*args):
        with mock.patch.object(torch, "round", ROUNDINGS[rounding]):
            return e.reference(*args)

    assert ROUNDINGS[rounding](torch.tensor([-1.5, 2.5])).tolist() != \
        torch_round(torch.tensor([-1.5, 2.5])).tolist()  # the two do differ on a tie
    for seed in (0, 1):
        assert e.check(learner, seed=seed, verbose=False).passed, (name, rounding, seed)


@pytest.mark.parametrize("name", LAB02)
def test_each_mistake_is_named_at_its_first_failure(name):
    e = EXERCISES[name]
    for m in e.mistakes:
        r = e.check(m.fn, seed=3, verbose=False)
        assert not r.passed and r.mistake == m.name, (m.name, r.mistake)
