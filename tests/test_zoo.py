"""The embedded zoo: data rule, shipped weights, model cards and what the models can do."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import infer_lab
from infer_lab.zoo import WEIGHTS_DIR, ZOO, model_card
from infer_lab.zoo import data
from infer_lab.zoo.loop import (Checkpoint, Run, TrainConfig, adamw, next_token_loss, resume,
                                train_loop)
from infer_lab.zoo.card import SAMPLE_PROMPT


def test_split_is_deterministic_disjoint_and_skips_data_files():
    train = {f.path for f in data.iter_files("train")}
    valid = {f.path for f in data.iter_files("valid")}
    assert train and valid and not train & valid
    assert 0.02 < len(valid) / (len(train) + len(valid)) < 0.10
    assert all(data.split_of(p) == "valid" for p in valid)
    assert not any(p.startswith(("encodings/", "pydoc_data/")) for p in train | valid)
    assert any(p.startswith("test/") for p in train)  # the test suite is included


def test_data_filter_drops_literal_tables_but_keeps_code():
    table = "decoding_table = (\n" + "    '\\x00'\n" * 50 + "    0x0041, 0x0042,\n" * 50 + ")\n"
    assert data.looks_like_data(table)
    code = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n"
    assert not data.looks_like_data(code)


def test_zoo_fits_in_30_mb():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir() if p.is_file())
    assert total <= 30 * 2**20


@pytest.mark.parametrize("name", ZOO)
def test_zoo_loads_offline_with_a_complete_card(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = infer_lab.load(name, device="cpu")
    card = model_card(name)
    assert card["params"] == sum(p.numel() for p in model.parameters())
    for key in ("valid_loss_nats", "valid_perplexity", "valid_bits_per_byte",
                "train_minutes", "train_config", "data_rule"):
        assert key in card
    assert math.isclose(card["valid_perplexity"], math.exp(card["valid_loss_nats"]), rel_tol=1e-3)
    assert tok.vocab_size == model.config.vocab_size == 4096
    assert (WEIGHTS_DIR / f"{name}.md").exists()


def _held_out_loss(model, tok, n_tokens=8192, seq=256):
    ids = torch.tensor(tok.encode(data.held_out_text(max_chars=40_000))[: n_tokens + 1])
    losses = []
    with torch.no_grad():
        for i in range(0, len(ids) - 1, seq):
            x, y = ids[i:i + seq][None], ids[i + 1:i + 1 + seq][None]
            x = x[:, : y.shape[1]]
            logits = model(x)
            losses.append(torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum"))
    return float(sum(losses)) / (len(ids) - 1)


def test_code_m_perplexity_at_least_15_percent_below_code_s():
    cards = {n: model_card(n) for n in ZOO}
    assert cards["code-m"]["valid_perplexity"] <= 0.85 * cards["code-s"]["valid_perplexity"]
    # Recompute on a held-out slice, so the cards cannot drift from the weights.
    ppl = {}
    for n in ZOO:
        model, tok = infer_lab.load(n, device="cpu", dtype=torch.float32)
        ppl[n] = math.exp(_held_out_loss(model, tok))
    assert ppl["code-m"] <= 0.85 * ppl["code-s"], ppl


@pytest.mark.parametrize("name", ZOO)
def test_completes_read_config_with_python(name):
    model, tok = infer_lab.load(name, device="cpu")
    text = SAMPLE_PROMPT + infer_lab.complete(model, tok, SAMPLE_PROMPT, 48)
    lines = text.splitlines()
    body = [ln for ln in lines[1:] if ln.strip()]
    assert body and all(ln.startswith((" ", "\t")) for ln in body[:1]), text
    # Parses once the last (possibly cut-off) line is dropped.
    for cut in range(len(lines), 1, -1):
        try:
            ast.parse("\n".join(lines[:cut]))
            break
        except SyntaxError:
            continue
    else:
        pytest.fail(f"no prefix of the completion parses:\n{text}")
    assert cut >= 2



# -- the one training loop (zoo.loop), shared with distillation ---------------------------------
TINY_TC = TrainConfig(steps=8, batch_size=2, seq_len=16, lr=1e-2, min_lr=1e-3, warmup=2,
                      eval_every=4, eval_tokens=128, bf16=False)


def _tiny_run(seed=0) -> Run:
    torch.manual_seed(seed)
    model = infer_lab.Transformer(infer_lab.ModelConfig(vocab_size=64, n_layer=2, n_head=2,
                                                        d_model=32, d_ff=64, max_seq_len=64))
    return Run(model, adamw(model.named_parameters(), TINY_TC), torch.Generator().manual_seed(0))


def _stream() -> np.ndarray:
    rng = np.random.RandomState(0)
    phrases = rng.randint(0, 64, (8, 6))
    return np.concatenate([phrases[i] for i in rng.randint(0, 8, 500)]).astype(np.uint16)


def test_train_loop_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    ids = _stream()
    full = _tiny_run()
    state = train_loop(full, next_token_loss, TINY_TC, ids, ids, progress=False)
    assert [h["step"] for h in state["history"]] == [4, 8] and state["step"] == 8

    class Stop(Exception):
        pass

    def stop_at_4(step, entry):
        if step == 4:
            raise Stop

    ckpt = Checkpoint(tmp_path / "ckpt.pt", every_minutes=0.0,  # every step, by the clock
                      extra=lambda: {"note": "kept"})
    with pytest.raises(Stop):
        train_loop(_tiny_run(), next_token_loss, TINY_TC, ids, ids, ckpt, on_eval=stop_at_4,
                   progress=False)
    assert not list(tmp_path.glob("*.partial*"))  # written atomically: no leftovers
    again, seen = _tiny_run(seed=7), []  # another init: everything must come from the file
    assert resume(again, Checkpoint(ckpt.path, restore=lambda ck: seen.append(ck["note"])))
    assert seen == ["kept"] and again.state["step"] == 4
    train_loop(again, next_token_loss, TINY_TC, ids, ids, ckpt, progress=False)
    for a, b in zip(full.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert again.state["history"] == [{**h, "seconds": again.state["history"][i]["seconds"]}
                                      for i, h in enumerate(state["history"])]
    assert not resume(_tiny_run(), Checkpoint(tmp_path / "none.pt"))
