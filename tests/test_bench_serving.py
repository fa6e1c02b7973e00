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
    text = capsys.readouterr().out
    for needle in ("continuous", "transformers sequential", "TTFT p50 ms",
                   "paged_kv_waste:", "(continuous / static batching"):
        assert needle in text
