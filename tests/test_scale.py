"""INFER_LAB_SCALE picks the scale; scale.py alone holds every lab's sizes."""

from dataclasses import fields

import pytest
import torch

from infer_lab.config import PRESETS
from infer_lab.scale import SCALES, LabSizes, current_scale


def test_scale(monkeypatch):
    monkeypatch.setenv("INFER_LAB_SCALE", "ci")
    assert current_scale().name == "ci"
    monkeypatch.setenv("INFER_LAB_SCALE", " Laptop ")
    assert current_scale() is SCALES["laptop"]
    monkeypatch.setenv("INFER_LAB_SCALE", "auto")
    assert current_scale().name == ("gpu" if torch.cuda.is_available() else "laptop")
    monkeypatch.delenv("INFER_LAB_SCALE")
    assert current_scale().name in ("gpu", "laptop")
    monkeypatch.setenv("INFER_LAB_SCALE", "huge")
    with pytest.raises(ValueError, match="ci, laptop, gpu, auto"):
        current_scale()
    for s in SCALES.values():
        assert s.decode_len + 64 <= PRESETS["code-m"].max_seq_len


def test_every_scale_has_every_lab_group_read_by_name_too():
    for s in SCALES.values():
        for group in ("quantization", "pruning", "distillation", "speculative", "serving",
                      "kernels", "runtimes", "applications"):
            sizes = getattr(s, group)
            assert isinstance(sizes, LabSizes)
            assert all(sizes[f.name] == getattr(sizes, f.name) for f in fields(sizes))
    with pytest.raises(KeyError):
        SCALES["ci"].speculative["no such size"]
    ci = SCALES["ci"].distillation
    assert ci.config(loss="kd").steps == ci.steps and ci.config(loss="kd").loss == "kd"
