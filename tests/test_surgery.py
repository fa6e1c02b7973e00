"""infer_lab.surgery: one rule for which linear layers a technique touches.

Each caller used to write its own rule (fnmatch, ``n != "lm_head"``, ``startswith``,
``split(".")[-1]``, a regex). The tests below write each old rule out again, explicitly,
and check that every caller now selects exactly the layers it selected before, on a
code-m-shaped and a gpt2-shaped model, with the head tied and untied.
"""

import copy
import fnmatch
import re
import types

import pytest
import torch
from torch import nn

import infer_lab.quality
from infer_lab import ModelConfig, Transformer
from infer_lab.prune import magnitude_masks, masks_2_4, prunable_linears
from infer_lab.quant.apply import Scheme, quantize_model, sensitivity_scan
from infer_lab.quant.awq import awq_quantize_model
from infer_lab.quant.blocks import q4_k_m_assignment, use_more_bits
from infer_lab.quant.calibrate import quantize_blockwise
from infer_lab.quant.catalog import eligible
from infer_lab.quant.gptq import gptq_quantize_model
from infer_lab.quant.llm_int8 import LLMInt8Linear, llm_int8_model
from infer_lab.surgery import DEFAULT_SKIP, block_index, linears, matches, set_module, tied

SHAPES = {
    "code-m": dict(n_head=4, n_kv_head=2, d_ff=64),  # llama block, GQA, SwiGLU (w3)
    "gpt2": dict(n_head=4, block="gpt2", bias=True, qkv_bias=True, d_ff=128),
}


def tiny(shape: str, tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=64, n_layer=2, d_model=32, max_seq_len=32,
                                   tie_embeddings=tie, **SHAPES[shape])).eval()


MODELS = [(s, t) for s in SHAPES for t in (True, False)]
IDS = [f"{s}-{'tied' if t else 'untied'}" for s, t in MODELS]


# -- the old rules, written out as they were ------------------------------------------------
def old_linears(model):
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear}


def old_tied(model, name, linear):
    ptr = linear.weight.data_ptr()
    return any(p.data_ptr() == ptr and not pn.startswith(name + ".")
               for pn, p in model.named_parameters(remove_duplicate=False))


def old_apply(model, skip=("lm_head",)):  # Scheme.for_module: fnmatch on the full name
    return [n for n in old_linears(model) if not any(fnmatch.fnmatchcase(n, p) for p in skip)]


def old_catalog(model):
    return [n for n, m in old_linears(model).items()
            if n != "lm_head" and not old_tied(model, n, m)]


def old_calibrate(model, skip=("lm_head",)):  # names in the order they were swapped
    names = [n for n, lin in old_linears(model).items()
             if not any(n == s or n.startswith(s + ".") for s in skip)
             and not old_tied(model, n, lin)]
    groups = [[n for n in names if n.startswith(f"layers.{i}.")] for i in range(len(model.layers))]
    rest = [n for n in names if not any(n in g for g in groups)]
    return [n for g in [*groups, rest] for n in g]


def old_llm_int8(model, skip=("lm_head",)):
    return [n for n in old_linears(model) if n.split(".")[-1] not in skip]


def old_prune(model):
    return [n for n, m in old_linears(model).items() if not old_tied(model, n, m)]


def old_layer(name):
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return None if match is None else int(match.group(1))


def swapped(q, model) -> list[str]:
    """The linear layers of ``model`` that are something else in its quantized copy ``q``."""
    return [n for n in old_linears(model) if type(q.get_submodule(n)) is not nn.Linear]


# -- every caller selects what it selected before --------------------------------------------
@pytest.mark.parametrize("shape,tie", MODELS, ids=IDS)
def test_quantize_model_and_sensitivity_scan_select_as_before(shape, tie, monkeypatch):
    model = tiny(shape, tie)
    assert swapped(quantize_model(copy.deepcopy(model), "int8"), model) == old_apply(model)
    over = Scheme(bits=8, overrides={"layers.0.*": None})
    assert swapped(quantize_model(copy.deepcopy(model), over), model) == \
        [n for n in old_apply(model) if not fnmatch.fnmatchcase(n, "layers.0.*")]
    if not tie:
        q = quantize_model(copy.deepcopy(model), Scheme(bits=8, skip=()))
        assert swapped(q, model) == old_apply(model, ())
    # sensitivity_scan: one perplexity per eligible layer (perplexity itself stubbed out)
    monkeypatch.setattr(infer_lab.quality, "perplexity",
                        lambda *a, **k: types.SimpleNamespace(ppl=1.0))
    scan = sensitivity_scan(model, None, "", "int8", progress=False)
    assert list(scan.ppl) == [n for n, m in old_linears(model).items()
                              if n in old_apply(model) and not old_tied(model, n, m)]


