"""Token trees (issue 18, section 2): the tree mask scores every branch as if it were
alone; greedy tree decoding equals greedy target decoding; sampled tree decoding keeps
the target's distribution, and a wrong sibling rule fails the same test."""

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.generate import Sampling, generate
from infer_lab.kv_cache import KVCache
from infer_lab.model import Transformer
from infer_lab.speculative.tree import (
    TokenTree,
    TreeCache,
    ancestor_mask,
    keep_path,
    tree_visibility,
    verify_tree,
    verify_tree_greedy,
)
from infer_lab.speculative.tree_decode import ModelTreeDrafter, tree_speculative_decode


def tiny(seed, vocab=50, layers=2, d=32, scale=20.0, gqa=False):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=vocab, n_layer=layers, n_head=2,
                                n_kv_head=1 if gqa else 2, d_model=d, max_seq_len=128)).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(scale)
    return m


@pytest.fixture(scope="module")
def pair():
    return tiny(0), tiny(1, layers=1)


TREE = TokenTree(tokens=[5, 9, 3, 7, 7, 2], parents=[-1, -1, 0, 0, 1, 2])


def test_ancestor_mask_and_depths():
    m = ancestor_mask(TREE.parents)
    assert m[5].tolist() == [True, False, True, False, False, True]  # 5 <- 2 <- 0
    assert m[4].tolist() == [False, True, False, False, True, False]
    assert TREE.depths() == [1, 1, 2, 2, 2, 3]
    assert TREE.path(5) == [0, 2, 5] and TREE.children(-1) == [0, 1]
    v = tree_visibility(2, TREE.parents)
    assert v[:2, :2].tolist() == [[True, False], [True, True]] and v[2:, :2].all()


@pytest.mark.parametrize("gqa", [False, True])
def test_one_tree_forward_scores_each_branch_as_if_alone(gqa):
    target = tiny(0, gqa=gqa)
    prompt = [1, 4, 2]
    cache = KVCache.for_model(target, 1, 64)
    target(torch.tensor([prompt[:2]]), cache)  # a committed context, then one pending token
    P = 1
    view = TreeCache(cache, cache.length, tree_visibility(P, TREE.parents))
    base = int(cache.next_pos[0])
    pos = torch.tensor([[base] + [base + d for d in TREE.depths()]])
    with torch.no_grad():
        logits = target(torch.tensor([prompt[2:] + TREE.tokens]), view, pos)[0]  # (1 + N, V)
        for i in range(len(TREE)):
            seq = prompt + [TREE.tokens[j] for j in TREE.path(i)]
            alone = target(torch.tensor([seq]))[0, -1]
            torch.testing.assert_close(logits[1 + i], alone, rtol=1e-4, atol=1e-4)


def test_keep_path_leaves_the_cache_of_the_accepted_path(pair):
    target, _ = pair
    cache = KVCache.for_model(target, 1, 64)
    with torch.no_grad():
        target(torch.tensor([[1, 4]]), cache)
        start = cache.length
        view = TreeCache(cache, start, tree_visibility(1, TREE.parents))
        pos = torch.tensor([[2] + [2 + d for d in TREE.depths()]])
        target(torch.tensor([[2] + TREE.tokens]), view, pos)
        keep_path(cache, start, 1, TREE.path(5))  # nodes 0, 2, 5: tokens 5, 3, 2
        assert cache.length == start + 4 and int(cache.next_pos[0]) == 6
        nxt = target(torch.tensor([[8]]), cache)[0, -1]
        alone = target(torch.tensor([[1, 4, 2, 5, 3, 2, 8]]))[0, -1]
    torch.testing.assert_close(nxt, alone, rtol=1e-4, atol=1e-4)


def test_verify_tree_greedy_follows_the_argmax():
    # choices[0] after the root, choices[1 + i] after node i
    choices = [9, 0, 7, 0, 0, 0, 0]
    assert verify_tree_greedy(choices, TREE) == ([1, 4], 0)  # 9 (node 1), then 7 (node 4)
    assert verify_tree_greedy([4] + [0] * 6, TREE) == ([], 4)


@pytest.mark.parametrize("branching", [(1,), (2,), (3, 1), (2, 2), (2, 2, 1), (4, 2, 2, 1)])
def test_greedy_tree_equals_target_greedy(pair, branching):
    target, draft = pair
    g = torch.Generator().manual_seed(len(branching))
    for n in (1, 4, 9):
        prompt = torch.randint(0, 50, (n,), generator=g).tolist()
        out, stats = tree_speculative_decode(target, ModelTreeDrafter(draft, branching),
                                             prompt, 30)
        assert out == generate(target, [prompt], 30)[0]
        assert stats.proposed > 0


