"""Fixtures shared by several test modules (a module's own fixture of the same name wins)."""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run under Triton's interpreter on a machine without CUDA; triton.jit reads
# this when a kernel is defined, so it is set before any kernel module is imported (the
# notebooks' kernels inherit it). On a GPU the kernels compile for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from infer_lab.config import get_config
from infer_lab.model import Transformer


@pytest.fixture
def tiny() -> Transformer:
    """A 2-layer, 64-wide random model: fast enough to decode hundreds of tokens."""
    torch.manual_seed(0)
    cfg = get_config("code-m", n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128,
                     vocab_size=256, max_seq_len=512)
    return Transformer(cfg).eval()
