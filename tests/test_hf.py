"""HF checkpoints load into our Transformer exactly (minGPT's HF import test, offline).

Each case builds a tiny random model with transformers' own config class, saves it
with a tokenizer.json into a temporary folder, loads it with infer_lab.hf and compares
logits (within 1e-4) and 20 greedy tokens (identical) with transformers.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

transformers = pytest.importorskip("transformers")

import infer_lab  # noqa: E402
from infer_lab.config import ModelConfig, get_config  # noqa: E402
from infer_lab.generate import generate  # noqa: E402
from infer_lab.checkpoints import CheckpointNotFoundError, load_hf  # noqa: E402
from infer_lab.hf import config_from_hf, from_hf_model  # noqa: E402
from infer_lab.hf_export import to_hf  # noqa: E402
from infer_lab.model import Transformer  # noqa: E402

V = 160
LLAMA = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=128, bos_token_id=1,
             eos_token_id=0, pad_token_id=None)
CASES = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4,
                                            n_positions=128, bos_token_id=1, eos_token_id=0),
    "llama-mha-tied": lambda: transformers.LlamaConfig(**LLAMA, tie_word_embeddings=True),
    "llama-gqa-llama3-rope": lambda: transformers.LlamaConfig(
        **LLAMA, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=50000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "llama-attention-bias": lambda: transformers.LlamaConfig(**LLAMA, num_key_value_heads=2,
                                                             attention_bias=True),
    "qwen2": lambda: transformers.Qwen2Config(**LLAMA, num_key_value_heads=2,
                                              tie_word_embeddings=True),
    "mistral": lambda: transformers.MistralConfig(**LLAMA, num_key_value_heads=1,
                                                  sliding_window=None),
}


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Unit-scale random weights: logits of order 1, so 1e-4 is a real test and greedy
    ties are unlikely (the default std of 0.02 gives near-uniform next tokens)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # norm gains
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / min(p.shape) ** 0.5)


def write_tokenizer(folder, vocab_size: int = V) -> None:
    """A WordLevel tokenizer: id 0 is <|endoftext|>, then w1, w2, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


def save_case(name: str, folder, **save_kwargs):
    torch.manual_seed(0)
    hf_cfg = CASES[name]()
    cls = transformers.GPT2LMHeadModel if name == "gpt2" else transformers.AutoModelForCausalLM
    hf = (cls(hf_cfg) if name == "gpt2" else cls.from_config(hf_cfg)).eval()
    randomize(hf)
    hf.save_pretrained(folder, **save_kwargs)
    write_tokenizer(folder)
    return hf


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    hf.generation_config.eos_token_id = None  # no early stop: compare all n tokens
    hf.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                      max_new_tokens=n, min_new_tokens=n)
    return out[0, len(prompt):].tolist()


def assert_same(ours: Transformer, hf, n_new: int = 20) -> None:
    ids = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    assert want.abs().max() > 1.0  # logits large enough for 1e-4 to mean something
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    prompt = ids[0, :7].tolist()
    assert generate(ours, [prompt], n_new)[0] == hf_greedy(hf, prompt, n_new)


@pytest.mark.parametrize("name", list(CASES))
def test_load_matches_transformers(name, tmp_path):
    hf = save_case(name, tmp_path)
    model, tok = load_hf(tmp_path, device="cpu", dtype=torch.float32)
    assert model.config.n_layer == 2 and model.config.vocab_size == V
    assert_same(model, hf)
    assert tok.eos_id == 0 and tok.decode(tok.encode("w3 w5")) == "w3 w5"


def test_config_fields():
    cfg = config_from_hf(CASES["llama-gqa-llama3-rope"]())
    assert (cfg.n_kv_head, cfg.rope_theta, cfg.tie_embeddings) == (2, 50000.0, False)
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_scaling["factor"] == 8.0
    assert config_from_hf(CASES["qwen2"]()).qkv_bias and not config_from_hf(CASES["qwen2"]()).bias
    g = config_from_hf(CASES["gpt2"]())
    assert (g.block, g.d_ff, g.max_seq_len, g.bias) == ("gpt2", 256, 128, True)
    assert config_from_hf(CASES["gpt2"]().to_dict()) == g  # a config.json dict works too


def test_sharded_checkpoint_and_infer_lab_load(tmp_path):
    hf = save_case("llama-gqa-llama3-rope", tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, tok = infer_lab.load(str(tmp_path), device="cpu", dtype=torch.float32)
    assert_same(model, hf, n_new=5)


def test_bf16_load_keeps_rope_frequencies_fp32(tmp_path):
    save_case("llama-mha-tied", tmp_path)
    model, _ = load_hf(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.inv_freq.dtype == torch.float32
    assert model.lm_head.weight is model.tok_emb.weight  # still tied


@pytest.mark.parametrize("cfg", [
    get_config("code-m", n_layer=2, vocab_size=V),
    get_config("code-s", vocab_size=V, tie_embeddings=False,
               rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    ModelConfig(vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, d_model=64, qkv_bias=True),
    ModelConfig(vocab_size=V, n_layer=2, n_head=4, d_model=64, bias=True),
    ModelConfig(vocab_size=V, n_layer=2, n_head=4, d_model=64, block="gpt2", bias=True,
                qkv_bias=True, max_seq_len=128),
], ids=["code-m", "code-s-untied-llama3", "qwen2-like", "llama-bias", "gpt2"])
def test_to_hf_round_trip(cfg):
    torch.manual_seed(0)
    ours = Transformer(cfg).eval()
    randomize(ours)
    hf = to_hf(ours)
    assert_same(ours, hf, n_new=10)
    back = from_hf_model(hf)
    assert back.config == replace(cfg, qkv_bias=cfg.qkv_bias or cfg.bias)  # same model
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_offline_missing_hub_name_names_the_zoo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match="code-m") as err:
        load_hf("infer-lab-tests/no-such-model-anywhere", device="cpu")
    assert "offline" in str(err.value) and "code-s" in str(err.value)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    save_case("mistral", tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_hf(tmp_path, device="cpu")


@pytest.mark.parametrize("hf_cfg, message", [
    (lambda: transformers.BertConfig(), "gpt2, llama, qwen2, mistral"),
    (lambda: transformers.MistralConfig(**LLAMA, sliding_window=64), "sliding-window"),
    (lambda: transformers.LlamaConfig(**LLAMA, head_dim=32), "head_dim"),
    (lambda: transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4,
                                     activation_function="relu"), "activation"),
    (lambda: transformers.LlamaConfig(**LLAMA, rope_scaling={"rope_type": "linear",
                                                             "factor": 2.0}), "rope"),
])
def test_unsupported_configs_raise(hf_cfg, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf(hf_cfg())


def test_pickled_bin_checkpoint_falls_back_to_transformers(tmp_path):
    from safetensors.torch import load_file

    hf = save_case("qwen2", tmp_path)
    torch.save(load_file(str(tmp_path / "model.safetensors")), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    model, _ = load_hf(tmp_path, device="cpu", dtype=torch.float32)
    assert_same(model, hf, n_new=5)
