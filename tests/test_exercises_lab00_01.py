"""Labs 00 and 01: each exercise's reference equals the package code it teaches, the
technique checkers accept equivalent correct answers and reject the slips they name
(issue 17, section 5), and the learner's function drives the lab's experiment."""

import math

import pytest
import torch

import infer_lab
from infer_lab import hardware, metrics
from infer_lab.config import PRESETS
from infer_lab.exercises import EXERCISES, PREDICTIONS, kv_cache, welcome, welcome_decode
from infer_lab.generate import decode_one_token, prefill
from infer_lab.kv_cache import KVCache, attention_mask, sdpa
from infer_lab.lessons import lab00_welcome, lab01_attention, lab01_kv_cache


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))


@pytest.fixture(scope="module")
def zoo():
    return {name: welcome_decode.zoo_model(name) for name in ("code-s", "code-m")}


# -- lab 00: the decode loop ------------------------------------------------------------
@pytest.mark.parametrize("name", ["code-s", "code-m"])
def test_greedy_decode_reference_is_the_packages_generation(zoo, name):
    model, tok = zoo[name]
    for text, n in (("def read_config(path):", 12), ("x", 3), ("import os\n", 1)):
        prompt = tok.encode(text)
        cache = welcome_decode.MeteredCache.for_model(model, 1, len(prompt) + n)
        with torch.inference_mode():
            got = welcome_decode.greedy_decode(model, cache, prompt, n)
        assert got == infer_lab.generate(model, [prompt], n)[0]
        assert cache.calls == [len(prompt)] + [1] * (n - 1)  # prefill once, then one each


def test_greedy_decode_accepts_equivalent_loops(zoo):
    ex = EXERCISES["greedy_decode"]
    assert ex.kind == "technique"

    def with_package_steps(model, cache, prompt, n):  # prefill / decode_one_token
        tok = prefill(model, [prompt], cache).argmax(-1)
        out = [tok]
        for _ in range(n - 1):
            tok = decode_one_token(model, tok, cache).argmax(-1)
            out.append(tok)
        return torch.cat(out)  # a tensor of ids is as good as a list

    def one_extra_forward(model, cache, prompt, n):  # feeds the last token too
        tok = model(torch.tensor([prompt]), cache)[:, -1].argmax(-1)
        out = []
        for _ in range(n):
            out.append(int(tok))
            tok = model(tok[:, None], cache)[:, -1].argmax(-1)
        return out

    for fn in (with_package_steps, one_extra_forward):
        assert ex.check(fn, seed=1, verbose=False).passed, fn.__name__


def test_greedy_decode_rejects_a_loop_that_ignores_its_cache(zoo):
    ex = EXERCISES["greedy_decode"]

    def own_cache(model, cache, prompt, n):  # right tokens, from a cache of its own
        return welcome_decode.greedy_decode(model, KVCache.for_model(model, 1, len(prompt) + n),
                                            prompt, n)

    r = ex.check(own_cache, seed=0, verbose=False)
    assert not r and "never used" in r.message
    r = ex.check(lambda *a: [1.0, 2.0], seed=0, verbose=False)
    assert not r
    r = ex.check(lambda *a: "tokens", seed=0, verbose=False)
    assert not r and "list of" in r.message


def test_race_loops_runs_the_given_loop(zoo, capsys):
    from infer_lab.lessons import lab00_decode

    model, tok = zoo["code-s"]
    calls = []

    def loop(*args):
        calls.append(1)
        return welcome_decode.greedy_decode(*args)

    prompt = tok.encode("def f(")
    tps = lab00_decode.race_loops(model, prompt, 4, loop, repeats=1)
    assert set(tps) == {"this lab's loop", "infer_lab.generate"} and len(calls) == 3
    assert "4/4 tokens identical" in capsys.readouterr().out
    fig = lab00_decode.race_figure(tps, "race")
    assert fig.layout.yaxis.title.text == "throughput (tokens/s)"


