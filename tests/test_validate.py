"""One rule per parameter at every public entry point, and fuzzing of those entry points.

Property: for any arguments, a public function either returns a well-formed answer or
raises ValueError with a message; never another exception type (ZeroDivisionError,
torch's RuntimeError from deep inside, "object of type 'int' has no len()"), and never
a silently changed input (a float token id truncated to an int).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from infer_lab.config import ModelConfig
from infer_lab.generate import GREEDY, Sampling, generate, logits_to_probs, sample
from infer_lab.model import Transformer
from infer_lab.quant import quantize
from infer_lab.quant.blocks import quantize_q4_k, quantize_q8_0
from infer_lab.quant.nf4 import quantize_nf4
from infer_lab.sampling import MIN_TEMPERATURE
from infer_lab.serving import Engine, EngineConfig
from infer_lab.speculative import speculative_decode
from infer_lab.validate import flag, integer, number, prompt_batch, token_ids

V = 50
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=V, n_layer=1, n_head=2, d_model=16,
                                max_seq_len=32)).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(20)
    return m


# -- the rules ---------------------------------------------------------------------------
def test_integer_refuses_what_would_be_truncated_or_misread():
    assert integer("k", 3) == 3 and integer("k", np.int64(3)) == 3
    assert integer("k", torch.tensor(3)) == 3
    for bad in (2.5, 3.0, True, "3", None, [3]):
        with pytest.raises(ValueError, match="k must be an integer"):
            integer("k", bad)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        integer("k", 0, lo=1)


def test_number_refuses_nan_inf_and_non_numbers():
    assert number("t", 1) == 1.0 and number("t", np.float32(0.5)) == 0.5
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            number("t", bad)
    for bad in ("0.5", None, True, [1.0]):
        with pytest.raises(ValueError, match="must be a number"):
            number("t", bad)
    with pytest.raises(ValueError, match="> 0"):
        number("p", 0.0, lo=0, lo_open=True)


def test_flag_is_a_real_boolean():
    assert flag("stream", True) is True
    for bad in ("false", 0, 1, None):
        with pytest.raises(ValueError, match="true or false"):
            flag("stream", bad)


def test_token_ids_and_batches_say_what_was_expected():
    assert token_ids("p", [1, np.int32(2)], V) == [1, 2]
    assert prompt_batch(torch.tensor([[1, 2], [3, 4]]), V) == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match=r"p\[0\] must be an integer token id, got 65.7 .*"
                                         "never rounded"):
        token_ids("p", [65.7, 66.2], 100)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_ids("p", [V], V)
    with pytest.raises(ValueError, match="empty prompt"):
        token_ids("p", [], V)
    with pytest.raises(ValueError, match=r"flat list of ints: for one prompt write \[ids\]"):
        prompt_batch([1, 2, 3], V)
    with pytest.raises(ValueError, match="list of prompts"):
        prompt_batch("hello", V)
    with pytest.raises(ValueError, match="2-d"):
        prompt_batch(torch.tensor([1, 2]), V)


# -- sampling ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": float("inf")}, "temperature must be a finite number"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"temperature": 1.0, "top_p": float("nan")}, "top_p must be a finite"),
    ({"temperature": 1.0, "top_k": 2.5}, "top_k must be an integer"),
    ({"temperature": 1.0, "top_k": True}, "top_k must be an integer"),
    ({"temperature": 1.0, "seed": -1}, "seed must be >= 0"),
    ({"temperature": 1.0, "seed": 2 ** 64}, "seed must be <="),
])
def test_sampling_refuses_what_would_break_sampling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampling(**kwargs)


@pytest.mark.parametrize("t", [1e-40, 1e-30, MIN_TEMPERATURE / 2])
def test_tiny_temperatures_are_greedy(model, t):
    s = Sampling(temperature=t, seed=0)
    assert s.greedy
    assert generate(model, [[1, 2, 3]], 6, s) == generate(model, [[1, 2, 3]], 6, GREEDY)


@FUZZ
@given(logits=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=2, max_size=8),
       t=st.floats(MIN_TEMPERATURE, 1e6), top_k=st.none() | st.integers(1, 10),
       top_p=st.none() | st.floats(1e-6, 1.0))
def test_any_finite_logits_give_a_distribution(logits, t, top_k, top_p):
    s = Sampling(temperature=t, top_k=top_k, top_p=top_p)
    p = logits_to_probs(torch.tensor([logits]), s)
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-4)
    tok = int(sample(torch.tensor([logits]), s, torch.Generator().manual_seed(0)))
    assert p[0, tok] > 0


def test_logits_no_distribution_comes_from_are_refused():
    for bad in ([float("nan"), 1.0], [float("inf"), 1.0], [-float("inf")] * 2):
        with pytest.raises(ValueError, match="logit"):
            sample(torch.tensor([bad]), Sampling(temperature=1.0))


# -- generate, speculative decoding, the engine: fuzzed arguments -------------------------
# Half valid, half messy: a fuzz that only ever sends garbage never checks the answers.
good_ids = st.lists(st.integers(0, V - 1), min_size=1, max_size=6)
messy_ids = st.lists(st.integers(-3, V + 3) | st.floats(0, V) | st.just(float("nan"))
                     | st.booleans(), min_size=0, max_size=6)
ids = good_ids | messy_ids
prompts_st = (st.lists(good_ids, min_size=1, max_size=3) | st.lists(ids, max_size=3) | ids
              | st.text(max_size=3) | st.none())
max_new = st.integers(0, 12) | st.integers(-2, 40) | st.floats(-1, 5) | st.just(float("nan"))
temperature = (st.sampled_from([0.0, 0.7, 1.0, 1e-30]) | st.floats(allow_nan=True)
               | st.integers(-1, 3))


def _valid_batch(prompts) -> bool:
    return (isinstance(prompts, list) and prompts and all(
        isinstance(p, list) and p and all(type(t) is int and 0 <= t < V for t in p)
        for p in prompts))


@FUZZ
@given(prompts=prompts_st, n=max_new, t=temperature)
def test_generate_answers_or_refuses_clearly(model, prompts, n, t):
    try:
        sampling = Sampling(temperature=t, seed=0)
    except ValueError:
        assert not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0)
        return
    try:
        out = generate(model, prompts, n, sampling)
    except ValueError as e:
        assert str(e)  # a message, and only for input that is really invalid:
        fits = (_valid_batch(prompts) and type(n) is int and n >= 0
                and max(map(len, prompts)) + n <= model.config.max_seq_len)
        assert not fits, f"valid input refused: {e}"
        return
    event("generated")
    assert _valid_batch(prompts) and type(n) is int  # nothing was coerced into working
    assert len(out) == len(prompts) and all(len(r) == n for r in out)
    assert all(0 <= tok < V for r in out for tok in r)


@FUZZ
@given(prompt=ids | st.lists(ids, max_size=2), n=max_new,
       k=st.integers(1, 4) | st.integers(-1, 6) | st.floats(0, 5) | st.just(float("nan")),
       t=st.sampled_from([0.0, 1.0]))
def test_speculative_decode_answers_or_refuses_clearly(model, prompt, n, k, t):
    try:
        out, stats = speculative_decode(model, model, prompt, n, k=k,
                                        sampling=Sampling(temperature=t, seed=1))
    except ValueError as e:
        assert str(e)
        fits = (_valid_batch([prompt]) and type(n) is int and n >= 0 and type(k) is int
                and k >= 1 and len(prompt) + n <= model.config.max_seq_len)
        assert not fits, f"valid input refused: {e}"
        return
    event("decoded")
    assert type(k) is int and k >= 1 and all(type(x) is int for x in prompt)
    assert len(out) == n
    if t == 0:  # the model drafting for itself: greedy equals plain greedy
        assert out == generate(model, [prompt], n)[0]


@FUZZ
@given(prompt=good_ids | ids | st.text(max_size=3), n=max_new, t=temperature,
       top_k=st.sampled_from([None, 1, 3]) | st.integers(-1, 3) | st.floats(0, 3))
def test_engine_add_request_answers_or_refuses_clearly(model, prompt, n, t, top_k):
    engine = Engine(model, EngineConfig(block_size=4, num_blocks=16))
    try:
        seq = engine.add_request(prompt, n, Sampling(temperature=t, top_k=top_k, seed=2))
    except ValueError as e:
        assert str(e)
        assert not engine.has_unfinished()
        return
    event("served")
    assert all(type(x) is int for x in prompt) and type(n) is int
    engine.run()
    assert len(seq.output) == n and seq.finish_reason == "length"
    assert engine.block_manager.num_used_blocks == 0
    engine.block_manager.check()


def test_the_issue_examples_now_get_clear_errors(model):
    with pytest.raises(ValueError, match="never rounded"):
        generate(model, [[45.7, 46.2]], 3)
    with pytest.raises(ValueError, match="flat list"):
        generate(model, [1, 2], 3)
    with pytest.raises(ValueError, match="k .*must be an integer"):
        speculative_decode(model, model, [1, 2], 4, k=2.5)
    with pytest.raises(ValueError, match="finite"):
        generate(model, [[1]], 3, Sampling(temperature=float("nan")))
    with pytest.raises(ValueError, match="sampling must be"):
        generate(model, [[1]], 3, {"temperature": 1.0})
    with pytest.raises(ValueError, match="eos_id"):
        generate(model, [[1]], 3, eos_id=V + 5)


# -- quantizers --------------------------------------------------------------------------
shapes = st.tuples(st.integers(0, 4), st.integers(0, 70))
weights = st.one_of(
    st.tuples(st.integers(1, 3), st.sampled_from([32, 64, 256])).map(lambda s: torch.randn(s)),
    shapes.map(lambda s: torch.randn(s)),
    shapes.map(lambda s: torch.full(s, float("nan"))),
    shapes.map(lambda s: torch.randint(0, 5, s)),  # integer tensors
    st.just(torch.tensor(1.0)),
)


@FUZZ
@given(w=weights, bits=st.integers(2, 8) | st.integers(0, 10) | st.floats(1, 9),
       gran=st.sampled_from(["tensor", "channel", "group", "row"]),
       group=st.sampled_from([32, 64]) | st.none() | st.integers(-1, 40) | st.floats(1, 8))
def test_quantize_answers_or_refuses_clearly(w, bits, gran, group):
    try:
        qt = quantize(w, bits, gran, group if gran == "group" else None)
    except ValueError as e:
        assert str(e)
        return
    event("quantized")
    assert w.numel() and torch.isfinite(w).all() and w.is_floating_point()
    assert qt.dequantize().shape == w.shape


@FUZZ
@given(w=weights)
def test_block_quantizers_answer_or_refuse_clearly(w):
    for fn in (quantize_q8_0, quantize_q4_k, quantize_nf4):
        try:
            fn(w)
        except ValueError as e:
            assert str(e)


@pytest.mark.parametrize("top_p", [3.7e-129, 1e-45, 1e-8])
def test_a_tiny_top_p_keeps_the_most_likely_token(top_p):
    """Found by the server fuzz: top_p = 3.7e-129 rounds to 0.0 in float32 and dropped
    every token (0 / 0 = NaN, then torch.multinomial raised)."""
    logits = torch.tensor([[0.5, 3.0, 1.0]])
    p = logits_to_probs(logits, Sampling(temperature=1.0, top_p=top_p))
    assert p.tolist() == [[0.0, 1.0, 0.0]]
