"""Sampling, stop conditions, streaming and bad input."""

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.generate import GREEDY, Sampling, collect, generate, logits_to_probs, sample
from infer_lab.streaming import stream
from infer_lab.model import Transformer


class CharTokenizer:
    """One token per character of a fixed alphabet; id 0 is EOS."""

    chars = "\0abcdefghijklmnopqrstuvwxyz \n():é"

    def __init__(self):
        self.eos_id = 0

    def encode(self, s):
        return [self.chars.index(c) for c in s]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=len(CharTokenizer.chars), n_layer=2, n_head=2,
                                d_model=32, max_seq_len=64)).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(20)
    return m


def test_top_k_keeps_k_tokens():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    p = logits_to_probs(logits, Sampling(temperature=1.0, top_k=2))
    assert (p > 0).sum() == 2 and p[0, 1] > p[0, 3] > 0
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    p = logits_to_probs(probs.log(), Sampling(temperature=1.0, top_p=0.8))
    assert (p > 0).tolist() == [[True, True, False, False]]
    p = logits_to_probs(probs.log(), Sampling(temperature=1.0, top_p=0.81))
    assert (p > 0).tolist() == [[True, True, True, False]]


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold = logits_to_probs(logits, Sampling(temperature=0.5))
    hot = logits_to_probs(logits, Sampling(temperature=2.0))
    assert cold[0, 0] > torch.softmax(logits, -1)[0, 0] > hot[0, 0]


def test_seeded_sampling_is_reproducible(model):
    s = Sampling(temperature=1.0, top_k=10, seed=7)
    a = generate(model, [[1, 2, 3]], 20, s)
    b = generate(model, [[1, 2, 3]], 20, s)
    c = generate(model, [[1, 2, 3]], 20, Sampling(temperature=1.0, top_k=10, seed=8))
    assert a == b and a != c


def test_sampling_frequencies_follow_probs():
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(-1).expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    toks = sample(logits, Sampling(temperature=1.0), g)
    freq = torch.bincount(toks, minlength=3).float() / len(toks)
    torch.testing.assert_close(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1),
                               atol=0.02, rtol=0)


def test_eos_stops_a_row_and_max_tokens_caps_it():
    steps = iter([torch.tensor([5, 0]), torch.tensor([0, 3]), torch.tensor([4, 4])])
    out = collect(steps, 2, max_new_tokens=3, eos_id=0)
    assert out == [[5, 0], [0]]


def test_stream_yields_timestamps_and_stops_at_stop_string(model):
    tok = CharTokenizer()
    events = list(stream(model, tok, "abc", 30, stop_at_eos=False))
    assert len(events) == 30
    times = [e.t for e in events]
    assert times == sorted(times) and times[0] > 0
    text = "".join(e.text for e in events)
    stop = text[5:7]
    cut = "".join(e.text for e in stream(model, tok, "abc", 30, stop=[stop],
                                         stop_at_eos=False))
    assert cut == text[: text.find(stop)]


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
    ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
    ({"temperature": 1.0, "top_k": 0}, "top_k"),
])
def test_bad_sampling_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampling(**kwargs)


def test_bad_prompts_raise(model):
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [[]], 5)
    with pytest.raises(ValueError, match="exceeds the context"):
        generate(model, [[1] * 60], 5)
    with pytest.raises(ValueError, match="exceeds the context"):
        generate(model, [[1] * 70], 0, use_cache=False)
    with pytest.raises(ValueError, match="empty prompt"):
        list(stream(model, CharTokenizer(), "", 5))


def test_nan_logits_raise():
    with pytest.raises(ValueError, match="NaN"):
        sample(torch.tensor([[float("nan"), 1.0]]), GREEDY)


def test_unknown_model_names_raise():
    import infer_lab
    from infer_lab.config import get_config
    with pytest.raises(ValueError, match="presets are"):
        get_config("gpt-9")
    with pytest.raises(ValueError, match="embedded models"):
        from infer_lab.zoo import model_card
        model_card("code-xl")
    with pytest.raises(ValueError, match="code-m"):
        infer_lab.load("no-such-model-anywhere", device="cpu")
