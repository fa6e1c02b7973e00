"""The early-exit distilled draft (SmolLM2's: the target's first layers, a trained adapter)
and the draft vocabulary Medusa now shares with EAGLE: whatever the weights, greedy
decoding equals the target's, sampling keeps its distribution, and only the draft's own
weights are saved."""

import pytest
import torch
from test_speculative_learned import _noisy, tiny

from infer_lab.generate import Sampling, generate
from infer_lab.speculative.early_exit import EarlyExitDraft, early_exit_loss
from infer_lab.speculative.features import features_and_logits
from infer_lab.speculative.medusa import MedusaDrafter, MedusaHeads, medusa_loss
from infer_lab.speculative.tree_decode import ModelTreeDrafter, tree_speculative_decode


@pytest.fixture(scope="module")
def target():
    return tiny(0, layers=3).requires_grad_(False)


def test_an_untrained_adapter_is_a_plain_early_exit_and_only_it_is_saved(target):
    draft = EarlyExitDraft(target, 2, rank=8)
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = target.lm_head(target.norm(target.hidden(x, n_layer=2)))
        torch.testing.assert_close(draft(x), want)
        assert not torch.allclose(want, target(x))  # two of three layers: not the target
    assert set(draft.state_dict()) == {"adapter.norm.weight", "adapter.down.weight",
                                       "adapter.up.weight"}
    assert draft.config.n_layer == 2 and target.config.n_layer == 3
    draft.set_vocab(torch.tensor([1, 3, 5, 7]))
    assert draft.state_dict()["vocab"].tolist() == [1, 3, 5, 7]
    with torch.no_grad():
        logits = draft(x)[0, -1]  # (V,): -inf outside the draft vocabulary
    assert torch.isinf(logits).sum() == 50 - 4 and torch.isfinite(logits[[1, 3, 5, 7]]).all()


@pytest.mark.parametrize("branching", [(1,), (1, 1, 1), (2, 2)])
@pytest.mark.parametrize("vocab", [None, [0, 1, 2, 3, 4, 5, 6, 9]], ids=["full", "draft-vocab"])
def test_early_exit_greedy_equals_target(target, branching, vocab):
    draft = _noisy(EarlyExitDraft(target, 1, rank=8), 4).eval()
    if vocab is not None:
        draft.set_vocab(torch.tensor(vocab))
    for prompt in ([3], [1, 4, 1, 5, 9, 2, 6]):
        out, stats = tree_speculative_decode(target, ModelTreeDrafter(draft, branching),
                                             prompt, 25)
        assert out == generate(target, [prompt], 25)[0] and stats.proposed > 0


def test_the_exit_loss_trains_the_adapter_only(target):
    before = {k: v.clone() for k, v in target.state_dict().items()}
    draft = EarlyExitDraft(target, 1, rank=16)
    x = torch.randint(0, 50, (4, 24), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(draft.parameters(), lr=3e-3)
    first = early_exit_loss(draft, target, x).item()
    for _ in range(30):
        opt.zero_grad()
        early_exit_loss(draft, target, x, ce_stride=2).backward()
        opt.step()
    assert early_exit_loss(draft, target, x).item() < 0.8 * first
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_sampled_early_exit_tree_keeps_the_target_distribution():
    """q is zero outside the draft vocabulary; the sibling rule must still give the
    target's distribution of the first two tokens, those outside it included."""
    from test_speculative_tree import CHI2_63_P001, _chi2, _exact_first_two

    target = tiny(3, vocab=8, scale=3.0, layers=2)
    draft = _noisy(EarlyExitDraft(target, 1, rank=4), 5).eval()
    draft.set_vocab(torch.tensor([0, 2, 3, 5, 6, 7]))
    counts = torch.zeros(8, 8)
    for i in range(1000):
        s = Sampling(temperature=1.0, seed=i)
        out, _ = tree_speculative_decode(target, ModelTreeDrafter(draft, (3, 2), s), [1, 2],
                                         2, sampling=s)
        counts[out[0], out[1]] += 1
    assert _chi2(counts, _exact_first_two(target)) < CHI2_63_P001


def test_bad_early_exits_are_refused(target):
    with pytest.raises(ValueError, match="n_layer"):
        EarlyExitDraft(target, 3)  # all of the target's layers: not an early exit
    with pytest.raises(ValueError, match="n_layer"):
        EarlyExitDraft(target, 0)
    with pytest.raises(ValueError, match="rank"):
        EarlyExitDraft(target, 1, rank=0)


def test_medusa_proposes_from_its_draft_vocabulary_and_keeps_greedy_output(target):
    heads = _noisy(MedusaHeads.for_target(target, n_heads=2), 1).eval()
    heads.set_vocab(torch.tensor([1, 3, 5, 7, 9]))
    assert heads.state_dict()["vocab"].tolist() == [1, 3, 5, 7, 9]
    drafter = MedusaDrafter(heads, target, (3, 2))
    out, _ = tree_speculative_decode(target, drafter, [1, 4, 1, 5], 25)
    assert out == generate(target, [[1, 4, 1, 5]], 25)[0]
    drafter.start([1, 4], 64, None)
    drafter.feature = torch.randn(32)
    tree = drafter.propose_tree()
    assert set(tree.tokens) <= {1, 3, 5, 7, 9} and len(tree.tokens) == 3 + 3 * 2


def test_the_strided_medusa_loss_is_the_loss_on_those_positions(target):
    heads = _noisy(MedusaHeads.for_target(target, n_heads=2), 2)
    x = torch.randint(0, 50, (2, 17), generator=torch.Generator().manual_seed(1))
    f = torch.nn.functional
    with torch.no_grad():
        h, _ = features_and_logits(target, x)
        logits = heads(h, target.lm_head)  # (K, B, T, V)
        want = sum(0.8 ** i * f.cross_entropy(logits[i, :, : 17 - (i + 2): 3].flatten(0, 1),
                                              x[:, i + 2:: 3].flatten()) for i in range(2))
        torch.testing.assert_close(medusa_loss(heads, target, x, ce_stride=3), want / 1.8)
        full = sum(0.8 ** i * f.cross_entropy(logits[i, :, : 17 - (i + 2)].flatten(0, 1),
                                              x[:, i + 2:].flatten()) for i in range(2))
        torch.testing.assert_close(medusa_loss(heads, target, x), full / 1.8)


def test_a_kind_preset_overrides_its_target_preset():
    from infer_lab.speculative.train_draft import DraftConfig, preset

    assert preset("code-m", "eagle") == DraftConfig()
    medusa, eagle = preset("smollm2-135m", "medusa"), preset("smollm2-135m", "eagle")
    assert (medusa.n_heads, medusa.ce_stride, eagle.ce_stride) == (1, 8, 4)
    assert medusa.feature_tokens == eagle.feature_tokens == 163840


def test_a_distilled_draft_for_another_vocabulary_needs_an_early_exit(target):
    from infer_lab.speculative.train_draft import DraftConfig, make_draft

    with pytest.raises(ValueError, match="set exit_layer"):
        make_draft("distilled", target, DraftConfig())  # code-s: 4096 tokens, target 50
    draft = make_draft("distilled", target, DraftConfig(exit_layer=2, adapter_rank=8))
    assert isinstance(draft, EarlyExitDraft) and draft.config.n_layer == 2
