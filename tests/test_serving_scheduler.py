"""Scheduler policy without a model: a fake 'model' emits token 7 for every sample."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_lab.serving.block_manager import BlockManager
from infer_lab.serving.scheduler import Scheduler
from infer_lab.serving.sequence import Sequence, Status


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, chunked=True, prefix=True):
    bm = BlockManager(num_blocks, block_size, prefix)
    return Scheduler(bm, max_num_seqs, budget, chunked)


def fake_step(sched, token=7):
    out = sched.schedule()
    toks = {c.seq.seq_id: token for c in out.chunks if c.samples}
    sched.update(out, toks)
    return out


def drain(sched, max_steps=10_000):
    steps = []
    while sched.has_unfinished():
        steps.append(fake_step(sched))
        assert len(steps) < max_steps, "scheduler does not make progress"
    return steps


def test_decodes_and_prefills_share_a_step_under_the_budget():
    sched = make(budget=10)
    a = Sequence([1] * 4, 5)
    sched.add(a)
    first = fake_step(sched)
    assert [(c.seq, c.num_tokens) for c in first.chunks] == [(a, 4)]
    b = Sequence([2] * 20, 5)
    sched.add(b)
    out = fake_step(sched)
    # a decodes one token; b gets the 9 left in the budget (chunked prefill).
    assert [(c.seq, c.num_tokens, c.is_decode) for c in out.chunks] == [(a, 1, True),
                                                                        (b, 9, False)]
    assert out.num_decode_tokens == 1 and out.num_prefill_tokens == 9
    assert not out.chunks[1].samples and b.output == []
    out = fake_step(sched)
    assert [c.num_tokens for c in out.chunks] == [1, 9]
    out = fake_step(sched)
    assert [c.num_tokens for c in out.chunks] == [1, 2] and out.chunks[1].samples
    assert b.output == [7]


def test_without_chunking_a_prompt_waits_for_room_in_the_budget():
    sched = make(budget=10, chunked=False)
    a, b = Sequence([1] * 4, 5), Sequence([2] * 10, 5)
    sched.add(a)
    fake_step(sched)
    sched.add(b)
    out = fake_step(sched)  # 1 decode + 10 prompt tokens > 10: b waits
    assert [c.seq for c in out.chunks] == [a]
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        sched.add(Sequence([1] * 11, 1))


def test_first_come_first_served_and_max_num_seqs():
    sched = make(max_num_seqs=2)
    seqs = [Sequence([i + 1] * 3, 2) for i in range(4)]
    for s in seqs:
        sched.add(s)
    fake_step(sched)
    assert sched.running == seqs[:2] and list(sched.waiting) == seqs[2:]
    drain(sched)
    finish = [s.finish_time for s in seqs]
    assert finish == sorted(finish)


def test_preemption_frees_the_newest_and_it_recomputes_later():
    sched = make(num_blocks=6, block_size=4, prefix=False)
    a, b = Sequence([1] * 8, 8), Sequence([2] * 8, 8)  # 2 blocks each, 4 when done
    sched.add(a)
    sched.add(b)
    steps = drain(sched)
    assert sched.num_preemptions >= 1 and b.num_preemptions >= 1 and a.num_preemptions == 0
    assert a.output == [7] * 8 and b.output == [7] * 8
    # After preemption b recomputes prompt + output so far in one prefill chunk.
    pre = next(i for i, o in enumerate(steps) if o.preempted)
    again = next(c for o in steps[pre + 1:] for c in o.chunks if c.seq is b)
    assert again.start == 0 and again.num_tokens > len(b.prompt)
    assert sched.bm.num_free_blocks == 6


def test_abort_frees_blocks_at_once():
    sched = make()
    a, b = Sequence([1] * 9, 50), Sequence([2] * 3, 5)
    sched.add(a)
    fake_step(sched)
    sched.add(b)
    assert sched.bm.num_used_blocks == 3
    sched.abort(a)
    sched.abort(b)  # still waiting
    assert a.finish_reason == "abort" and a.status is Status.FINISHED
    assert sched.bm.num_free_blocks == 64 and not sched.has_unfinished()


def test_eos_finishes_early():
    sched = make()
    s = Sequence([1, 2], 10, eos_id=7)
    sched.add(s)
    drain(sched)
    assert s.output == [7] and s.finish_reason == "eos"


def test_requests_that_can_never_fit_are_refused_at_submit():
    sched = make(num_blocks=4, block_size=4)  # 16 token slots
    with pytest.raises(ValueError, match="pool"):
        sched.add(Sequence([1] * 17, 1))
    with pytest.raises(ValueError, match="pool"):
        sched.add(Sequence([1] * 10, 7))  # fits now, not at its longest
    with pytest.raises(ValueError, match="empty"):
        Sequence([], 3)
    with pytest.raises(ValueError, match="max_tokens"):
        Sequence([1], 0)


def test_shared_prefix_is_computed_once():
    sched = make(block_size=4)
    system = list(range(1, 13))  # three full blocks
    a = Sequence(system + [20, 21], 2)
    sched.add(a)
    drain(sched)
    b = Sequence(system + [30], 2)
    sched.add(b)
    out = fake_step(sched)
    assert b.num_cached_tokens == 12 and out.chunks[0].num_tokens == 1
    drain(sched)
    assert sched.bm.num_free_blocks == 64


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_block_is_free_after_any_workload(data):
    """Random arrivals, lengths, pool sizes and policies: the pool always drains."""
    bs = data.draw(st.sampled_from([1, 2, 4, 8]))
    num_blocks = data.draw(st.integers(4, 40))
    sched = make(num_blocks, bs, max_num_seqs=data.draw(st.integers(1, 6)),
                 budget=data.draw(st.integers(1, 48)), chunked=data.draw(st.booleans()),
                 prefix=data.draw(st.booleans()))
    cap = num_blocks * bs
    requests = data.draw(st.lists(st.tuples(
        st.integers(0, 3),                              # arrives after this many steps
        st.lists(st.integers(1, 3), min_size=1, max_size=cap),  # few ids: shared prefixes
        st.integers(1, 12)), max_size=12))
    seqs, step = [], 0
    pending = sorted(requests, key=lambda r: r[0])
    while pending or sched.has_unfinished():
        while pending and pending[0][0] <= step:
            _, prompt, n = pending.pop(0)
            if not sched.chunked_prefill:
                prompt = prompt[:sched.max_num_batched_tokens]
            n = min(n, cap - len(prompt))
            if n >= 1:
                seqs.append(Sequence(prompt, n))
                sched.add(seqs[-1])
        out = fake_step(sched)
        sched.bm.check()
        assert len(sched.running) <= sched.max_num_seqs
        assert (sum(c.num_tokens for c in out.chunks) <= sched.max_num_batched_tokens
                or len(out.chunks) == 1)  # an over-long recomputation runs alone
        for s in sched.running:
            assert len(s.block_table) * bs >= s.num_computed_tokens
        step += 1
        assert step < 5000, "no progress"
    assert sched.bm.num_free_blocks == num_blocks
    assert all(s.is_finished and len(s.output) == s.max_tokens for s in seqs)
