"""Constrained speculative decoding: a drafted token the constraint refuses is rejected
(the proposal is cut before it), and the answer is the constrained target's: greedy, token
for token; sampled, always inside the constraint."""

import re

import pytest
import torch

import infer_lab
from infer_lab.app.constrained import check_draft, constrained_generate, regex_constraint
from infer_lab.generate import Sampling
from infer_lab.speculative import speculative_decode

PATTERN = r"(0|[1-9][0-9]{0,3})( [a-z_]+){1,4}\."


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    target, tok = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
    draft, _ = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    return target, draft, tok


def test_greedy_constrained_speculation_equals_the_constrained_target(models):
    target, draft, tok = models
    masks = regex_constraint(PATTERN, tok, target.config.vocab_size)
    for prompt in ("n = ", "def count(items):\n    return ", "# total: "):
        ids = tok.encode(prompt)
        ref = constrained_generate(target, tok, ids, masks, 32)
        for k in (1, 3):
            out, stats = speculative_decode(target, draft, ids, 32, k=k, eos_id=tok.eos_id,
                                            constraint=masks)
            assert out == ref.tokens, (prompt, k)
        assert stats.proposed >= stats.accepted


def test_sampled_constrained_speculation_stays_inside_the_constraint(models):
    target, draft, tok = models
    masks = regex_constraint(PATTERN, tok, target.config.vocab_size)
    for seed in range(6):
        out, _ = speculative_decode(target, draft, tok.encode("n = "), 32, k=3,
                                    sampling=Sampling(temperature=1.0, seed=seed),
                                    eos_id=tok.eos_id, constraint=masks)
        text = tok.decode([t for t in out if t != tok.eos_id])
        assert out[-1] == tok.eos_id and re.fullmatch(PATTERN, text, re.ASCII), text
        assert check_draft(masks, masks.start, out) == len(out)


def test_constrained_speculation_needs_eos(models):
    target, draft, tok = models
    masks = regex_constraint(PATTERN, tok, target.config.vocab_size)
    with pytest.raises(ValueError, match="eos_id"):
        speculative_decode(target, draft, [1, 2], 8, constraint=masks)
