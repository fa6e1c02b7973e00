"""Lab 06's drivers and figures: traces, block pictures, the rate sweep, the exercises."""

import random

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.exercises import serving as ex
from infer_lab.lessons import lab06_serving as sviz
from infer_lab.lessons.lab06_serving import SIZES as LAB_SIZES
from infer_lab.lessons.lab06_serving_trace import (
    Request,
    make_requests,
    poisson_arrivals,
    rate_sweep,
    replay,
    run_trace,
)
from infer_lab.model import Transformer
from infer_lab.serving import (
    BlockManager,
    DynamicBatcher,
    Engine,
    EngineConfig,
    Scheduler,
    Sequence,
    StaticBatcher,
    Status,
)

CFG = ModelConfig(vocab_size=97, n_layer=1, n_head=2, n_kv_head=1, d_model=16, max_seq_len=128)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(CFG).eval()


@pytest.fixture(scope="module")
def requests():
    return make_requests(list(range(90)) * 3, 6, (3, 12), (2, 9), seed=0)


def engine(model, **kw):
    return Engine(model, EngineConfig(**{"block_size": 4, "num_blocks": 64,
                                         "max_num_seqs": 3, **kw}))


def test_timeline_has_one_row_per_request(model, requests):
    arrivals = [0, 0, 1, 2, 4, 4]
    traces = {"static": run_trace(StaticBatcher(model, 3), requests, arrivals),
              "dynamic": run_trace(DynamicBatcher(model, 3), requests, arrivals),
              "continuous": run_trace(engine(model), requests, arrivals)}
    for t in traces.values():
        assert len(sviz.timeline_matrix(t)) == len(requests)
        assert all(s.is_finished and len(s.output) == s.max_tokens for s in t.seqs)
        assert all(n >= 1 for n in t.ttft_steps())
        # every token came from a prefill or decode cell of its request
        assert t.count("prefill") + t.count("decode") >= sum(len(s.output) for s in t.seqs)
    assert traces["continuous"].count("padding") == 0
    assert traces["static"].count("padding") > 0  # the output lengths differ
    fig = sviz.timeline_figure(traces)
    heatmaps = [d for d in fig.data if d.type == "heatmap"]
    assert len(heatmaps) == 3 and all(len(h.z) == len(requests) for h in heatmaps)
    sviz.step_time_figure(traces)


def test_block_picture_marks_shared_prefix_blocks(model):
    reqs = make_requests(list(range(90)), 4, (4, 8), (4, 6), seed=1, shared_prefix=8)
    trace = run_trace(engine(model), reqs, [0, 1, 2, 3])
    states = [sviz.block_states(s) for s in trace.snapshots]
    tick = next(i for i, st in enumerate(states) if "shared" in st)
    snap = trace.snapshots[tick]
    shared = {b for b, st in enumerate(states[tick]) if st == "shared"}
    assert all(snap.ref_counts[b] > 1 for b in shared)
    assert all(set(t[:2]) == set(shared) for t in snap.tables.values())  # the 8-token prefix
    fig = sviz.block_table_figure(snap)
    shared_code = list(sviz.BLOCK_COLORS).index("shared")
    assert any(shared_code in row for row in fig.data[0].z)  # the tables
    assert any(shared_code in row for row in fig.data[1].z)  # the pool
    explorer = sviz.BlockTableExplorer(trace, step=tick)
    assert "shared" in explorer.readout.value
    explorer.step.value = trace.num_ticks - 1  # after the last step nothing is running
    assert explorer.readout.value.startswith(f"step {trace.num_ticks - 1}: 0 running")


def test_preemption_shows_in_trace_and_blocks_figure(model, requests):
    trace = run_trace(engine(model, num_blocks=6), requests, [0] * len(requests))
    assert trace.count("preempted") > 0
    fig = sviz.blocks_figure(trace)
    assert any(d.name == "preemption" for d in fig.data)


def test_rate_sweep_returns_one_point_per_rate(model, requests):
    rates = [50.0, 200.0, 1000.0]
    make = {"continuous": lambda: engine(model), "static": lambda: StaticBatcher(model, 3)}
    sweep = rate_sweep(make, requests, rates)
    for label, runs in sweep.items():
        assert [r.rate for r in runs] == rates and all(r.label == label for r in runs)
        for r in runs:
            assert len(r.ttft) == len(requests) and min(r.ttft) >= 0
            assert r.output_tokens == sum(q.max_tokens for q in requests)
            assert r.throughput > 0 and r.p("e2e", 99) >= r.p("e2e", 50)
    explorer = sviz.LoadExplorer(sweep)
    explorer.rate.value, explorer.metric.value = 0, "e2e"
    assert "continuous" in explorer.readout.value and len(explorer.cdf.data) == 2
    assert len(sviz.load_figure(sweep).data) == 6


def test_replay_charges_idle_jumps_to_queued_requests(model):
    reqs = [Request([1, 2, 3], 2) for _ in range(3)]
    stats = replay(StaticBatcher(model, 3), reqs, [0.0, 5.0, 10.0])
    assert stats.makespan >= 10.0  # the replay jumped over the gaps, not slept
    assert stats.ttft[0] >= 10.0 > stats.ttft[2]  # the first waited for the batch to fill


def test_poisson_arrivals_and_sizes():
    a = poisson_arrivals(2000, 10.0, seed=1)
    assert a == sorted(a) and 8.0 < len(a) / a[-1] < 12.0
    assert set(LAB_SIZES) == {"ci", "laptop", "gpu"}


