"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

A cheap *draft* proposes k tokens d_1..d_k with probabilities q; the *target* scores all
k+1 positions in ONE forward pass (as cheap as a decode step when decoding is
memory-bound) giving p. Each d_i is accepted with probability min(1, p(d_i) / q(d_i));
at the first rejection a token is drawn from the residual norm(max(0, p - q)); when all
k are accepted a bonus token comes from p_{k+1}. The output has exactly the target's
distribution, and with greedy sampling it is token for token the target's greedy output.

Expected tokens per target call, with acceptance rate a:  (1 - a^(k+1)) / (1 - a),
so with a draft costing c target-steps per token the speedup is
(1 - a^(k+1)) / ((1 - a)(k c + 1)).

Drafts implement :class:`~infer_lab.speculative.drafts.Drafter` (``start(prompt)``,
``propose(k) -> (tokens, q | None)``, ``commit(accepted, next_token)``): a smaller model (:class:`ModelDrafter`) or an n-gram
match in the text so far (:class:`PromptLookupDrafter`, "prompt lookup decoding";
q = None means a deterministic proposal, i.e. q is one-hot), or a quantized copy of the
target itself (:func:`quantized_draft`, self-speculation).

    stats.py    SpecStats (alpha, tokens per call), the speedup formula
    verify.py   the acceptance rule: rejection sampling, and greedy's longest agreeing prefix
    drafts.py   the Drafter contract and the drafts: model, prompt lookup, hybrid, quantized
    decode.py   speculative_decode: draft, verify in one target forward, roll back
"""

from .decode import speculative_decode
from .drafts import Drafter, HybridDrafter, ModelDrafter, PromptLookupDrafter, quantized_draft
from .stats import SpecStats, theoretical_speedup
from .verify import verify, verify_greedy

__all__ = ["Drafter", "HybridDrafter", "ModelDrafter", "PromptLookupDrafter", "SpecStats",
           "quantized_draft", "speculative_decode", "theoretical_speedup", "verify",
           "verify_greedy"]
