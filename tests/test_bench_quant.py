import json
import math

import pytest
import torch
from torch import nn

from infer_lab.bench import main
from infer_lab.quant.catalog import METHODS, linear_bits_per_weight, stored_bytes

RATIOS = {"int8_ppl_increase", "gptq4_gap_recovered", "awq4_gap_recovered",
          "int8_speed_vs_fp32_gpt2"}


def test_quant_quick_writes_every_row_and_ratio(tmp_path, capsys):
    out = tmp_path / "quant.json"
    result = main(["quant", "--quick", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["ratios"].keys() == result["ratios"].keys()
    printed = capsys.readouterr().out
    assert "bits/w" in printed and "int8 dynamic (fbgemm)" in printed
    assert all(f"{k}:" in printed for k in RATIOS)
    assert set(data["ratios"]) >= RATIOS
    for key, value in data["ratios"].items():
        # a positive number... or null with a reason (gap ratios may be negative when a
        # calibrated method is worse than RTN on tiny random weights; they must be finite)
        if value is None:
            assert data["ratio_notes"][key], key
        elif key.endswith("gap_recovered") or key == "int8_ppl_increase":
            assert math.isfinite(value), key
        else:
            assert value > 0, key
    for model in ("code_m", "gpt2"):
        rows = data["results"][model]["methods"]
        assert list(rows) == [m.name for m in METHODS]
        fp = rows["fp32"]
        assert fp["available"] and fp["bits_per_weight"] == pytest.approx(32)
        for name, r in rows.items():
            if not r["available"]:
                assert r["reason"], name
                continue
            assert r["weight_bytes"] > 0 and r["tokens_per_s"] > 0, name
            if name != "fp32":
                assert r["weight_bytes"] < fp["weight_bytes"], name
                assert r["bits_per_weight"] < 9, name
            if model == "code_m":
                assert r["ppl"] > 0 and 0 <= r["exact_match"] <= 1, name
    assert "int8 dynamic (fbgemm)" in data["results"]["gpt2"]["methods"]
    # each model's decode rows are timed, alternated, for the spread check
    ran = {f"{model} {name}" for model, key in (("code-m", "code_m"), ("gpt2", "gpt2"))
           for name, r in data["results"][key]["methods"].items() if r["available"]}
    assert set(data["timings"]) == ran
    assert all(len(t) == 1 and t[0] > 0 for t in data["timings"].values())
    assert set(data["load"]) >= {"before", "after", "cores", "busy"}
    assert data["warnings"] == result["warnings"]
    path = data["ratio_notes"].get("int8_speed_vs_fp32_gpt2_path")
    if data["ratios"]["int8_speed_vs_fp32_gpt2"] is not None:
        assert path in {m.name for m in METHODS if m.int8}


def test_stored_bytes_counts_int8_packed_params():
    lin = nn.Linear(64, 32)
    fp = nn.Sequential(lin)
    assert stored_bytes(fp) == (64 * 32 + 32) * 4
    assert linear_bits_per_weight(fp, ["0"]) == pytest.approx(32)
    q = torch.ao.quantization.quantize_dynamic(fp, {nn.Linear}, dtype=torch.qint8)
    # int8 codes, the weight's fp32 scale + int32 zero point, the fp32 bias, and the
    # module's own (unused here) output scale / zero point scalars
    assert 64 * 32 + 8 + 32 * 4 <= stored_bytes(q) <= 64 * 32 + 8 + 32 * 4 + 16
    # bits per weight leaves the bias out: codes + the per-tensor scale and zero point
    assert linear_bits_per_weight(q, ["0"]) == pytest.approx(8 + (8 + 12) * 8 / (64 * 32))
