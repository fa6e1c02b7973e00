"""infer-lab: LLM inference optimization, from scratch, one technique per file.

    >>> import infer_lab
    >>> model, tok = infer_lab.load("code-m")
    >>> infer_lab.complete(model, tok, "def read_config(path):")
"""

from __future__ import annotations

import torch

from . import telemetry
from .config import PRESETS, ModelConfig, get_config
from .generate import GREEDY, Sampling, complete, generate, stream
from .kv_cache import KVCache
from .model import Transformer
from .tokenizer import Tokenizer

__all__ = ["load", "ModelConfig", "PRESETS", "get_config", "Transformer", "KVCache",
           "Tokenizer", "Sampling", "GREEDY", "generate", "stream", "complete"]
__version__ = "0.1.0"

# Inside a Jupyter kernel only: offer the JupyterLab inference monitor a comm. Nothing is
# sent until a monitor panel subscribes; plain Python skips this (see telemetry.py).
telemetry.connect()


def load(name: str, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None) -> tuple[Transformer, Tokenizer]:
    """A model and its tokenizer: a zoo name ("code-s", "code-m"), a local Hugging Face
    checkpoint folder, or a hub name when the machine is online.

    Device and dtype default to the best this machine has (see :mod:`infer_lab.hardware`).
    """
    from .hardware import default_device, default_dtype
    from .zoo import ZOO, load_zoo

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if name in ZOO:
        return load_zoo(name, device, dtype)
    from .hf import load_hf  # transformers is imported only for real checkpoints

    return load_hf(name, device=device, dtype=dtype)
