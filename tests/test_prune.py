import copy

import pytest
import torch

from infer_lab import GREEDY, ModelConfig, Transformer, generate
from infer_lab.prune import (drop_layers, head_scores, is_2_4, layer_scores, magnitude_masks,
                             mask_2_4, mlp_scores, n_params, prunable_linears, prune_2_4,
                             prune_heads, prune_magnitude, prune_mlp, semi_structured_speedup,
                             sparsity_of)
from infer_lab.prune.structured import _rows

torch.set_num_threads(1)


def tiny(n_kv_head=2, n_layer=3, seed=0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, n_layer=n_layer, n_head=4, n_kv_head=n_kv_head,
                      d_model=32, d_ff=48, max_seq_len=64)
    return Transformer(cfg).eval()


def calib(seed=1, n=4, T=17):
    return torch.randint(97, (n, T), generator=torch.Generator().manual_seed(seed))


# -- magnitude ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_global_magnitude_hits_the_sparsity_exactly(sparsity):
    model = tiny()
    linears = prunable_linears(model)
    assert "lm_head" not in linears and len(linears) == 3 * 5
    total = sum(m.weight.numel() for m in linears.values())
    masks = magnitude_masks(model, sparsity, "global")
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    prune_magnitude(model, sparsity)
    assert sparsity_of(model) == pytest.approx(round(sparsity * total) / total)


def test_global_magnitude_prunes_the_smallest_weights():
    model = tiny()
    masks = magnitude_masks(model, 0.5)
    kept = torch.cat([m.weight.abs()[masks[n]] for n, m in prunable_linears(model).items()])
    pruned = torch.cat([m.weight.abs()[~masks[n]] for n, m in prunable_linears(model).items()])
    assert pruned.max() <= kept.min()


def test_layer_magnitude_hits_the_sparsity_in_every_layer():
    model = tiny()
    prune_magnitude(model, 0.7, scope="layer")
    for name, m in prunable_linears(model).items():
        assert int((m.weight == 0).sum()) == round(0.7 * m.weight.numel()), name
    assert model.lm_head.weight.eq(0).sum() == 0  # the tied embedding is never pruned


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_raises(bad):
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_masks(tiny(), bad)


# -- 2:4 ---------------------------------------------------------------------------------------
def test_mask_2_4_keeps_the_two_largest_of_every_four():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    mask = mask_2_4(w)
    groups, g_mask = w.abs().view(8, 4, 4), mask.view(8, 4, 4)
    assert (g_mask.sum(-1) == 2).all()
    kept = groups.masked_fill(~g_mask, float("inf")).min(-1).values
    dropped = groups.masked_fill(g_mask, -1).max(-1).values
    assert (dropped <= kept).all()
    assert mask_2_4(torch.tensor([[0.1, -0.9, 0.5, 0.2]])).tolist() == [[False, True, True, False]]


def test_prune_2_4_model_and_in_features_check():
    model = prune_2_4(tiny())
    assert all(is_2_4(m.weight) for m in prunable_linears(model).values())
    assert sparsity_of(model) == pytest.approx(0.5)
    assert not is_2_4(torch.ones(2, 8))
    with pytest.raises(ValueError, match="multiple of 4"):
        mask_2_4(torch.randn(4, 6))


def test_semi_structured_speedup_is_labelled_unmeasured_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the timing runs for real")
    r = semi_structured_speedup()
    assert r["measured"] is False and "unmeasured" in r["reason"]


# -- structured --------------------------------------------------------------------------------
def logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("score", ["weight", "activation", "gradient"])
def test_prune_mlp_equals_the_masked_original(score):
    model, x = tiny(), calib(seed=5, n=2, T=12)
    small = prune_mlp(model, 0.5, score, calib_ids=calib())
    assert small.config.d_ff == 24 and model.config.d_ff == 48  # the original is untouched
    assert n_params(model) - n_params(small) == 3 * (3 * 32 * 24)
    assert n_params(small) == small.config.n_params
    scores = mlp_scores(model, score, calib())
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for b, s in zip(masked.layers, scores):
            drop = s.argsort()[:24]
            b.mlp.w1.weight[drop] = 0  # silu(0) * (w3 x) = 0: the neuron outputs nothing
    torch.testing.assert_close(logits(small, x), logits(masked, x), rtol=1e-5, atol=1e-5)


