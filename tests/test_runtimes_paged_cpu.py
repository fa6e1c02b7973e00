"""The C++ paged decode attention (issue 16, part 4) equals the PyTorch block-by-block
read and the gather reference, and the engine decoding through it gives every request
the tokens it gets alone. Built once per machine (about a minute; cached on disk)."""

import pytest
import torch

from infer_lab.kernels.paged_attention import cases
from infer_lab.runtimes import paged_cpu
from infer_lab.serving import Engine, EngineConfig
from infer_lab.serving.paged_attention import paged_attention

pytestmark = pytest.mark.skipif(not paged_cpu.available(),
                                reason="the C++ kernel could not be built here")


def test_equals_the_gather_reference_on_every_kernel_case():
    """The Triton kernel's cases: one token, full and partial last blocks, GQA 1/2/4, odd
    block sizes and head dims, pools of random values (a stale slot read would show)."""
    f32 = [c for c in cases(seed=3, device="cpu") if c.args[0].dtype == torch.float32]
    assert len(f32) >= 5
    for c in f32:
        q, k, v, tables, lens = c.args
        torch.testing.assert_close(paged_cpu.paged_decode_cpu(q, k, v, tables, lens),
                                   paged_attention(q, k, v, tables.long(), lens),
                                   atol=1e-5, rtol=1e-5, msg=c.name)


def test_bad_input_is_refused_before_the_kernel_reads_memory():
    q, k, v = torch.randn(2, 4, 16), torch.randn(6, 2, 4, 16), torch.randn(6, 2, 4, 16)
    tables, lens = torch.tensor([[0, 1], [2, 3]]), torch.tensor([5, 8])
    paged_cpu.paged_decode_cpu(q, k, v, tables, lens)  # fine
    with pytest.raises(ValueError, match="outside the pool of 6"):
        paged_cpu.paged_decode_cpu(q, k, v, torch.tensor([[0, 9], [2, 3]]), lens)
    with pytest.raises(ValueError, match="context_lens must lie in 1 .. "):
        paged_cpu.paged_decode_cpu(q, k, v, tables, torch.tensor([5, 9]))
    with pytest.raises(ValueError, match="float32 CPU tensors"):
        paged_cpu.paged_decode_cpu(q.half(), k.half(), v.half(), tables, lens)


def test_engine_tokens_through_the_cpp_kernel_equal_block_by_block(tiny):
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 13, 1, 9, 30)]
    prompts.append(prompts[1][:8] + [7, 7])  # shares two blocks with prompt 1
    runs = {}
    for how in ("blocks", "cpp"):
        cfg = EngineConfig(block_size=4, num_blocks=16, max_num_batched_tokens=16,
                           decode_attention=how)  # 64 slots: preemption happens
        runs[how] = Engine(tiny, cfg).generate(prompts, 8)
    assert runs["cpp"] == runs["blocks"]
