"""`python -m infer_lab.bench speculative --quick` runs end to end and reports its ratios."""

import json
import math

from infer_lab.bench import main


def test_bench_speculative_quick_writes_ratios(tmp_path, capsys):
    out = tmp_path / "spec.json"
    result = main(["speculative", "--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    for key in ("spec_speedup_best", "spec_vs_theory", "prompt_lookup_speedup_edit",
                "ours_vs_hf_assisted", "spec_speedup_hybrid", "self_spec_speedup",
                "prompt_lookup_speedup_plain", "ours_vs_hf_prompt_lookup"):
        v = saved["ratios"][key]
        assert isinstance(v, float) and math.isfinite(v) and v > 0, key
    assert set(saved["figures"]["speculative"]) == {"1", "2"}
    assert 0 <= result["figures"]["speculative"][1]["alpha"] <= 1
    assert set(saved["figures"]["hybrid"]) == {"2"}
    for row in (*saved["figures"]["speculative"].values(), *saved["figures"]["self"].values()):
        # theory comes from the measured alpha and c, so it is a finite positive number
        assert math.isfinite(row["theory"]) and row["theory"] > 0
    # every row is timed (all rows alternated), with the two draft-cost rows
    rows = {"plain (code-m)", "code-s draft, k=1", "code-s draft, k=2",
            "hybrid lookup + code-s, k=2", "prompt lookup, k=8",
            "-- editing workload: plain (code-m)", "prompt lookup, editing, k=8",
            "transformers assisted (code-s)", "transformers prompt lookup, editing"}
    learned = {"plain (code-m), T=1", "code-m eagle chain k=2", "code-m eagle tree (2, 1)",
               "code-m medusa tree (2,)", "code-m distilled chain k=2",
               "code-m eagle chain k=2, T=1", "code-m eagle tree (2, 1), T=1",
               "code-m distilled chain k=2, T=1",
               "transformers assisted (code-m distilled draft)"}
    assert set(saved["timings"]) >= rows | learned
    assert len(saved["timings"]) == len(rows) + len(learned) + 3
    assert all(len(t) == 1 and t[0] > 0 for t in saved["timings"].values())  # --quick: 1
    assert set(saved["load"]) >= {"before", "after", "cores", "busy"}
    assert saved["warnings"] == result["warnings"]
    out = capsys.readouterr().out
    assert "code-s draft, k=1" in out and "hybrid lookup + code-s, k=2" in out
    assert "every speculative output equals plain greedy decoding" in out
    # the learned drafts' ratios (issue 18), and each row's figures with alpha and c
    for key in ("spec_speedup_learned_code_m", "spec_speedup_sampled_code_m",
                "tree_vs_chain_code_m", "spec_vs_theory_learned_chain",
                "ours_vs_hf_assisted_distilled"):
        v = saved["ratios"][key]
        assert isinstance(v, float) and math.isfinite(v) and v > 0, key
    rows_figs = saved["figures"]["learned"]["rows"]
    assert set(rows_figs) == learned - {"plain (code-m), T=1",
                                        "transformers assisted (code-m distilled draft)"}
    for f in rows_figs.values():
        assert 0 <= f["alpha"] <= 1 and f["c"] > 0 and math.isfinite(f["theory"])
        assert len(f["alpha_by_depth"]) == len(f["branching"])
    assert "1.6x needs alpha" in out