def _mask_heads(model, q_drop, kv_drop=()):
    """Zero the Wo columns of the dropped query heads (and Wk/Wv rows of dropped KV heads)."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for b, qd, kd in zip(masked.layers, q_drop, kv_drop or [[]] * len(q_drop)):
            a = b.attn
            D = a.head_dim
            if len(qd):
                a.wo.weight[:, _rows(torch.as_tensor(qd), D)] = 0
    return masked


@pytest.mark.parametrize("unit", ["query", "kv_group"])
def test_prune_heads_equals_the_masked_original(unit):
    model, x = tiny(n_kv_head=2), calib(seed=5, n=2, T=12)
    small = prune_heads(model, 0.5, "activation", calib(), unit=unit)
    s = head_scores(model, "activation", calib(), unit)
    if unit == "query":  # per KV group of 2 query heads, the lower one goes
        q_drop = [[g * 2 + int(r[g * 2:g * 2 + 2].argmin()) for g in range(2)] for r in s]
        assert small.config.n_kv_head == 2
    else:
        q_drop = [[2 * int(r.argmin()), 2 * int(r.argmin()) + 1] for r in s]
        assert small.config.n_kv_head == 1
    assert all(b.attn.n_head == 2 for b in small.layers)
    torch.testing.assert_close(logits(small, x), logits(_mask_heads(model, q_drop), x),
                               rtol=1e-5, atol=1e-5)
    per_q = 32 * 8 * 2  # a query head: 8 rows of Wq and 8 columns of Wo
    expected = 3 * (2 * per_q if unit == "query" else 2 * per_q + 2 * 32 * 8)
    assert n_params(model) - n_params(small) == expected
    # The config describes the pruned model: a model built from it has the same shapes.
    assert small.config.n_head == 2 and small.config.head_dim == model.config.head_dim
    assert small.config.n_params == n_params(small)
    rebuilt = Transformer(ModelConfig.from_dict(small.config.to_dict()))
    rebuilt.load_state_dict(small.state_dict())
    torch.testing.assert_close(logits(rebuilt, x), logits(small, x))


def test_prune_heads_mha_removes_whole_heads_and_gradient_scores_run():
    model = tiny(n_kv_head=4)
    small = prune_heads(model, 0.25, "gradient", calib())
    assert small.config.n_kv_head == 3 and all(b.attn.n_head == 3 for b in small.layers)
    assert head_scores(model, "weight").shape == (3, 4)
    with pytest.raises(ValueError, match="calib_ids"):
        prune_heads(model, 0.5, "activation")


@pytest.mark.parametrize("score", ["weight", "activation", "gradient"])
def test_drop_layers_equals_skipping_them(score):
    model, x = tiny(n_layer=4), calib(seed=5, n=2, T=12)
    small = drop_layers(model, 2, score, calib())
    assert small.config.n_layer == 2 and len(small.layers) == 2
    drop = layer_scores(model, score, calib()).argsort()[:2].tolist()
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for i in drop:  # a block with zero output projections is the identity
            masked.layers[i].attn.wo.weight.zero_()
            masked.layers[i].mlp.w2.weight.zero_()
    torch.testing.assert_close(logits(small, x), logits(masked, x), rtol=1e-5, atol=1e-5)
    assert drop_layers(model, [0, 3]).config.n_layer == 2
    with pytest.raises(ValueError):
        drop_layers(model, [0, 1, 2, 3])


def _greedy_no_cache(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("how", ["mlp", "query", "kv_group", "layers", "all"])
def test_pruned_models_generate_with_the_kv_cache(how):
    model = tiny(n_kv_head=2, n_layer=3)
    c = calib()
    if how == "mlp":
        small = prune_mlp(model, 0.5, calib_ids=c)
    elif how in ("query", "kv_group"):
        small = prune_heads(model, 0.5, calib_ids=c, unit=how)
    elif how == "layers":
        small = drop_layers(model, 1, calib_ids=c)
    else:
        small = drop_layers(prune_heads(prune_mlp(model, 0.25, calib_ids=c), 0.5,
                                        calib_ids=c, unit="kv_group"), [1])
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    out = generate(small, prompts, 8, GREEDY, eos_id=None)
    assert out == [_greedy_no_cache(small, p, 8) for p in prompts]
