"""Our decoders of GGUF block types against the gguf package's reference decoders."""

import numpy as np
import pytest
import torch

from infer_lab.quant.gguf_blocks import BLOCK_SIZES, dequantize

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402

# Byte offsets of each type's fp16 fields: random bytes there could be NaN or inf.
FP16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q8_0": [0], "Q4_K": [0, 2],
               "Q5_K": [0, 2], "Q6_K": [208]}


def random_blocks(kind: str, rows: int, nb: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    _, nbytes = BLOCK_SIZES[kind]
    b = torch.randint(0, 256, (rows, nb, nbytes), dtype=torch.uint8, generator=g)
    scales = (torch.rand(rows, nb, generator=g) * 0.1 + 1e-3).half()  # finite, varied
    for off in FP16_FIELDS[kind]:
        b[..., off:off + 2] = scales.view(torch.uint8).reshape(rows, nb, 2)
    return b


@pytest.mark.parametrize("kind", sorted(FP16_FIELDS))
@pytest.mark.parametrize("seed", [0, 1])
def test_decoders_match_gguf(kind, seed):
    per_block, _ = BLOCK_SIZES[kind]
    rows, nb = 3, 4
    b = random_blocks(kind, rows, nb, seed)
    ours = dequantize(kind, b.flatten(), (rows, nb * per_block))
    ref = quants.dequantize(b.reshape(rows, -1).numpy(), getattr(T, kind))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["F32", "F16"])
def test_float_tensors(kind):
    x = torch.randn(2, 8).to(torch.float32 if kind == "F32" else torch.float16)
    out = dequantize(kind, x.contiguous().view(torch.uint8).flatten(), (2, 8))
    assert torch.equal(out, x.float())


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="not supported; supported: F32"):
        dequantize("IQ2_XXS", torch.zeros(10, dtype=torch.uint8), (1, 32))
    b = random_blocks("Q4_1", 1, 2, 0).flatten()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        dequantize("Q4_1", b[:-1], (1, 64))
    with pytest.raises(ValueError, match="blocks of 32"):
        dequantize("Q4_1", b, (1, 40))