# -- lab 00: the warm-ups against the package ---------------------------------------------
def test_weight_bytes_is_what_the_tensors_hold(zoo):
    for model, _ in zoo.values():
        assert welcome.weight_bytes(model.config.n_params, 32) == metrics.weight_bytes(model)
    calc = lab00_welcome.ModelMemoryCalculator(models=("llama-3-8b",))
    for dtype, bits in lab00_welcome.DTYPE_BITS.items():
        assert calc.sizes()["llama-3-8b"][dtype] == welcome.weight_bytes(
            PRESETS["llama-3-8b"].n_params, bits)


def test_decode_bound_is_the_rooflines_memory_limit():
    hw = hardware.PRESETS["H100 SXM"]
    cfg = PRESETS["llama-3-8b"]
    for batch in (1, 8, 64):  # memory-bound at these batches, no context
        r = hardware.roofline(cfg, batch=batch, context=0, hw=hw)
        assert r.bound == "memory"
        assert welcome.decode_tokens_per_second(r.weight_bytes, hw.mem_bandwidth_gbs, batch) \
            == pytest.approx(r.max_tokens_per_s)


def test_cost_matches_the_calculator():
    calc = lab00_welcome.CostCalculator(tokens_per_s=250.0, dollars_per_hour=2.5)
    assert calc.dollars_per_million == pytest.approx(welcome.cost_per_million_tokens(2.5, 250.0))


def test_batching_saturates_below_the_ridge():
    hw, cfg = hardware.PRESETS["H100 SXM"], PRESETS["llama-3-8b"]
    points, limit = lab00_welcome.batching_points(cfg, hw, (1, 16, 256, 4096), 1024, "m")
    intensities = [p[1] for p in points]
    assert intensities == sorted(intensities) and intensities[-1] < limit < hw.ridge("bf16")


# -- lab 01: decode attention against the package --------------------------------------------
def _sdpa_decode(q, k_new, v_new, k_cache, v_cache):
    k = torch.cat([k_cache, k_new[:, None]], 1)[None]  # (1, H_kv, S+1, D)
    v = torch.cat([v_cache, v_new[:, None]], 1)[None]
    return sdpa(q[None, :, None], k, v, None)[0, :, 0]  # the model's attention: (H, D)


def test_decode_attention_reference_is_the_models_sdpa():
    ex = EXERCISES["decode_attention"]
    assert ex.kind == "technique"
    gqa = [c for c in ex.fixed_cases if c.args[1].shape[0] < c.args[0].shape[0]]
    assert gqa, "no case has fewer KV heads than query heads"
    for case in ex.cases(seed=0):
        want = _sdpa_decode(*case.args)
        got = kv_cache.decode_attention(*case.args)
        assert got.dtype == case.args[0].dtype
        torch.testing.assert_close(got, want, rtol=ex.rtol, atol=ex.atol)
    assert ex.check(_sdpa_decode, seed=0, verbose=False).passed


def test_decode_attention_needs_a_stable_softmax():
    ex = EXERCISES["decode_attention"]
    big = [c for c in ex.fixed_cases if c.args[3].shape[1]
           and (c.args[0][0] @ c.args[3][0].T).abs().max() > 100]  # exp(100) overflows
    assert big, "no case has scores large enough to overflow an unshifted exp"

    def shifted(q, k_new, v_new, k_cache, v_cache):  # manual and stable: passes
        g = q.shape[0] // k_new.shape[0]
        k = torch.cat([k_cache, k_new[:, None]], 1).repeat_interleave(g, 0)
        v = torch.cat([v_cache, v_new[:, None]], 1).repeat_interleave(g, 0)
        s = torch.einsum("hd,hsd->hs", q, k) / math.sqrt(q.shape[1])
        w = (s - s.amax(-1, keepdim=True)).exp()
        return torch.einsum("hs,hsd->hd", w / w.sum(-1, keepdim=True), v)

    assert ex.check(shifted, seed=0, verbose=False).passed
    r = ex.check(kv_cache._attn_naive_exp, seed=0, verbose=False)
    assert r.mistake == "no max shift" and "overflows" in r.message


