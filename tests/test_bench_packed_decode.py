"""The packed-decode benchmark's plumbing on a tiny random model (speed is not asserted)."""

import torch

from infer_lab.bench.packed_decode import (
    bench_packed_decode,
    build,
    bytes_per_token,
    layer_times,
    report,
)
from infer_lab.config import get_config
from infer_lab.model import Transformer

TINY = {"n_layer": 2, "d_model": 128, "n_head": 4, "d_ff": 256, "vocab_size": 512,
        "max_seq_len": 64}


def test_rows_bytes_and_report():
    torch.manual_seed(0)
    fp = Transformer(get_config("smollm2-135m", n_kv_head=2, **TINY)).eval()
    out = bench_packed_decode(fp, [1, 2, 3], n_tokens=3, repeats=1, threads=1,
                              profiled=("int8-packed+head",), with_layers=False)
    rows = {r["scheme"]: r for r in out["decode"]}
    assert rows["fp32"]["vs_fp32"] == 1 and rows["int8-packed"]["tokens_equal_unfused"] == 3
    # fp32: 4 bytes a weight, the tied head once; int8 codes and the head in int8 with +head
    fp_bytes = bytes_per_token(fp, 0)
    assert fp_bytes == 4 * (512 * 128 + 2 * (128 * 256 + 128 * 128 + 3 * 128 * 256))
    assert rows["int8-packed+head"]["mb_per_token"] < rows["int8-packed"]["mb_per_token"]
    assert bytes_per_token(build(fp, "int8-packed+head")[0], 0) < fp_bytes / 3.5
    layers = layer_times({"w2": (64, 128)}, threads=1, repeats=1, budget_s=0.01)
    assert [r["way"] for r in layers][:2] == ["F.linear fp32", "F.linear bf16"]
    assert out["profiles"]["int8-packed+head"][0]["share"] > 0
    assert len(report(out["decode"], layers, out["profiles"])) == 4