@pytest.mark.parametrize("shape,tie", MODELS, ids=IDS)
def test_catalog_llm_int8_and_pruning_select_as_before(shape, tie):
    model = tiny(shape, tie)
    assert list(eligible(model)) == old_catalog(model)
    q = llm_int8_model(copy.deepcopy(model))
    assert swapped(q, model) == old_llm_int8(model)
    assert all(isinstance(q.get_submodule(n), LLMInt8Linear) for n in swapped(q, model))
    assert list(prunable_linears(model)) == old_prune(model)
    assert list(magnitude_masks(model, 0.5)) == old_prune(model)
    assert list(magnitude_masks(model, 0.5, "layer")) == old_prune(model)
    assert list(masks_2_4(model)) == old_prune(model)
    # the quantizers keep an untied head; pruning takes it like any other matrix
    assert ("lm_head" in prunable_linears(model)) == (not tie)
    assert "lm_head" not in eligible(model)


@pytest.mark.parametrize("shape,tie", MODELS, ids=IDS)
@pytest.mark.parametrize("skip", [("lm_head",), ("layers.0",), ("layers.1.mlp", "lm_head"), ()])
def test_blockwise_calibration_swaps_the_same_layers_in_the_same_order(shape, tie, skip):
    model = tiny(shape, tie)
    seen = []

    def make(name, linear, x):
        seen.append(name)
        assert x.shape == (2 * 8, linear.in_features)
        return linear

    quantize_blockwise(copy.deepcopy(model), torch.randint(0, 64, (2, 8)), make, skip=skip)
    assert seen == old_calibrate(model, skip)


@pytest.mark.parametrize("shape,tie", MODELS, ids=IDS)
@pytest.mark.parametrize("quantize", [gptq_quantize_model, awq_quantize_model],
                         ids=["gptq", "awq"])
def test_gptq_and_awq_swap_the_layers_calibration_chose(shape, tie, quantize):
    model = tiny(shape, tie)
    q = quantize(copy.deepcopy(model), torch.randint(0, 64, (2, 8)), group_size=32)
    assert swapped(q, model) == sorted(old_calibrate(model), key=list(old_linears(model)).index)
    assert type(q.lm_head) is nn.Linear


@pytest.mark.parametrize("shape,tie", MODELS, ids=IDS)
def test_q4_k_m_assignment_reads_the_layer_as_the_regex_did(shape, tie):
    model = tiny(shape, tie)
    names = list(old_linears(model)) + [
        "layers.3.mlp.w2", "model.layers.12.attn.wqkv", "layers.7", "layers.x.w2",
        "mylayers.2.w2", "layers.layers.5.w2", "layers.04.mlp.w2", "h.0.w2"]
    for name in names:
        assert block_index(name) == old_layer(name), name
    n = 16
    fmt = q4_k_m_assignment(names, n)
    for name in names:
        leaf, layer = name.rsplit(".", 1)[-1], old_layer(name)
        high = leaf == "lm_head" or (leaf in ("wqkv", "w2") and layer is not None
                                     and use_more_bits(layer, n))
        assert fmt[name] == ("q8_0" if high else "q4_k"), name


# -- the rule itself ----------------------------------------------------------------------------
def test_a_pattern_names_a_module_and_everything_inside_it():
    assert matches("lm_head", DEFAULT_SKIP) and not matches("layers.0.mlp.w2", DEFAULT_SKIP)
    assert matches("layers.0.mlp.w2", ("layers.0",))
    assert not matches("layers.10.mlp.w2", ("layers.1",))  # whole components, not prefixes
    assert matches("layers.3.mlp.w2", ("*.mlp.w2",)) and matches("layers.3.mlp.w2", ("*.mlp",))
    assert matches("layers.0.attn.wo", ("layers.0.*",)) and not matches("lm_head", ())
    assert not matches("LM_HEAD", ("lm_head",))  # case-sensitive, like module names


def test_tied_weights_are_never_listed_and_swap_puts_a_module_by_name():
    model = tiny("code-m")
    assert tied(model, "lm_head") and not tied(model, "layers.0.mlp.w1")
    assert "lm_head" not in linears(model, skip=())
    assert "lm_head" in linears(model, skip=(), keep_tied=True)
    assert not tied(tiny("code-m", tie=False), "lm_head")
    new = nn.Linear(32, 64, bias=False)
    set_module(model, "layers.1.mlp.w2", new)
    assert model.layers[1].mlp.w2 is new
    set_module(model, "lm_head", new)
    assert model.lm_head is new
