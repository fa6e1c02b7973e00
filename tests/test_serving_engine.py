"""The engine must give every request exactly the tokens it gets alone (greedy)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import infer_lab
from infer_lab.config import ModelConfig
from infer_lab.generate import Sampling, generate
from infer_lab.model import Transformer
from infer_lab.serving import (DynamicBatcher, Engine, EngineConfig, PagedKVCache,
                               StaticBatcher)
from infer_lab.serving.paged_attention import (decode_blocks, paged_attention,
                                              paged_decode_attention, reference_attention)

CONFIGS = {
    "llama": ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                         max_seq_len=128),
    "gpt2": ModelConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=128,
                        block="gpt2", bias=True, qkv_bias=True),
}
MAX_TOKENS = 12


def peaked_model(block: str) -> Transformer:
    """A random model with sharpened logits, so greedy ties are unlikely."""
    torch.manual_seed(0)
    m = Transformer(CONFIGS[block]).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(20)
    return m


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return peaked_model(request.param)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    ps = [torch.randint(0, 97, (n,), generator=g).tolist() for n in [3, 17, 1, 30, 9, 22]]
    ps.append(ps[3][:16] + [5, 6, 7])  # shares 16 tokens with prompt 3: prefix cache hits
    ps.append(list(ps[1]))  # an exact duplicate
    return ps


@pytest.fixture(scope="module")
def reference(model, prompts):
    return [generate(model, [p], MAX_TOKENS)[0] for p in prompts]


def run_staggered(engine, prompts, max_tokens=MAX_TOKENS, every=2):
    """Submit one request every ``every`` steps, so requests join a running batch."""
    seqs, pending, step = [], list(prompts), 0
    while pending or engine.has_unfinished():
        if pending and step % every == 0:
            seqs.append(engine.add_request(pending.pop(0), max_tokens))
        engine.step()
        step += 1
    return seqs


ENGINE_CASES = {
    "prefix+chunked": EngineConfig(block_size=4, num_blocks=128),
    "no-prefix,no-chunk": EngineConfig(block_size=4, num_blocks=128,
                                       enable_prefix_caching=False, chunked_prefill=False),
    "small-chunks": EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=8),
    "preemption": EngineConfig(block_size=4, num_blocks=14, max_num_batched_tokens=16),
    "preemption,no-prefix": EngineConfig(block_size=2, num_blocks=24,
                                         enable_prefix_caching=False),
}


@pytest.mark.parametrize("case", ENGINE_CASES)
def test_continuous_batch_equals_each_request_alone(model, prompts, reference, case):
    cfg = ENGINE_CASES[case]
    engine = Engine(model, cfg)
    seqs = run_staggered(engine, prompts)
    assert [s.output for s in seqs] == reference
    assert engine.block_manager.num_free_blocks == cfg.num_blocks
    engine.block_manager.check()
    if case.startswith("preemption"):
        assert engine.num_preemptions > 0
    if case == "prefix+chunked":
        assert engine.block_manager.prefix_hits > 0
    if case == "small-chunks":
        assert max(r.num_tokens for r in engine.records) <= 8
        assert any(r.num_prefill_tokens and r.num_decode_tokens for r in engine.records)


def test_all_at_once_equals_alone(model, prompts, reference):
    assert Engine(model, EngineConfig(block_size=8)).generate(prompts, MAX_TOKENS) == reference


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_workloads_match_and_drain(data):
    """Random arrivals, lengths and pool sizes: same tokens as alone, every block free."""
    model = MODELS["llama"]
    bs = data.draw(st.sampled_from([1, 2, 4]))
    num_blocks = data.draw(st.integers(40 // bs, 80 // bs))
    cfg = EngineConfig(block_size=bs, num_blocks=num_blocks,
                       max_num_seqs=data.draw(st.integers(1, 4)),
                       max_num_batched_tokens=data.draw(st.integers(4, 32)),
                       enable_prefix_caching=data.draw(st.booleans()))
    engine = Engine(model, cfg)
    reqs = data.draw(st.lists(st.tuples(st.integers(0, 2),
                                        st.lists(st.integers(0, 5), min_size=1, max_size=24),
                                        st.integers(1, 8)), min_size=1, max_size=5))
    seqs = []
    for wait, prompt, n in reqs:
        seqs.append(engine.add_request(prompt, n))
        for _ in range(wait):
            engine.step()
    engine.run()
    assert [s.output for s in seqs] == [generate(model, [p], n)[0] for _, p, n in reqs]
    assert engine.block_manager.num_free_blocks == num_blocks


MODELS = {"llama": peaked_model("llama")}


def test_code_s_matches_alone_with_preemption_and_chunks():
    model, tok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    texts = ["import os\nimport sys\n\ndef main(", "import os\nimport sys\n\nclass Config:",
             "def read_config(path):\n", "for i in range(10):\n"]
    ids = [tok.encode(t) for t in texts]
    ref = [generate(model, [p], 16)[0] for p in ids]
    engine = Engine(model, EngineConfig(block_size=4, num_blocks=14, max_num_batched_tokens=8))
    assert engine.generate(ids, 16) == ref
    assert engine.num_preemptions > 0 and engine.block_manager.num_free_blocks == 14
    # Seeded sampling: each request draws from its own generator, as it would alone.
    s = Sampling(temperature=0.8, top_k=50, seed=3)
    assert Engine(model).generate(ids[:2], 12, s) == [generate(model, [p], 12, s)[0]
                                                      for p in ids[:2]]


def test_bad_input_is_refused_at_submit(model):
    engine = Engine(model, EngineConfig(block_size=4, num_blocks=8))  # 32 token slots
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], 4)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request([1, 2], 0)
    with pytest.raises(ValueError, match="context"):
        Engine(model).add_request([1] * 129, 1)
    with pytest.raises(ValueError, match="context"):
        Engine(model).add_request([1] * 100, 29)
    with pytest.raises(ValueError, match="pool"):
        engine.add_request([1] * 33, 1)
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request([97], 1)
    assert not engine.has_unfinished()


def test_abort_frees_blocks_and_others_go_on(model, prompts, reference):
    engine = Engine(model, EngineConfig(block_size=4, num_blocks=64))
    seqs = [engine.add_request(p, MAX_TOKENS) for p in prompts[:3]]
    engine.step()
    engine.step()
    engine.abort(seqs[1].seq_id)
    assert seqs[1].finish_reason == "abort"
    engine.run()
    assert [seqs[0].output, seqs[2].output] == [reference[0], reference[2]]
    assert engine.block_manager.num_free_blocks == 64


def test_records_timings_and_kv_usage(model, prompts):
    cfg = EngineConfig(block_size=4, num_blocks=64, enable_prefix_caching=False)
    engine = Engine(model, cfg)
    seqs = [engine.add_request(p, MAX_TOKENS) for p in prompts[:4]]
    engine.step()
    usage = engine.kv_usage()
    assert 0 < usage.blocks_used <= usage.blocks_total == 64
    assert usage.token_bytes <= usage.paged_bytes < usage.contiguous_request_bytes
    assert usage.contiguous_bytes == 4 * 128 * usage.bytes_per_token
    c = model.config
    assert usage.bytes_per_token == c.kv_bytes_per_token(bytes_per_elem=4)  # fp32
    engine.run()
    computed = sum(len(s.prompt) + s.max_tokens - 1 for s in seqs)
    assert sum(r.num_tokens for r in engine.records) == computed
    assert sum(r.num_decode_tokens for r in engine.records) == 4 * (MAX_TOKENS - 1)
    assert all(r.duration >= 0 for r in engine.records)
    assert max(r.kv_bytes for r in engine.records) == max(
        r.blocks_used for r in engine.records) * engine.cache.bytes_per_block()
    for s in seqs:
        assert 0 < s.ttft <= s.e2e and s.tpot > 0 and s.queue_time >= 0
    assert engine.kv_usage().blocks_used == 0


@pytest.mark.parametrize("batcher", ["static", "dynamic"])
def test_baselines_equal_alone_and_run_to_the_longest(model, prompts, reference, batcher):
    b = StaticBatcher(model, 3) if batcher == "static" else DynamicBatcher(model, 4)
    assert b.generate(prompts, MAX_TOKENS) == reference
    batches = -(-len(prompts) // b.max_batch_size)
    assert b.num_steps == batches * MAX_TOKENS  # every batch runs to its longest request
    assert all(r.kv_bytes > 0 for r in b.records) and b.kv_bytes() == 0


def test_static_batcher_waits_for_a_full_batch(model, prompts):
    b = StaticBatcher(model, 3)
    b.add_request(prompts[0], 2)
    assert b.step() == [] and b.has_unfinished()
    b.add_request(prompts[1], 2)
    b.add_request(prompts[2], 2)
    assert len(b.step()) == 3


def test_paged_attention_reference_matches_contiguous():
    torch.manual_seed(0)
    B, H, Hkv, D, bs, nb = 3, 4, 2, 8, 4, 16
    lens = torch.tensor([5, 12, 1])
    k = torch.randn(B, Hkv, 12, D)
    v = torch.randn(B, Hkv, 12, D)
    q = torch.randn(B, H, D)
    cache = PagedKVCache(1, nb, bs, Hkv, D)
    perm = torch.randperm(nb).tolist()  # scatter each sequence's blocks across the pool
    tables = torch.tensor([perm[0:3], perm[3:6], perm[6:9]])
    for b in range(B):
        for t in range(int(lens[b])):
            slot = tables[b, t // bs] * bs + t % bs
            cache.write(0, slot[None], k[b, :, t][None], v[b, :, t][None])
    out = paged_attention(q, cache.k[0], cache.v[0], tables, lens)
    meta = decode_blocks(tables.tolist(), lens.tolist(), bs)
    blocked = paged_decode_attention(q, cache.k[0], cache.v[0], **meta)
    for b in range(B):
        n = int(lens[b])
        ref = reference_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n])
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(blocked[b:b + 1], ref, atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(lens=st.lists(st.integers(1, 70), min_size=1, max_size=6),
       bs=st.sampled_from([1, 4, 16]), gqa=st.sampled_from([(4, 4), (4, 2), (6, 1)]))
def test_block_by_block_decode_attention_matches_gather(lens, bs, gqa):
    """Any lengths, block sizes and head groupings: the split softmax over a row's blocks
    equals softmax over its gathered keys."""
    H, Hkv = gqa
    g = torch.Generator().manual_seed(len(lens) * 100 + bs)
    need = [-(-n // bs) for n in lens]
    nb = sum(need) + 3
    perm = torch.randperm(nb, generator=g).tolist()
    tables, i = [], 0
    for n in need:
        tables.append(perm[i:i + n])
        i += n
    k_pool, v_pool = torch.randn(2, nb, Hkv, bs, 8, generator=g)
    q = torch.randn(len(lens), H, 8, generator=g)
    width = max(need)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    ref = paged_attention(q, k_pool, v_pool, padded, torch.tensor(lens))
    out = paged_decode_attention(q, k_pool, v_pool, **decode_blocks(tables, lens, bs))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
