import json
import math

import pytest

from infer_lab.bench import main

RATIOS = {"kd_vs_ce_student_ppl", "structured50_mlp_speedup", "prune_then_distill_recovery",
          "unstructured50_ppl_increase", "unstructured50_speedup", "structured25_mlp_speedup"}
ROWS = ["code-m", "student CE", "student KD", "magnitude 50%", "2:4", "MLP -25%", "MLP -50%",
        "KV groups -50%", "layers -1", "MLP -50% + KD"]


def test_compress_quick_writes_every_row_and_ratio(tmp_path, capsys):
    out = tmp_path / "compress.json"
    result = main(["compress", "--quick", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["ratios"].keys() == result["ratios"].keys() >= RATIOS
    printed = capsys.readouterr().out
    assert all(f"{k}:" in printed for k in RATIOS) and "exact match" in printed
    rows = data["results"]
    assert list(rows) == ROWS
    base = rows["code-m"]
    for name, r in rows.items():
        assert r["params"] > 0 and r["tokens_per_s"] > 0, name
        assert r["ppl"] > 0 and 0 <= r["exact_match"] <= 1, name
    # unstructured pruning zeroes weights but keeps every matrix; structured shrinks them
    for name in ("magnitude 50%", "2:4"):
        assert rows[name]["params"] == base["params"]
        assert rows[name]["nonzero_params"] < base["params"]
        assert rows[name]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    for name in ("MLP -25%", "MLP -50%", "KV groups -50%", "layers -1", "MLP -50% + KD"):
        assert rows[name]["params"] < base["params"], name
    assert rows["MLP -50%"]["params"] < rows["MLP -25%"]["params"]
    assert rows["student KD"]["params"] == rows["student CE"]["params"] < base["params"]
    assert rows["student KD"]["steps"] == rows["student CE"]["steps"] == 3
    for key, value in data["ratios"].items():
        if value is None:
            assert data["ratio_notes"][key], key
        else:
            assert math.isfinite(value), key
    # every decode row is timed (interleaved) for the spread check; the load is recorded
    assert list(data["timings"]) == ROWS
    assert all(len(t) == 1 and t[0] > 0 for t in data["timings"].values())
    assert "times_s" not in rows["code-m"]
    assert set(data["load"]) >= {"before", "after", "cores", "busy"}
    assert data["warnings"] == result["warnings"]
    assert all(isinstance(w, str) for w in data["warnings"])
