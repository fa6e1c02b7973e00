import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_lab.config import ModelConfig
from infer_lab.generate import Sampling
from infer_lab.model import Transformer
from infer_lab.quality import (next_line_exact_match, next_line_samples, parse_rate,
                               parses_as_python, perplexity, python_prompts, sampled_parse_rate,
                               token_nll)

EOS = 128


class CharTokenizer:
    """One token per ASCII character, plus EOS."""

    eos_id = EOS

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i != EOS)


def _cfg(max_seq_len=4096):
    return ModelConfig(vocab_size=129, n_layer=1, n_head=1, d_model=8, d_ff=16,
                       max_seq_len=max_seq_len)


class ScriptedLM(nn.Module):
    """A stand-in LM that predicts from the decoded history: ``next_char(history) -> str``.

    It follows the calling convention of Transformer.forward (prefill with positions,
    then one token at a time through a cache), keeping the history itself.
    """

    def __init__(self, next_char, max_seq_len=4096):
        super().__init__()
        self.config = _cfg(max_seq_len)
        self.next_char = next_char
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the KV cache its dtype/device
        self.hist: list[list[int]] = []

    @property
    def device(self):
        return self.dummy.device

    def forward(self, idx, cache=None, pos=None, last_only=False):
        if pos is not None:  # prefill: drop the left padding
            self.hist = [[t for t, p in zip(r, q) if p >= 0]
                         for r, q in zip(idx.tolist(), pos.tolist())]
        else:
            for h, t in zip(self.hist, idx[:, -1].tolist()):
                h.append(t)
        logits = torch.zeros(idx.shape[0], 1, 129)
        for b, h in enumerate(self.hist):
            c = self.next_char("".join(chr(t) for t in h if t != EOS))
            logits[b, 0, ord(c) if c else EOS] = 100.0
        return logits


SOURCE = "\n".join(
    f"def function_{i}(x):\n    '''Doc {i}.'''\n    y = x + {i}\n\n    return y * {i * i}\n"
    for i in range(40))


def oracle(history: str) -> str:
    at = SOURCE.find(history)
    assert at >= 0, "the oracle only continues text from SOURCE"
    return SOURCE[at + len(history): at + len(history) + 1]


class Uniform(nn.Module):
    def __init__(self, vocab=129, max_seq_len=64):
        super().__init__()
        self.config = _cfg(max_seq_len)
        self.config.vocab_size = vocab
        self.p = nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.p.device

    def forward(self, idx, cache=None, pos=None, last_only=False):
        return torch.zeros(*idx.shape, self.config.vocab_size)


def test_uniform_model_perplexity_is_vocab_size():
    text = "def f(x):\n    return x\n" * 20
    r = perplexity(Uniform(129), CharTokenizer(), text, seq_len=32, progress=False)
    assert r.ppl == pytest.approx(129, rel=1e-5)
    assert r.n_tokens == len(text)  # EOS prepended: every character is predicted
    assert r.n_bytes == len(text.encode())
    assert r.bits_per_byte == pytest.approx(math.log2(129))  # one byte per token here


def test_perplexity_max_tokens_and_ids():
    text = "abcdefghij" * 10
    tok = CharTokenizer()
    r = perplexity(Uniform(), tok, text, max_tokens=30, progress=False)
    assert r.n_tokens == 30 and r.n_bytes == 30
    ids = tok.encode(text)
    r_ids = perplexity(Uniform(), ids, text, seq_len=16, progress=False)
    assert r_ids.n_tokens == len(ids) - 1 and r_ids.n_bytes == len(text)
    assert perplexity(Uniform(), ids, text, max_tokens=5, progress=False).bits_per_byte is None


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 70), st.integers(1, 40), st.integers(1, 4))
def test_token_nll_windows_cover_each_token_once(n, seq_len, batch):
    ids = list(range(n))
    total, count = token_nll(Uniform(vocab=128, max_seq_len=64), ids, seq_len, batch,
                             progress=False)
    assert count == n - 1
    assert total == pytest.approx((n - 1) * math.log(128), rel=1e-5)