def test_block_tables_exercise_matches_the_block_manager():
    rng = random.Random(0)
    for _ in range(30):
        num_blocks, bs, ops = ex._random_ops_case(rng).args
        bm = BlockManager(num_blocks, bs, enable_prefix_caching=False)
        seqs = {}
        for op, sid, n in ops:
            if op == "grow":
                seqs.setdefault(sid, Sequence([1], 1))
                bm.grow(seqs[sid], n)
            else:
                bm.free_seq(seqs.pop(sid))
        tables, free = ex.block_tables(num_blocks, bs, ops)
        assert tables == {sid: s.block_table for sid, s in seqs.items()}
        assert free == list(bm.free)


def test_schedule_step_exercise_matches_the_scheduler():
    rng = random.Random(0)
    for _ in range(50):
        running, waiting, budget, max_seqs = ex._random_sched_case(rng).args
        bm = BlockManager(1000, 4, enable_prefix_caching=False)
        sched = Scheduler(bm, max_seqs, budget, chunked_prefill=True)
        ids = {}
        for sid, pending in running:
            seq = Sequence([7] * (pending + 5), 8)
            if pending == 1:  # a decode: its prompt is computed and one token is out
                seq = Sequence([7] * 5, 8)
                seq.output = [3]
            seq.num_computed_tokens = len(seq) - pending
            bm.grow(seq, seq.num_computed_tokens)
            seq.status = Status.RUNNING
            sched.running.append(seq)
            ids[seq.seq_id] = sid
        for sid, prompt in waiting:
            seq = Sequence([7] * prompt, 8)
            sched.add(seq)
            ids[seq.seq_id] = sid
        got = [(ids[c.seq.seq_id], c.num_tokens) for c in sched.schedule().chunks]
        assert got == ex.schedule_step(running, waiting, budget, max_seqs)


def test_compare_reads_counts_slots_and_agrees():
    from infer_lab.lessons.lab06_serving_reads import compare_reads, reads_figure

    r = compare_reads([5, 40, 17], n_head=4, n_kv_head=2, head_dim=8, block_size=16,
                      repeats=2, in_place=False)
    # gather and contiguous pad every row to the longest (40); blocks read whole blocks
    assert r.slots == {"gather": 120, "contiguous": 120, "blocks": 16 + 48 + 32}
    assert r.max_abs_diff < 1e-5
    assert all(ms > 0 for ms in r.ms.values())
    fig = reads_figure(r)
    assert list(fig.data[0].x) == ["gather", "blocks", "contiguous"]
    assert fig.layout.yaxis.title.text.startswith("ms")


def test_compare_reads_times_the_cpp_kernel_reading_in_place():
    from infer_lab.lessons.lab06_serving_reads import IN_PLACE, compare_reads, reads_figure
    from infer_lab.runtimes import paged_cpu

    if not paged_cpu.available():
        pytest.skip(f"the C++ kernel could not be built: {paged_cpu.extension()[1]}")
    assert paged_cpu.built()  # available() built it: a lab now finds it without building
    r = compare_reads([5, 40, 17], n_head=4, n_kv_head=2, head_dim=8, block_size=16,
                      repeats=2)
    assert r.slots[IN_PLACE] == r.slots["blocks"] and r.max_abs_diff < 1e-5
    assert list(reads_figure(r).data[0].x)[-1] == IN_PLACE


def test_budget_slider_reruns_the_mix_and_collects_points(model):
    from infer_lab.lessons import lab06_serving_knobs as knobs

    mix = make_requests(list(range(90)) * 3, 4, (3, 8), (4, 8), seed=2)
    mix.insert(2, Request(list(range(60)), 3))  # request 2 is the long one
    arrivals = [0, 0, 2, 2, 3]
    explorer = knobs.BudgetExplorer(model, mix, arrivals, budgets=[8, 16, knobs.NO_CHUNKING],
                                    value=16, schedule_policy=ex.schedule_step, early=2,
                                    long_index=2)
    assert set(explorer.runs) == {16} and "budget 16" in explorer.readout.value
    explorer.budget.value = knobs.NO_CHUNKING
    explorer.budget.value = 8
    runs = explorer.runs
    assert set(runs) == {8, 16, knobs.NO_CHUNKING}
    # no chunking prefills the long prompt in one step: fewest steps, its first token soonest
    assert runs[knobs.NO_CHUNKING].steps < runs[8].steps
    assert all(r.stall_ms > 0 and r.long_ttft_ms > 0 for r in runs.values())
    assert len(explorer.figure.data) == 2 and len(explorer.figure.data[0].x) == 3
    assert "no chunking" in list(explorer.figure.data[0].text)


def test_block_size_slider_trades_waste_for_table_length(model):
    from infer_lab.lessons import lab06_serving_knobs as knobs

    reqs = make_requests(list(range(90)), 4, (4, 12), (3, 6), seed=1, shared_prefix=8)
    explorer = knobs.BlockSizeExplorer(model, reqs, [0, 1, 2, 3], sizes=[1, 4, 16], value=4,
                                       pool_tokens=256, max_num_seqs=3)
    for b in (16, 1):
        explorer.size.value = b
    runs = explorer.runs
    assert runs[1].empty_slots == 0 < runs[4].empty_slots < runs[16].empty_slots
    assert runs[1].table_entries > runs[4].table_entries > runs[16].table_entries
    assert runs[1].hit_rate >= runs[4].hit_rate >= runs[16].hit_rate  # whole blocks only
    assert "block size 1" in explorer.readout.value
    assert list(explorer.figure.data[0].text) == ["1", "4", "16"]