def test_a_self_draft_tree_accepts_its_whole_depth(pair):
    target, _ = pair
    out, stats = tree_speculative_decode(target, ModelTreeDrafter(target, (2, 2, 2)),
                                         [1, 2, 3], 40)
    assert out == generate(target, [[1, 2, 3]], 40)[0]
    assert stats.acceptance_rate == 1.0


def test_near_the_end_of_the_context_it_decodes_without_a_tree(pair):
    target, draft = pair
    prompt = list(range(1, 40)) * 2 + [1] * 38  # 116 of 128 positions
    out, _ = tree_speculative_decode(target, ModelTreeDrafter(draft, (3, 3)), prompt, 12)
    assert out == generate(target, [prompt], 12)[0]


# -- sampling: the output distribution is the target's -------------------------------------
def _exact_first_two(target, prompt=(1, 2)):
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([list(prompt)]))[0, -1].double(), -1)
        seqs = torch.tensor([[*prompt, a] for a in range(8)])
        p2 = torch.softmax(target(seqs)[:, -1].double(), -1)
    return p1[:, None] * p2


def _chi2(counts, probs):
    expected = probs * counts.sum()
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


CHI2_63_P001 = 103.44  # chi-square critical value, 63 degrees of freedom, p = 0.001


def _counts(target, draft, n, rule=None, branching=(3, 2)):
    counts = torch.zeros(8, 8)
    for i in range(n):
        s = Sampling(temperature=1.0, seed=i)
        out, _ = tree_speculative_decode(target, ModelTreeDrafter(draft, branching, s), [1, 2],
                                         2, sampling=s, rule=rule)
        counts[out[0], out[1]] += 1
    return counts


@pytest.fixture(scope="module")
def small_vocab_pair():
    return tiny(3, vocab=8, scale=3.0), tiny(4, vocab=8, layers=1, scale=3.0)


def test_sampled_tree_output_matches_target_distribution(small_vocab_pair):
    target, draft = small_vocab_pair
    assert _chi2(_counts(target, draft, 3000), _exact_first_two(target)) < CHI2_63_P001


def _siblings_against_the_original_p(p, tree, gen):
    """Wrong: each sibling is tried against the target's p, never against the residual."""
    path, node = [], -1
    while True:
        dist = p[node + 1]
        for c in tree.children(node):
            x, q = tree.tokens[c], tree.q[c]
            if torch.rand((), generator=gen).item() < min(1.0, float(dist[x] / q[x])):
                path.append(c)
                node = c
                break
        else:  # every sibling rejected: a draw from p itself, as if none had been tried
            return path, int(torch.multinomial(dist, 1, generator=gen))


def test_a_wrong_sibling_rule_fails_the_same_test(small_vocab_pair):
    target, draft = small_vocab_pair
    counts = _counts(target, draft, 3000, rule=_siblings_against_the_original_p)
    assert _chi2(counts, _exact_first_two(target)) > CHI2_63_P001


def test_verify_tree_on_known_distributions():
    # one-hot proposals (top-k): the first child is kept with probability p(x1); after
    # its rejection the second with p(x2) / (1 - p(x1)); the rest from what is left
    p = torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    tree = TokenTree([0, 1], [-1, -1])
    firsts = torch.zeros(3)
    for s in range(4000):
        path, nxt = verify_tree(p, tree, torch.Generator().manual_seed(s))
        firsts[tree.tokens[path[0]] if path else nxt] += 1
    torch.testing.assert_close(firsts / firsts.sum(), p[0], atol=0.03, rtol=0)


def test_bad_input(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="parent"):
        TokenTree([1, 2], [-1, 5])
    with pytest.raises(ValueError, match="one parent per token"):
        TokenTree([1, 2], [-1])
    with pytest.raises(ValueError, match="branching"):
        ModelTreeDrafter(draft, (2, 0))
    with pytest.raises(ValueError, match="branching"):
        ModelTreeDrafter(draft, ())
    with pytest.raises(ValueError, match="pending"):
        tree_visibility(0, [-1])
    small = KVCache.for_model(target, 1, 4)
    with pytest.raises(ValueError, match="does not fit"):
        target(torch.tensor([[1, 2, 3, 4, 5]]), TreeCache(small, 0, tree_visibility(
            1, [-1, 0, 1, 2])), torch.tensor([[0, 1, 2, 3, 4]]))
    with pytest.raises(ValueError, match="vocabulary"):
        tree_speculative_decode(target, ModelTreeDrafter(tiny(5, vocab=60), (2,)), [1], 4)
    from infer_lab.quant.kv import QuantizedKVCache  # codes and scales: not moved by slot

    with pytest.raises(ValueError, match="plain contiguous"):
        TreeCache(QuantizedKVCache.for_model(target, 1, 16), 0, tree_visibility(1, [-1]))
