import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from infer_lab import ModelConfig, Transformer
from infer_lab.distill import (DISTILL_PRESETS, DistillConfig, HiddenProjection, distill,
                               hidden_state_loss, kd_loss, match_layers, reverse_kl_loss,
                               sequence_stream, soft_targets, teacher_samples)

torch.set_num_threads(1)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(z, T):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


# -- losses -------------------------------------------------------------------------------------
def test_kd_loss_equals_a_hand_computed_kl():
    s = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    t = [[2.0, 0.5, 0.0], [0.0, 1.0, 3.0]]
    for T in (1.0, 2.0, 4.0):
        want = T * T * sum(_kl(_softmax(ti, T), _softmax(si, T)) for si, ti in zip(s, t)) / 2
        got = kd_loss(torch.tensor(s), torch.tensor(t), T)
        assert float(got) == pytest.approx(want, rel=1e-5)


def test_kd_loss_is_zero_when_logits_match_and_scales_with_t_squared():
    z = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    assert float(kd_loss(z, z.clone(), 3.0)) == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(4, 7), 3 * torch.randn(4, 7)
    for T in (0.5, 2.0, 5.0):  # the T^2 factor: the loss is T^2 times the soft KL
        log_pt, log_ps = (t / T).log_softmax(-1), (s / T).log_softmax(-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
        torch.testing.assert_close(kd_loss(s, t, T), T * T * kl)
    # T^2 keeps the gradient's size comparable across temperatures (Hinton et al. 2015)
    grads = []
    for T in (4.0, 8.0):
        x = (0.1 * torch.randn(3, 50, generator=torch.Generator().manual_seed(1))).requires_grad_()
        kd_loss(x, 0.1 * torch.randn(3, 50, generator=torch.Generator().manual_seed(2)), T).backward()
        grads.append(x.grad.norm())
    assert float(grads[1] / grads[0]) == pytest.approx(1.0, rel=0.1)


def test_reverse_kl_differs_from_forward_on_an_asymmetric_case():
    s, t = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    fwd, rev = kd_loss(s, t, 1.0), reverse_kl_loss(s, t, 1.0)
    assert float(rev) == pytest.approx(_kl(_softmax([4, 0, 0], 1), _softmax([1, 1, 0], 1)), rel=1e-5)
    assert abs(float(fwd) - float(rev)) > 0.1
    torch.testing.assert_close(reverse_kl_loss(s, t, 1.0), kd_loss(t, s, 1.0))


def test_losses_reject_vocab_mismatch_and_bad_temperature():
    with pytest.raises(ValueError, match="vocabularies differ"):
        kd_loss(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="vocabularies differ"):
        reverse_kl_loss(torch.randn(2, 5), torch.randn(2, 6))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            kd_loss(torch.randn(2, 5), torch.randn(2, 5), bad)
        with pytest.raises(ValueError, match="temperature"):
            soft_targets(torch.randn(5), bad)
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0)


def test_soft_targets_flatten_with_temperature():
    z = torch.tensor([3.0, 1.0, 0.0])
    p1, p4 = soft_targets(z, 1.0), soft_targets(z, 4.0)
    assert float(p1.sum()) == pytest.approx(1.0) and p4.max() < p1.max()


def test_hidden_state_loss_and_layer_matching():
    assert match_layers(2, 8) == [(0, 3), (1, 7)]
    assert match_layers(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    proj = HiddenProjection(6, 6)
    h = torch.randn(2, 3, 6)
    assert float(hidden_state_loss(h, h, proj).detach()) == pytest.approx(0.0)  # identity init
    narrow = HiddenProjection(4, 6)
    loss = hidden_state_loss([torch.randn(2, 3, 4)], [torch.randn(2, 3, 6)], narrow)
    loss.backward()
    assert narrow.proj.weight.grad is not None


# -- the loop -----------------------------------------------------------------------------------
def tiny(d=32, layers=2, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=64, n_layer=layers, n_head=2, d_model=d,
                                   d_ff=64, max_seq_len=64))


