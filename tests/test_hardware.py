import math

import pytest
import torch

from infer_lab.config import ModelConfig, get_config
from infer_lab.hardware import (PRESETS, HardwareSpec, default_dtype, device_name,
                                dtype_key, matmul_params, measure_bandwidth,
                                measure_matmul_flops, probe, roofline)

# 100 GB/s and 10 TFLOP/s: ridge point at 100 FLOP/byte.
HW = HardwareSpec("toy", "gpu", 100.0, {"fp32": 5.0, "bf16": 10.0})
CFG = ModelConfig(vocab_size=1000, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=128)


def test_roofline_known_numbers():
    p = CFG.n_params  # tied llama: every parameter is multiplied with each step
    assert matmul_params(CFG) == p
    r = roofline(CFG, batch=1, context=0, bytes_per_param=2, hw=HW)
    assert r.weight_bytes == 2 * p and r.kv_bytes == 0
    assert r.flops_per_token == 2 * p
    assert r.intensity == pytest.approx(1.0)  # 2 FLOPs per 2-byte weight
    assert r.bound == "memory"
    assert r.max_tokens_per_s == pytest.approx(100e9 / (2 * p))
    assert r.achieved(r.max_tokens_per_s / 4) == pytest.approx(0.25)
    assert r.achieved_bandwidth_gbs(r.max_tokens_per_s) == pytest.approx(100.0)


def test_roofline_kv_and_attention_terms():
    r = roofline(CFG, batch=3, context=100, bytes_per_param=2, hw=HW)
    kv_per_token = 2 * CFG.n_layer * CFG.n_kv_head * CFG.head_dim * 2  # K and V, bf16
    assert r.kv_bytes == 3 * 100 * kv_per_token
    assert r.flops_per_token == 2 * CFG.n_params + 4 * CFG.n_layer * CFG.d_model * 100
    assert r.flops_per_step == 3 * r.flops_per_token
    assert r.bytes_per_step == r.weight_bytes + r.kv_bytes


def test_roofline_bound_flips_at_the_ridge():
    # context 0, 2-byte weights: intensity == batch, ridge == 100 FLOP/byte
    assert roofline(CFG, batch=50, bytes_per_param=2, hw=HW).bound == "memory"
    big = roofline(CFG, batch=200, bytes_per_param=2, hw=HW)
    assert big.bound == "compute"
    assert big.max_tokens_per_s == pytest.approx(10e12 / (2 * CFG.n_params))


def test_roofline_dtype_defaults():
    r32 = roofline(CFG, bytes_per_param=4, hw=HW)
    assert r32.compute_dtype == "fp32"
    assert r32.kv_bytes == 0
    r4 = roofline(CFG, context=10, bytes_per_param=0.5, hw=HW)
    assert r4.compute_dtype == "bf16"
    assert r4.kv_bytes == 10 * CFG.kv_bytes_per_token(2)  # 4-bit weights, 16-bit cache


def test_matmul_params_skips_lookup_tables():
    untied = get_config("llama-2-7b")
    assert matmul_params(untied) == untied.n_params - 32000 * 4096
    gpt2 = get_config("gpt2")
    assert matmul_params(gpt2) == gpt2.n_params - 1024 * 768


def test_roofline_real_shape_h100():
    # Llama-2-7B in bf16 at batch 1 on an H100 SXM: ~3350 GB/s / 13.2 GB ~ 250 tokens/s.
    r = roofline(get_config("llama-2-7b"), 1, 0, 2, hw=PRESETS["H100 SXM"])
    assert r.bound == "memory"
    assert 230 < r.max_tokens_per_s < 270


def test_roofline_rejects_bad_input():
    with pytest.raises(ValueError):
        roofline(CFG, hw=None)
    with pytest.raises(ValueError):
        roofline(CFG, batch=0, hw=HW)


def test_presets_are_spec_figures():
    assert {"H100 SXM", "A100 80GB SXM", "L4", "T4", "RTX 4090"} <= set(PRESETS)
    kinds = {s.kind for s in PRESETS.values()}
    assert {"gpu", "apple", "cpu"} <= kinds
    for s in PRESETS.values():
        assert s.source == "spec sheet"
        assert s.mem_bandwidth_gbs > 0 and s.flops("fp32") > 0
        assert s.ridge("bf16") > 0
    # no bf16 on a T4: fall back to its fp16 tensor cores
    assert PRESETS["T4"].flops("bf16") == PRESETS["T4"].flops("fp16")
    assert PRESETS["H100 SXM"].flops(torch.bfloat16) == pytest.approx(989.4e12)


def test_dtype_key():
    assert dtype_key(torch.float32) == "fp32" and dtype_key(torch.bfloat16) == "bf16"
    assert dtype_key(torch.float8_e4m3fn) == "fp8" and dtype_key("int8") == "int8"


def test_device_name_and_default_dtype():
    assert isinstance(device_name("cpu"), str) and device_name("cpu")
    assert default_dtype("cpu") == torch.float32


def test_measurements_are_positive_and_quick():
    bw = measure_bandwidth("cpu", size_mb=4, repeats=2)
    fl = measure_matmul_flops("cpu", torch.float32, n=64, repeats=2)
    assert math.isfinite(bw) and bw > 0
    assert math.isfinite(fl) and fl > 0


def test_probe_is_labelled_measured():
    hw = probe("cpu", bandwidth_mb=4, matmul_n=64, repeats=2)
    assert hw.source == "measured" and hw.kind == "cpu"
    assert set(hw.tflops) == {"fp32"}
    r = roofline(CFG, bytes_per_param=4, hw=hw)
    assert r.max_tokens_per_s > 0
