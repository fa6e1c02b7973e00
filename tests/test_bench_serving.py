"""`python -m infer_lab.bench serving --quick` runs end to end and reports its ratios."""

import json
import math

from infer_lab.bench import main


def test_bench_serving_quick_writes_ratios(tmp_path, capsys):
    out = tmp_path / "serving.json"
    result = main(["serving", "--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    for key in ("continuous_vs_static", "continuous_vs_hf_sequential", "paged_kv_waste",
                "prefix_cache_ttft_speedup", "continuous_vs_dynamic", "contiguous_kv_waste"):
        v = saved["ratios"][key]
        assert isinstance(v, float) and math.isfinite(v) and v > 0, key
    assert 0 < saved["ratios"]["paged_kv_waste"] < saved["ratios"]["contiguous_kv_waste"] < 1
    summaries = result["figures"]["summaries"]
    assert set(summaries) == {"static", "dynamic", "continuous", "transformers sequential"}
    assert summaries["static"]["output_tokens"] == summaries["continuous"]["output_tokens"]
    # every row's runs are kept for the spread check, and the load is recorded
    assert set(saved["timings"]) == set(summaries) | {"prefix cache off, TTFT p50",
                                                      "prefix cache on, TTFT p50"}
    assert all(len(t) == 1 and t[0] > 0 for t in saved["timings"].values())  # --quick: 1
    assert saved["figures"]["repeats"] == 1
    assert set(saved["load"]) >= {"before", "after", "cores", "busy"}
    assert saved["warnings"] == result["warnings"]
    text = capsys.readouterr().out
    for needle in ("continuous", "transformers sequential", "TTFT p50 ms",
                   "paged_kv_waste:", "(continuous / static batching"):
        assert needle in text
