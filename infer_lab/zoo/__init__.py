"""The embedded model zoo: tiny models trained on the Python standard library.

``code-m`` (target and teacher) and ``code-s`` (draft and student) share one byte-level
BPE tokenizer. Weights ship inside the package as safetensors, so loading works offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..model import Transformer
from ..tokenizer import Tokenizer

WEIGHTS_DIR = Path(__file__).parent / "weights"
ZOO = ("code-s", "code-m")


def model_card(name: str) -> dict:
    """The card written by the training script: config, loss, perplexity, time."""
    _check_name(name)
    return json.loads((WEIGHTS_DIR / f"{name}.json").read_text())


def load_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(WEIGHTS_DIR / "tokenizer.json")


def load_zoo(name: str, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> tuple[Transformer, Tokenizer]:
    """A zoo model in eval mode, and its tokenizer."""
    from safetensors.torch import load_file

    card = model_card(name)
    model = Transformer(ModelConfig.from_dict(card["config"]))
    state = load_file(str(WEIGHTS_DIR / f"{name}.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if model.config.tie_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise RuntimeError(f"{name}: weights do not match the model "
                           f"(missing {missing}, unexpected {unexpected})")
    return model.to(device=device, dtype=dtype).eval(), load_tokenizer()


def _check_name(name: str) -> None:
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; the embedded models are: "
                         f"{', '.join(ZOO)}")
    if not (WEIGHTS_DIR / f"{name}.safetensors").exists():
        raise FileNotFoundError(f"{name} weights are missing from {WEIGHTS_DIR}; "
                                f"reinstall infer_lab or run python -m infer_lab.zoo.train {name}")
