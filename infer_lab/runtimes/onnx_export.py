"""Export the model to ONNX with past keys/values as inputs and outputs; decode with ONNX
Runtime, which owns the KV loop.

ONNX graphs are functions: no state survives a call, so the KV cache travels through
them. Each call takes the tokens of this step, their positions, the positions of every
key so far, and ``past_k``, ``past_v`` (n_layer, B, H_kv, S_past, D); it returns logits
and ``present_k``, ``present_v`` with the step's keys appended (S_past + T). That is the
Hugging Face / Optimum "past_key_values" contract, and here it is one more implementation
of our cache contract (:class:`PastKV`), so the model exported is the same ``Transformer``
class, unchanged. :class:`OrtDecoder` runs prefill and decode in ONNX Runtime, feeding each
step's presents back as the next step's pasts.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..kv_cache import Step, attention_mask, sdpa
from ..model import MLP, Attention, Block, RMSNorm, Transformer

INSTALL = "pip install onnxruntime onnx onnxscript (or the 'runtimes' extra)"
NAMES = ["idx", "pos", "kpos", "past_k", "past_v"]  # the graph's inputs, in order
# Module types of a plain Transformer, which the exporter takes; anything else is named
# when an export fails.
EXPORTS = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.ModuleList, nn.Dropout, Transformer,
           RMSNorm, Attention, MLP, Block)


class PastKV:
    """The cache contract over pasts given as tensors: appends, never writes in place."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor, kpos: torch.Tensor):
        self.past_k, self.past_v, self.kpos = past_k, past_v, kpos  # (L, B, H_kv, S, D), (B, S+T)
        self.present_k: list[torch.Tensor] = []
        self.present_v: list[torch.Tensor] = []

    def begin(self, T: int, pos: torch.Tensor | None) -> Step:
        return Step(pos, attention_mask(pos, self.kpos, None))  # (B, 1, T, S + T)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: Step) -> torch.Tensor:
        k_all = torch.cat([self.past_k[layer], k], dim=2)  # (B, H_kv, S + T, D)
        v_all = torch.cat([self.past_v[layer], v], dim=2)
        self.present_k.append(k_all)
        self.present_v.append(v_all)
        # GQA as an explicit repeat: the exporter's SDPA has no enable_gqa
        rep = q.shape[1] // k.shape[1]
        return sdpa(q, k_all.repeat_interleave(rep, 1), v_all.repeat_interleave(rep, 1),
                    step.mask)


class StepWithPast(nn.Module):
    """``forward(idx, pos, kpos, past_k, past_v) -> (logits, present_k, present_v)``."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, idx, pos, kpos, past_k, past_v):
        cache = PastKV(past_k, past_v, kpos)
        logits = self.model(idx, cache, pos, last_only=True)  # (B, 1, V)
        return logits, torch.stack(cache.present_k), torch.stack(cache.present_v)


def example_inputs(model: Transformer, batch: int = 1, past: int = 3, T: int = 2):
    cfg, dev = model.config, model.device
    shape = (cfg.n_layer, batch, cfg.n_kv_head, past, cfg.head_dim)
    kpos = torch.arange(past + T, device=dev).expand(batch, -1)
    return (torch.zeros(batch, T, dtype=torch.long, device=dev), kpos[:, past:].clone(),
            kpos.clone(), torch.zeros(shape, dtype=model.dtype, device=dev),
            torch.zeros(shape, dtype=model.dtype, device=dev))


def export(model: Transformer, path: str | Path) -> Path:
    """Write ``model`` as an ONNX graph of :class:`StepWithPast` (batch, step length and
    past length dynamic) to ``path``."""
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it (and onnx)
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxscript: {INSTALL}") from e
    path = Path(path)
    B, T, S = torch.export.Dim("batch"), torch.export.Dim("T"), torch.export.Dim("past")
    ST = torch.export.Dim("keys")
    dims = {"idx": {0: B, 1: T}, "pos": {0: B, 1: T}, "kpos": {0: B, 1: ST},
            "past_k": {1: B, 3: S}, "past_v": {1: B, 3: S}}
    try:
        with _quiet_exporter():
            prog = torch.onnx.export(StepWithPast(model.eval()), example_inputs(model),
                                     dynamo=True, dynamic_shapes=dims, verbose=False,
                                     input_names=NAMES,
                                     output_names=["logits", "present_k", "present_v"])
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; name the module
        raise ValueError(_refusal(model, f"failed ({type(e).__name__})")) from e
    prog.save(str(path))
    # The exporter falls back to tracing when it cannot capture a graph, and a trace turns
    # whatever left the graph (numpy, .item()) into constants: check the file on inputs of
    # other shapes and values than the example's before anyone uses it.
    err = verify(model, path)
    if not err < 1e-3:
        path.unlink()
        raise ValueError(_refusal(model, f"gave a graph whose logits differ from PyTorch's by "
                                         f"{err:.3g}"))
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints each stage and warns about operators of libraries we do not
    use (torchvision): keep that out of labs and benchmarks; errors still propagate."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _refusal(model: Transformer, what: str) -> str:
    odd = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
           if name and not isinstance(m, EXPORTS)]
    return (f"ONNX export of {type(model).__name__} {what}; modules outside the plain "
            f"model: {', '.join(odd) or 'none'}")


def verify(model: Transformer, path: str | Path, seed: int = 0) -> float:
    """Largest |logit difference| between the ONNX graph in ONNX Runtime and the PyTorch
    step, on a random batch of 2 with 4 past tokens and a chunk of 3."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    args = example_inputs(model, batch=2, past=4, T=3)
    args = (torch.randint(0, model.config.vocab_size, args[0].shape, generator=g), *args[1:3],
            torch.randn(args[3].shape, generator=g), torch.randn(args[4].shape, generator=g))
    with torch.no_grad():
        want = StepWithPast(model)(*args)[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {n: a.cpu().numpy() for n, a in zip(NAMES, args)})[0]
    return float((torch.from_numpy(got) - want.cpu()).abs().max())


class OrtDecoder:
    """Greedy / sampled decoding of an exported model in ONNX Runtime (CPU), batch 1.

    ONNX Runtime owns the loop's state: the presents of one call are the pasts of the
    next (numpy arrays, never copied back into torch).
    """

    def __init__(self, path: str | Path, config, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(f"ONNX Runtime is not installed: {INSTALL}") from e
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # ORT's pool spins between calls by default: on 2 cores that steals the cores from
        # whatever runs next (eager PyTorch in the same benchmark ran 10x slower).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.config = config

    def generate(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy new tokens after ``prompt`` (one sequence)."""
        import numpy as np

        cfg = self.config
        if not prompt or len(prompt) + max_new_tokens > cfg.max_seq_len:
            raise ValueError(f"need a non-empty prompt that fits {cfg.max_seq_len} positions "
                             "with the new tokens")
        shape = (cfg.n_layer, 1, cfg.n_kv_head, 0, cfg.head_dim)
        dtype = np.float32
        past_k = past_v = np.zeros(shape, dtype=dtype)
        idx = np.array([prompt], dtype=np.int64)  # (1, T)
        pos = np.arange(len(prompt), dtype=np.int64)[None]  # (1, T)
        out: list[int] = []
        while len(out) < max_new_tokens:
            logits, past_k, past_v = self.session.run(None, {
                "idx": idx, "pos": pos, "kpos": np.arange(pos[0, -1] + 1, dtype=np.int64)[None],
                "past_k": past_k, "past_v": past_v})
            out.append(int(logits[0, -1].argmax()))
            idx, pos = np.array([[out[-1]]], dtype=np.int64), pos[:, -1:] + 1
        return out
