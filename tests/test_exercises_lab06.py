"""Lab 06's exercises against the serving package they teach (issue 17, sections 1, 2, 5):
the learner's prefix lookup, victim choice and step plan plug into the engine, and the
references do exactly what the block manager and the scheduler do."""

import random

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.exercises import serving as ex
from infer_lab.exercises import serving_memory as mem
from infer_lab.lessons.lab06_serving_trace import make_requests, run_trace
from infer_lab.model import Transformer
from infer_lab.serving import BlockManager, Engine, EngineConfig, Scheduler, Sequence, Status
from infer_lab.serving.block_manager import block_hash

CFG = ModelConfig(vocab_size=97, n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=128)


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(CFG).eval()


@pytest.mark.parametrize("e", ex.EXERCISES, ids=lambda e: e.name)
def test_reference_passes_and_each_mistake_gets_its_own_hint(e):
    for seed in range(3):
        assert e.check(e.reference, seed=seed, verbose=False).passed
    assert len(e.mistakes) >= 2 and e.code_hint
    for m in e.mistakes:
        r = e.check(m.fn, seed=0, verbose=False)
        assert not r.passed and r.mistake == m.name, (m.name, r.mistake)


def test_kinds_and_predictions():
    kinds = {e.name: e.kind for e in ex.EXERCISES}
    assert kinds == {"block_tables": "warm-up", "schedule_step": "technique",
                     "preempt_victims": "technique", "prefix_lookup": "technique"}
    assert [p.name for p in ex.PREDICTIONS] == ["serving_kv_bytes_held",
                                               "serving_contiguous_over_paged"]


# -- prefix lookup ----------------------------------------------------------------------
def _computed(bm: BlockManager, prompt: list[int]) -> Sequence:
    """Admit, compute and commit ``prompt`` as the engine would; return the sequence."""
    seq = Sequence(prompt, 1)
    hits = bm.match_prefix(seq)
    bm.admit(seq, hits)
    bm.grow(seq, len(prompt))
    seq.num_computed_tokens = len(prompt)
    bm.commit(seq)
    return seq


def test_prefix_lookup_matches_the_block_manager():
    rng = random.Random(0)
    for _ in range(200):
        bs, vocab = rng.choice([1, 2, 3, 4, 8]), rng.randint(2, 4)
        bm = BlockManager(rng.randint(8, 40), bs)
        live = []
        for _ in range(rng.randint(1, 8)):
            prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 20))]
            if bm.blocks_needed(len(prompt)) > bm.num_free_blocks:
                if live:
                    bm.free_seq(live.pop(0))
                continue
            seq = _computed(bm, prompt)
            if rng.random() < 0.6:
                bm.free_seq(seq)  # freed: its blocks stay findable until reused
            else:
                live.append(seq)
            query = Sequence(prompt[:rng.randint(0, len(prompt))]
                             + [rng.randrange(vocab) for _ in range(rng.randint(1, 6))], 1)
            want = bm.match_prefix(query)
            assert mem.prefix_lookup(query.tokens, bs, dict(bm.cached), block_hash) == want
            bm.prefix_lookup = mem.prefix_lookup  # the same manager, the lookup plugged in
            assert bm.match_prefix(query) == want
            bm.prefix_lookup = None


def test_a_plugged_lookup_cannot_serve_other_tokens():
    bm = BlockManager(8, 2, prefix_lookup=lambda tokens, bs, cached, h: [0, 1, 2])
    _computed(bm, [1, 2, 3, 4, 5, 6])  # blocks 0, 1, 2 hold (1, 2), (3, 4), (5, 6)
    assert bm.match_prefix(Sequence([1, 2, 9, 9, 5, 6, 7], 1)) == [0]  # block 1 differs
    assert bm.match_prefix(Sequence([1, 2, 3, 4, 5, 6], 1)) == [0, 1]  # the last is computed


# -- the engine runs the learner's policies -------------------------------------------------
def _records(engine: Engine, trace) -> list:
    idx = {s.seq_id: i for i, s in enumerate(trace.seqs)}
    return [([idx[i] for i in r.seq_ids], r.num_prefill_tokens, r.num_decode_tokens,
             [idx[i] for i in r.preempted_ids]) for r in engine.records]


