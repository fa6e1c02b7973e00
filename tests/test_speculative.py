"""Speculative decoding keeps the target's output: exactly (greedy) or in distribution."""

import pytest
import torch

import infer_lab
from infer_lab import speculative
from infer_lab.config import ModelConfig
from infer_lab.generate import Sampling, generate
from infer_lab.model import Transformer
from infer_lab.speculative import (HybridDrafter, PromptLookupDrafter, SpecStats,
                                   quantized_draft, speculative_decode, theoretical_speedup)


def tiny(seed, vocab=50, layers=2, d=32, scale=20.0):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=vocab, n_layer=layers, n_head=2, d_model=d,
                                max_seq_len=128)).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(scale)
    return m


@pytest.fixture(scope="module")
def pair():
    return tiny(0), tiny(1, layers=1)


@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_equals_target_greedy_with_model_draft(pair, k):
    target, draft = pair
    g = torch.Generator().manual_seed(k)
    for n in (1, 3, 9):
        prompt = torch.randint(0, 50, (n,), generator=g).tolist()
        ref = generate(target, [prompt], 30)[0]
        out, stats = speculative_decode(target, draft, prompt, 30, k=k)
        assert out == ref
        assert stats.proposed > 0


def test_greedy_equals_target_with_self_draft_accepting_everything(pair):
    target, _ = pair
    out, stats = speculative_decode(target, target, [1, 2, 3], 40, k=4)
    assert out == generate(target, [[1, 2, 3]], 40)[0]
    assert stats.acceptance_rate == 1.0 and stats.tokens_per_target_call > 4


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_equals_target_with_prompt_lookup(pair, k):
    target, _ = pair
    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]
    out, stats = speculative_decode(target, PromptLookupDrafter(), prompt, 30, k=k)
    assert out == generate(target, [prompt], 30)[0]


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_greedy_equals_target_with_hybrid_draft(pair, k):
    target, draft = pair
    g = torch.Generator().manual_seed(10 + k)
    rounds = [0, 0]
    for prompt in ([5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
                   *(torch.randint(0, 50, (n,), generator=g).tolist() for n in (1, 4, 11))):
        hybrid = HybridDrafter(draft)
        out, _ = speculative_decode(target, hybrid, prompt, 30, k=k)
        assert out == generate(target, [prompt], 30)[0]
        rounds[0] += hybrid.lookup_rounds
        rounds[1] += hybrid.model_rounds
    assert rounds[0] > 0 and rounds[1] > 0  # both kinds of draft were exercised


def test_greedy_equals_target_on_zoo_models():
    target, tok = infer_lab.load("code-m", device="cpu")
    draft, _ = infer_lab.load("code-s", device="cpu")
    for text in ("import os\n\ndef main(", "class Config:\n    def __init__(self"):
        ids = tok.encode(text)
        ref = generate(target, [ids], 48)[0]
        for d in (draft, PromptLookupDrafter()):
            out, stats = speculative_decode(target, d, ids, 48, k=4)
            assert out == ref


def test_prompt_lookup_proposes_the_continuation_of_the_latest_match():
    d = PromptLookupDrafter(max_ngram=2)
    d.start([1, 2, 3, 4, 9, 1, 2, 3, 7, 1, 2], 100, None)
    assert d.propose(3) == ([3, 7, 1], None)
    d.start([1, 2, 3], 100, None)
    assert d.propose(3) == ([], None)


# -- sampling: the output distribution is the target's -----------------------------------

def _first_two_token_counts(target, draft, n, k, seed, prompt=(1, 2)):
    counts = torch.zeros(8, 8)
    for i in range(n):
        d = draft() if callable(draft) and not isinstance(draft, Transformer) else draft
        out, _ = speculative_decode(target, d, list(prompt), 2, k=k,
                                    sampling=Sampling(temperature=1.0, seed=seed + i))
        counts[out[0], out[1]] += 1
    return counts


def _exact_first_two(target, prompt=(1, 2)):
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([list(prompt)]))[0, -1].double(), -1)  # (V,)
        seqs = torch.tensor([[*prompt, a] for a in range(8)])
        p2 = torch.softmax(target(seqs)[:, -1].double(), -1)  # (V, V)
    return p1[:, None] * p2


def _chi2(counts, probs):
    expected = probs * counts.sum()
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


CHI2_63_P001 = 103.44  # chi-square critical value, 63 degrees of freedom, p = 0.001


@pytest.fixture(scope="module")
def small_vocab_pair():
    # Smooth distributions (scale 3) so that every one of the 64 cells is visited.
    return tiny(3, vocab=8, scale=3.0), tiny(4, vocab=8, layers=1, scale=3.0)


def test_sampled_output_matches_target_distribution(small_vocab_pair):
    target, draft = small_vocab_pair
    counts = _first_two_token_counts(target, draft, 3000, k=2, seed=0)
    assert _chi2(counts, _exact_first_two(target)) < CHI2_63_P001


