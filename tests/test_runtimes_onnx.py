"""ONNX export with past keys/values, decoded by ONNX Runtime with its own KV loop (issue
16): the graph's logits and presents equal the PyTorch step's, ORT's greedy tokens equal
ours, and a model the exporter cannot take gets an error that names the module."""

import numpy as np
import pytest
import torch
from torch import nn

from infer_lab.config import get_config
from infer_lab.generate import generate
from infer_lab.model import Transformer
from infer_lab.runtimes.onnx_export import OrtDecoder, StepWithPast, example_inputs, export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")
NAMES = ["idx", "pos", "kpos", "past_k", "past_v"]


def small_model(block: str = "llama") -> Transformer:
    torch.manual_seed(0)
    extra = {"block": "gpt2", "bias": True, "qkv_bias": True} if block == "gpt2" else {}
    cfg = get_config("code-m", n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128,
                     vocab_size=256, max_seq_len=64, **extra)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(10)  # peaked logits: no greedy near-ties
    return m


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def exported(request, tmp_path_factory):
    model = small_model(request.param)
    return model, export(model, tmp_path_factory.mktemp("onnx") / "m.onnx")


def test_graph_equals_the_pytorch_step(exported):
    import onnxruntime as ort

    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for past, T in [(0, 4), (5, 1), (7, 3)]:  # a prefill, a decode step, a chunk
        args = example_inputs(model, batch=2, past=past, T=T)
        args = (torch.randint(0, 256, args[0].shape), *args[1:3],
                torch.randn(args[3].shape), torch.randn(args[4].shape))
        with torch.no_grad():
            want = StepWithPast(model)(*args)
        got = session.run(None, {n: a.numpy() for n, a in zip(NAMES, args)})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-4)


def test_ort_greedy_tokens_equal_ours(exported):
    model, path = exported
    dec = OrtDecoder(path, model.config, threads=2)
    for prompt in ([3, 1, 4, 1, 5], [7]):
        assert dec.generate(prompt, 12) == generate(model, [prompt], 12, eos_id=None)[0]
    with pytest.raises(ValueError, match="fits 64 positions"):
        dec.generate([1] * 60, 10)


class HostRoundTrip(nn.Module):
    """An MLP whose output leaves the graph as Python floats: nothing an exporter can
    capture (a trace would record them as constants, which the export's check catches)."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return torch.tensor(self.mlp(x).tolist())


def test_a_module_the_exporter_cannot_take_is_named(tmp_path):
    model = small_model()
    model.layers[1].mlp = HostRoundTrip(model.layers[1].mlp)
    with pytest.raises(ValueError, match=r"layers\.1\.mlp \(HostRoundTrip\)"):
        export(model, tmp_path / "bad.onnx")