def test_token_nll_matches_one_full_forward():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, d_model=16,
                                    d_ff=32, max_seq_len=64)).eval()
    ids = torch.randint(50, (40,)).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0]
    want = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
    total, count = token_nll(model, ids, seq_len=64, progress=False)
    assert count == 39 and total == pytest.approx(want, rel=1e-5)


def test_next_line_samples_are_deterministic_and_consistent():
    a = next_line_samples(SOURCE, 20, seed=1)
    assert a == next_line_samples(SOURCE, 20, seed=1)
    assert a != next_line_samples(SOURCE, 20, seed=2)
    for s in a:
        assert len(s.target) >= 8 and not s.target.startswith("#")
        assert not s.prefix.endswith("\n") and s.prefix.strip()
        at = SOURCE.find(s.prefix)
        rest = SOURCE[at + len(s.prefix):]
        assert rest.lstrip().split("\n", 1)[0].strip() == s.target


def test_next_line_exact_match_oracle_and_wrong():
    good = next_line_exact_match(ScriptedLM(oracle), CharTokenizer(), SOURCE, n_samples=12,
                                 batch_size=5, progress=False)
    assert good.score == 1.0 and good.n == 12
    assert good.predictions == [s.target for s in good.samples]
    wrong = next_line_exact_match(ScriptedLM(lambda h: "x"), CharTokenizer(), SOURCE,
                                  n_samples=12, max_line_tokens=10, progress=False)
    assert wrong.score == 0.0


def test_next_line_exact_match_accepts_files():
    class F_:
        def __init__(self, text):
            self.text = text

    r = next_line_exact_match(ScriptedLM(oracle), CharTokenizer(), [F_(SOURCE)], n_samples=4,
                              progress=False)
    assert r.score == 1.0


@pytest.mark.parametrize("code, ok", [
    ("def f(x):\n    return x\n", True),
    ("def f(x):\n    return x", True),  # one line cut short is dropped; the rest parses
    ("x = 1\ny = (2,\n", False),  # open bracket at the cut
    ("x = 1\ndef f(x):\n", True),  # a block opened right before the cut
    ("class A:\n    def f(self):\n", True),
    ('def f():\n    """Doc\n', False),  # open docstring at the cut
    ("def f(:\n    pass\n", False),
    ("return = 3\n", False),
    ("print('hi')", True),  # a single line is judged whole
    ("", True),
])
def test_parses_as_python(code, ok):
    assert parses_as_python(code) is ok


def test_parse_rate():
    assert parse_rate(["x = 1\n", "x = = 1\n"]) == 0.5
    assert parse_rate([("def f():\n", "    return 1\n"), ("x = (", "1,\n]\n")]) == 0.5
    with pytest.raises(ValueError):
        parse_rate([])


def test_sampled_parse_rate_with_oracle():
    prompts = [SOURCE[:i] for i in (40, 95, 200)]
    r = sampled_parse_rate(ScriptedLM(oracle), CharTokenizer(), prompts, max_new_tokens=30,
                           sampling=Sampling(temperature=0.8, seed=0), batch_size=2,
                           progress=False)
    assert r.rate == 1.0 and len(r.completions) == 3
    assert all(SOURCE.startswith(p + c) for p, c in zip(prompts, r.completions))


def test_python_prompts_end_at_headers_and_parse():
    text = "import os\n\n@decorator\ndef f(a,\n      b):\n    return a\n\n" \
           "class A:\n    x = 1\n\ndef g(): pass\n"
    prompts = python_prompts([text, "not python (\n"], 10)
    assert sorted(prompts) == sorted([text[:text.index("b):") + 3],
                                      text[:text.index("class A:") + 8]])
    for p in prompts:
        assert parses_as_python(p + "\n    pass\n")
    assert python_prompts(SOURCE, 5, seed=3) == python_prompts(SOURCE, 5, seed=3)
    with pytest.raises(ValueError):
        python_prompts("x = 1\n", 3)
