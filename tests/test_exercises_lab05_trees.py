"""Lab 05's token-tree exercises and sections 7-9 (issue 18, section 4): the learner's
tree mask equals the library's ancestor mask and is what the target verifies with; the
sibling rule equals verify_tree's step; through the lab's adapter it keeps the target's
distribution, and the wrong rule the lab offers fails the same test."""

import random

import pytest
import torch

from infer_lab.exercises import EXERCISES
from infer_lab.exercises import speculative_tree as ex
from infer_lab.generate import generate
from infer_lab.lessons import lab05_speculative_trees as st
from infer_lab.speculative.tree import TokenTree, ancestor_mask, verify_tree
from infer_lab.speculative.tree_decode import ModelTreeDrafter, tree_speculative_decode


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))


def _check(name, fn, seed=0):
    return EXERCISES[name].check(fn, seed=seed, verbose=False, record=False)


def test_the_mask_reference_equals_the_librarys_ancestor_mask():
    rng = random.Random(0)
    for _ in range(100):
        parents = ex._random_parents(rng)
        assert torch.equal(ex.tree_attention_mask(parents), ancestor_mask(parents))


def test_the_sibling_reference_is_verify_trees_step():
    """One level of verify_tree, replayed with the same uniforms, emits what the
    reference's distribution puts all its mass on, or draws from the same residual."""
    rng = random.Random(1)
    for _ in range(60):
        case = ex._sibling_case(rng.randrange(2**31), rng.randint(2, 10), rng.randint(1, 4),
                                rng.uniform(0.2, 3))
        p, children, q, _ = case.args
        tree = TokenTree(children, [-1] * len(children), q.float())
        seed = rng.randrange(2**31)
        # verify_tree draws one uniform per sibling tried, then the final token
        g = torch.Generator().manual_seed(seed)
        path, nxt = verify_tree(torch.stack([p, *[p] * len(children)]).float(), tree, g)
        g = torch.Generator().manual_seed(seed)
        replay = [float(torch.rand((), generator=g)) for _ in children]
        dist = ex.accept_among_siblings(p, children, q, replay)
        if path:
            assert dist[children[path[0]]] == 1.0
        else:  # all rejected: no child kept, and the token drawn is one the residual allows
            assert all(dist[c] < 1.0 for c in children) and dist[nxt] > 0


@pytest.mark.parametrize("name", ["tree_attention_mask", "accept_among_siblings"])
def test_each_mistake_is_named_whatever_the_seed(name):
    exercise = EXERCISES[name]
    assert _check(name, exercise.reference)
    for mistake in exercise.mistakes:
        for seed in range(3):
            r = _check(name, mistake.fn, seed)
            assert not r and r.mistake == mistake.name, (mistake.name, r.message)


def test_equivalent_masks_pass():
    def as_lists(parents):  # a nested-list answer built from ancestor walks
        n = len(parents)
        rows = []
        for i in range(n):
            seen, j = set(), i
            while j >= 0:
                seen.add(j)
                j = parents[j]
            rows.append([j in seen for j in range(n)])
        return torch.tensor(rows, dtype=torch.bool).reshape(n, n)
    assert _check("tree_attention_mask", as_lists)


def test_a_learners_mask_is_what_the_target_verifies_with():
    from infer_lab.kv_cache import KVCache
    from infer_lab.speculative.tree import TreeCache, tree_visibility

    target, draft = st.toy_pair(vocab=50)
    plain = generate(target, [[1, 2, 3]], 20)[0]
    calls = []

    def spy(parents):
        calls.append(list(parents))
        return ex.tree_attention_mask(parents)

    good, _ = tree_speculative_decode(target, ModelTreeDrafter(draft, (2, 2)), [1, 2, 3], 20,
                                      ancestors=spy)
    assert good == plain and calls and all(len(c) == 6 for c in calls)

    # a wrong mask changes what the target computes for the tree's nodes
    parents, tokens = [-1, -1, 0, 0, 1, 1], [4, 5, 6, 7, 8, 9]

    def scores(mask):
        cache = KVCache.for_model(target, 1, 32)
        target(torch.tensor([[1, 2, 3]]), cache)
        vis = tree_visibility(1, parents, mask)[1:, 1:]  # the nodes only, no pending token
        pos = torch.tensor([[3, 3, 4, 4, 4, 4]])
        return target(torch.tensor([tokens]), TreeCache(cache, 3, vis), pos)[0]

    right = scores(ex.tree_attention_mask)
    assert not torch.allclose(right, scores(ex._causal))


def test_the_adapted_rule_keeps_the_distribution_and_the_wrong_one_fails():
    _, good = st.tree_distribution_test(st.sibling_rule(ex.accept_among_siblings), 400)
    _, bad = st.tree_distribution_test(st.sibling_rule(ex._against_original_p), 400)
    assert good > 1e-3 and bad < 1e-3


def test_the_stepper_records_each_round_and_the_figure_draws():
    target, draft = st.toy_pair(vocab=50)

    class Tok:
        def decode(self, ids):
            return " ".join(map(str, ids))

    s = st.TreeStepper(target, ModelTreeDrafter(draft, (2, 1)), [1, 2, 3], 12, Tok())
    assert s.out == generate(target, [[1, 2, 3]], 12)[0]
    assert s.rounds and all(len(t) == 4 for t, _ in s.rounds)
    kept = sum(len(r.path) + 1 for _, r in s.rec.rounds)
    assert kept >= 12  # every round's path and next token: all the output, maybe more
    s.slider.value = len(s.rounds) - 1  # redraws without error
    assert "round" in s.readout.value


def test_alpha_needed_inverts_the_formula():
    from infer_lab.speculative import theoretical_speedup

    a = st.alpha_needed(0.1, 1.5, 3)
    assert theoretical_speedup(a, 3, 0.1) == pytest.approx(1.5, rel=1e-6)
    assert st.alpha_needed(0.9, 2.0, 3) != st.alpha_needed(0.9, 2.0, 3)  # unreachable: nan
