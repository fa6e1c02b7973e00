"""`python -m infer_lab.bench speculative --quick` runs end to end and reports its ratios."""

import json
import math

from infer_lab.bench import main


def test_bench_speculative_quick_writes_ratios(tmp_path, capsys):
    out = tmp_path / "spec.json"
    result = main(["speculative", "--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    for key in ("spec_speedup_best", "spec_vs_theory", "prompt_lookup_speedup_edit",
                "ours_vs_hf_assisted"):
        v = saved["ratios"][key]
        assert isinstance(v, float) and math.isfinite(v) and v > 0, key
    assert set(saved["figures"]["speculative"]) == {"1", "2"}
    assert 0 <= result["figures"]["speculative"][1]["alpha"] <= 1
    assert "code-s draft, k=1" in capsys.readouterr().out