def data(n=6000):
    # A repetitive stream (a short random "vocabulary of phrases") the student can learn.
    rng = np.random.RandomState(0)
    phrases = rng.randint(0, 64, (8, 6))
    return np.concatenate([phrases[i] for i in rng.randint(0, 8, n // 6)]).astype(np.uint16)


CFG = replace(DISTILL_PRESETS["tiny"], steps=12, eval_every=6, lr=1e-2, warmup=2)


@pytest.mark.parametrize("loss", ["ce", "kd", "reverse_kl", "hidden"])
def test_distill_lowers_the_loss(loss):
    ids = data()
    student, teacher = tiny(), tiny(d=48, layers=3, seed=1)
    before = distill(tiny(), None, replace(CFG, steps=1, lr=0.0, loss="ce"), ids, ids,
                     progress=False).final_valid_loss
    seen = []
    r = distill(student, teacher, replace(CFG, loss=loss, eval_every=1), ids, ids,
                callback=lambda step, rec: seen.append(step), progress=False)
    assert [h["step"] for h in r.history] == seen == list(range(1, 13))
    assert set(r.history[0]) == {"step", "train_loss", "valid_loss", "valid_ppl", "seconds"}
    train = [h["train_loss"] for h in r.history]
    assert sum(train[-3:]) < 0.8 * sum(train[:3])  # the training objective falls
    if loss == "ce":
        assert r.final_valid_loss < before - 0.3
    assert r.final_valid_ppl == pytest.approx(math.exp(r.final_valid_loss))


def test_distill_needs_a_teacher_of_the_same_vocabulary():
    ids = data()
    with pytest.raises(ValueError, match="needs a teacher"):
        distill(tiny(), None, replace(CFG, loss="kd"), ids, ids, progress=False)
    other = Transformer(ModelConfig(vocab_size=80, n_layer=1, n_head=2, d_model=32))
    with pytest.raises(ValueError, match="vocabularies differ"):
        distill(tiny(), other, replace(CFG, loss="kd"), ids, ids, progress=False)


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    ids, teacher = data(), tiny(d=48, seed=1)
    cfg = replace(CFG, loss="kd", kd_weight=0.5)
    full = tiny()
    r_full = distill(full, teacher, cfg, ids, ids, progress=False)

    class Stop(Exception):
        pass

    def stop_at_6(step, record):
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        distill(tiny(), teacher, cfg, ids, ids, checkpoint_dir=tmp_path, callback=stop_at_6,
                progress=False)
    assert (tmp_path / "distill.pt").exists()
    assert not list(tmp_path.glob("*.partial*"))  # written atomically: no leftovers
    seen = []
    resumed = tiny(seed=7)  # different init: everything must come from the checkpoint
    r = distill(resumed, teacher, cfg, ids, ids, checkpoint_dir=tmp_path,
                callback=lambda s, rec: seen.append(s), progress=False)
    assert seen == [12]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert r.final_valid_loss == pytest.approx(r_full.final_valid_loss)
    assert [h["step"] for h in r.history] == [6, 12]
    with pytest.raises(ValueError, match="another config"):
        distill(tiny(), teacher, replace(cfg, lr=0.5), ids, ids, checkpoint_dir=tmp_path,
                progress=False)


def test_distill_reapplies_pruning_masks():
    ids = data()
    student = tiny()
    masks = {"layers.0.mlp.w1": torch.rand(64, 32, generator=torch.Generator().manual_seed(0)) > 0.5}
    distill(student, None, replace(CFG, loss="ce", steps=3), ids, ids, progress=False, masks=masks)
    assert (student.layers[0].mlp.w1.weight[~masks["layers.0.mlp.w1"]] == 0).all()


def test_sequence_level_distillation_trains_on_teacher_samples():
    teacher = tiny(seed=1)
    samples = teacher_samples(teacher, [[1, 2, 3]], n=5, length=10, progress=False)
    assert len(samples) == 5 and all(len(s) == 13 and s[:3] == [1, 2, 3] for s in samples)
    assert len({tuple(s) for s in samples}) > 1  # seeded, but not the same sample repeated
    stream = sequence_stream(samples * 20, eos_id=0)
    r = distill(tiny(), None, replace(CFG, loss="sequence", seq_len=16), stream, stream,
                progress=False)
    assert math.isfinite(r.final_valid_loss)