@pytest.mark.parametrize("kw", [{"num_blocks": 64}, {"num_blocks": 12},
                                {"num_blocks": 12, "max_num_batched_tokens": 8},
                                {"num_blocks": 40, "max_num_batched_tokens": 5,
                                 "enable_prefix_caching": False}])
def test_engine_with_the_references_plugged_in_runs_the_same_steps(model, kw):
    reqs = make_requests(list(range(90)) * 3, 8, (3, 20), (2, 12), seed=0, shared_prefix=8)
    arrivals = [0, 0, 1, 1, 2, 3, 3, 4]
    config = EngineConfig(**{"block_size": 4, "max_num_seqs": 3, **kw})
    built_in = Engine(model, config)
    a = run_trace(built_in, reqs, arrivals)
    plugged = Engine(model, config, schedule_policy=ex.schedule_step,
                     preemption=mem.preempt_victims, prefix_lookup=mem.prefix_lookup)
    b = run_trace(plugged, reqs, arrivals)
    assert _records(built_in, a) == _records(plugged, b)
    assert [s.output for s in a.seqs] == [s.output for s in b.seqs]
    assert built_in.block_manager.prefix_hit_rate == plugged.block_manager.prefix_hit_rate
    if kw["num_blocks"] == 12:
        assert built_in.num_preemptions > 0  # the victims were chosen, not just listed
    plugged.block_manager.check()


def _running(sched: Scheduler, prompts: list[int], priorities: list[int]) -> list[Sequence]:
    seqs = []
    for n, prio in zip(prompts, priorities):
        seq = Sequence([7] * n, 2)
        sched.add(seq, prio)
        seqs.append(seq)
    sched.update(sched.schedule(), {s.seq_id: 3 for s in seqs})  # prefill, first token
    assert all(s.status is Status.RUNNING for s in seqs)
    return seqs


def test_preempt_victims_matches_the_schedulers_choice():
    rng = random.Random(1)
    for _ in range(40):
        n = rng.randint(2, 5)
        prompts = [4 * rng.randint(1, 3) for _ in range(n)]  # full blocks: the next grows
        bm = BlockManager(sum(p // 4 for p in prompts) + rng.randint(0, 1), 4,
                          enable_prefix_caching=False)
        sched = Scheduler(bm, 8, 64)
        running = _running(sched, prompts, [0] * n)
        view = [(s.seq_id, 0, len(s.block_table)) for s in running]
        # every one needs a new block for its next token; the oldest asks first
        want = mem.preempt_victims(view, running[0].seq_id, bm.num_free_blocks, 1)
        out = sched.schedule()
        assert [s.seq_id for s in out.preempted][:len(want)] == want


def test_priorities_decide_the_victim():
    bm = BlockManager(3, 4, enable_prefix_caching=False)
    sched = Scheduler(bm, 8, 64, preemption=mem.preempt_victims)
    old_low, _, _ = _running(sched, [4, 4, 4], [1, 0, 0])
    out = sched.schedule()  # the oldest needs a fifth token's block first; none is free
    assert out.preempted[0] is old_low  # the low-priority one goes, though it is the oldest
    assert old_low in sched.waiting and old_low not in sched.running
    bm.check()


def test_a_bad_plan_is_refused_with_a_reason():
    bm = BlockManager(16, 4)
    greedy = Scheduler(bm, 4, 8, schedule_policy=lambda r, w, b, m: [(s, n) for s, n in w])
    greedy.add(Sequence([1] * 20, 2))
    with pytest.raises(ValueError, match="exceeds the token budget"):
        greedy.schedule()
    ghost = Scheduler(BlockManager(16, 4), 4, 8, schedule_policy=lambda r, w, b, m: [(999, 1)])
    ghost.add(Sequence([1] * 3, 2))
    with pytest.raises(ValueError, match="not queued"):
        ghost.schedule()
    with pytest.raises(ValueError, match="chunked_prefill"):
        Scheduler(bm, 4, 8, chunked_prefill=False, schedule_policy=ex.schedule_step)
    nobody = Scheduler(BlockManager(2, 4, False), 4, 64, preemption=lambda *a: [])
    _running(nobody, [4, 4], [0, 0])
    with pytest.raises(RuntimeError, match="chose nobody"):
        nobody.schedule()