def test_learners_attention_drives_code_m(zoo):
    model, tok = zoo["code-m"]
    prompt = tok.encode("def read_config(path):")
    # logits of a decode step through the plugged cache equal the package's
    plugged = lab01_attention.PluggedAttentionCache.for_model(
        model, 1, 32, attention=kv_cache.decode_attention)
    plain = KVCache.for_model(model, 1, 32)
    with torch.inference_mode():
        a, b = prefill(model, [prompt], plugged), prefill(model, [prompt], plain)
        torch.testing.assert_close(a, b)  # the prefill keeps the package's attention
        tok1 = a.argmax(-1)
        torch.testing.assert_close(decode_one_token(model, tok1, plugged),
                                   decode_one_token(model, tok1, plain), rtol=1e-4, atol=1e-4)
    assert lab01_attention.generate_through(model, prompt, 8, kv_cache.decode_attention) == \
        infer_lab.generate(model, [prompt], 8)[0]
    long = tok.encode("import os\nimport sys\n\n\ndef main(argv):\n    return argv\n" * 2)
    assert lab01_attention.generate_through(model, long, 6, kv_cache.decode_attention,
                                            window=8) == \
        infer_lab.generate(model, [long], 6, window=8)[0]
    calls = []

    def counted(*args):
        calls.append(1)
        return kv_cache.decode_attention(*args)

    lab01_attention.generate_through(model, prompt, 3, counted)
    assert len(calls) == 2 * model.config.n_layer  # two decode steps, every layer


def test_kv_cache_bytes_is_what_the_cache_allocates(zoo):
    for model, _ in zoo.values():
        cfg = model.config
        cache = KVCache.for_model(model, batch=3, max_len=40)
        assert kv_cache.kv_cache_bytes(cfg, 40, 3, model.dtype.itemsize) == cache.bytes()
    for cfg in PRESETS.values():
        want = kv_cache.kv_cache_bytes(cfg, 1000, 2, 2)
        assert cfg.kv_bytes_per_token(2) * 2000 == want
        assert lab01_kv_cache.kv_bytes(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1000, 2, 2) \
            == want


def test_sliding_window_mask_is_the_models_mask():
    for T in (1, 5, 17):
        for w in (1, 3, 8, 40):
            pos = torch.arange(T)[None]
            assert torch.equal(kv_cache.sliding_window_mask(T, w),
                               attention_mask(pos, pos, w)[0, 0])


def test_window_explorer_replots_on_the_slider(zoo):
    model, tok = zoo["code-s"]
    context = tok.encode("def f(x):\n    return x + 1\n\n\ndef g(y):\n    return")
    ex = lab01_attention.WindowExplorer(model, context, 4, kv_cache.decode_attention,
                                        windows=[4, 8, 64], window=8)
    assert len(ex.outputs) == 1 and "window <b>8</b>" in ex.readout.value
    ex.slider.value = 64  # longer than the text: the same tokens as full attention
    assert ex.points()[64][1] == 4 and len(ex.figure.data[0].x) == 2
    assert ex.figure.layout.xaxis.title.text == "KV cache held (KB)"


def test_labs_00_01_predictions(zoo):
    for lab in ("00_welcome", "01_kv_cache"):
        assert sum(p.lab == lab for p in PREDICTIONS.values()) >= 2, lab
    model, _ = zoo["code-m"]  # what the lab measures is what the formula says
    measured = KVCache.for_model(model, batch=8, max_len=512).bytes() / 1e6
    assert PREDICTIONS["kv_batch_mb"].close_enough(
        kv_cache.kv_cache_bytes(model.config, 512, 8, 4) / 1e6, measured)