def test_sampled_output_matches_target_distribution_with_hybrid_draft(small_vocab_pair):
    # A repeating prompt makes the lookup propose (a one-hot q) in some rounds, the
    # draft model (its own q) in others: both rounds must keep the target's distribution.
    target, draft = small_vocab_pair
    prompt = (1, 2, 3, 1, 2, 3, 1, 2)
    make = lambda: HybridDrafter(draft, PromptLookupDrafter(max_ngram=2, min_ngram=1),
                                 Sampling(temperature=1.0))
    counts = _first_two_token_counts(target, make, 3000, k=2, seed=0, prompt=prompt)
    assert _chi2(counts, _exact_first_two(target, prompt)) < CHI2_63_P001


def _accept_exact_matches_only(p, q, draft, greedy, gen):
    for i, d in enumerate(draft):
        if int(torch.multinomial(p[i], 1, generator=gen)) != d:
            return i, int(torch.multinomial(p[i], 1, generator=gen))
    return len(draft), int(torch.multinomial(p[len(draft)], 1, generator=gen))


def _no_residual(p, q, draft, greedy, gen):
    for i, d in enumerate(draft):
        if torch.rand((), generator=gen).item() >= min(1.0, float(p[i, d] / q[i, d])):
            return i, int(torch.multinomial(p[i], 1, generator=gen))  # should be p - q
    return len(draft), int(torch.multinomial(p[len(draft)], 1, generator=gen))


@pytest.mark.parametrize("wrong", [_accept_exact_matches_only, _no_residual])
def test_wrong_acceptance_rules_fail_the_same_test(small_vocab_pair, monkeypatch, wrong):
    target, draft = small_vocab_pair
    monkeypatch.setattr(speculative.decode, "verify", wrong)  # the rule decode.py calls
    counts = _first_two_token_counts(target, draft, 3000, k=2, seed=0)
    assert _chi2(counts, _exact_first_two(target)) > CHI2_63_P001


def test_verify_residual_rule_on_known_distributions():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[1.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    outcomes = [speculative.verify(p, q, [0], False, g) for _ in range(4000)]
    accepted = sum(n == 1 for n, _ in outcomes) / len(outcomes)
    assert abs(accepted - 0.5) < 0.03  # min(1, 0.5 / 1.0)
    assert all(t == 1 for n, t in outcomes if n == 0)  # residual: max(0, p - q) -> token 1


def test_stats_and_theory():
    s = SpecStats()
    s.record(4, 2)
    s.record(4, 4)
    assert s.acceptance_rate == 0.75 and s.tokens_per_target_call == 4.0
    assert s.acceptance_by_position() == [1.0, 1.0, 0.5, 0.5]
    assert theoretical_speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)
    assert theoretical_speedup(1.0, 4, 0.0) == 5
    a, k, c = 0.7, 3, 0.2
    assert theoretical_speedup(a, k, c) == pytest.approx((1 - a ** 4) / ((1 - a) * 1.6))


def test_alpha_is_the_per_token_acceptance_whatever_k():
    s = SpecStats()
    s.record(4, 2)
    s.record(4, 4)
    assert s.alpha == pytest.approx(6 / 7)  # 6 accepted, 1 rejection
    g = torch.Generator().manual_seed(0)
    for k in (1, 4, 8):  # simulate accepts with probability 0.6 until the first rejection
        s = SpecStats()
        for _ in range(4000):
            n = 0
            while n < k and torch.rand((), generator=g).item() < 0.6:
                n += 1
            s.record(k, n)
        assert s.alpha == pytest.approx(0.6, abs=0.03)
        if k > 1:
            assert s.acceptance_rate < 0.55  # accepted / proposed falls with k; alpha not


def test_stats_add_sums_counts_and_positions():
    a, b = SpecStats(), SpecStats()
    a.record(2, 1)
    b.record(4, 4)
    b.record(4, 0)
    total = SpecStats().add(a).add(b)
    assert (total.target_calls, total.proposed, total.accepted, total.rejected) == (3, 10, 5, 2)
    assert total.proposed_at == [3, 3, 2, 2] and total.accepted_at == [2, 1, 1, 1]
    assert total.alpha == pytest.approx(5 / 7)


def test_quantized_self_draft_keeps_greedy_output_and_agrees_often():
    target, tok = infer_lab.load("code-m", device="cpu")
    ids = tok.encode("def read_config(path):\n")
    ref = generate(target, [ids], 40)[0]
    for method in ("int8", "int4-g64"):
        draft = quantized_draft(target, method)
        out, stats = speculative_decode(target, draft, ids, 40, k=4)
        assert out == ref
        assert stats.alpha > 0.8, (method, stats.alpha)  # a copy agrees far more than code-s
    assert not any(type(m).__name__ == "Int8Linear" for m in target.modules())  # untouched


def test_bad_input(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="k"):
        speculative_decode(target, draft, [1, 2], 5, k=0)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_decode(target, tiny(5, vocab=40), [1, 2], 5)
    with pytest.raises(ValueError, match="empty prompt"):
        speculative_decode(target, draft, [], 5)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_decode(target, HybridDrafter(tiny(5, vocab=40)), [1, 2], 5)
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookupDrafter(max_ngram=1, min_ngram=2)


def test_models_on_different_devices_are_refused(pair):
    target, _ = pair
    other = tiny(1, layers=1)  # claims another device (no second device is needed)
    other.__class__ = type("Elsewhere", (Transformer,),
                           {"device": property(lambda self: torch.device("meta"))})
    with pytest.raises(ValueError, match="device"):
        speculative_decode(target, other, [1, 2], 5)
