"""The busy-machine check of the benchmarks: injected loads and timings, and main()'s wiring."""

import json
import math
import sys
import types

import pytest

from infer_lab.bench import COMMANDS, load, main
from infer_lab.bench.load import (BUSY_MARGIN, SPREAD_THRESHOLD, LoadRecord, load_warning,
                                  spread, spread_warnings, warnings)


def record(before, after, cores=2, threads=2, seconds=1.0) -> LoadRecord:
    return LoadRecord(before, after, cores, threads, seconds)


def test_stated_thresholds():
    assert BUSY_MARGIN == 0.25 and SPREAD_THRESHOLD == 1.25


def test_quiet_machine_gives_no_load_warning():
    assert load_warning(record(0.1, 0.3)) is None
    assert not record(0.1, 0.3).busy()
    # after a long run the bench's own two threads are in the average: not "others"
    long_run = record(0.1, 2.0, seconds=120)
    assert long_run.others_after() == pytest.approx(2.0 - 2 * (1 - math.exp(-2)))
    assert load_warning(long_run) is None


def test_one_other_process_on_two_cores_is_busy():
    w = load_warning(record(1.0, 1.1))
    assert w is not None and w.startswith("machine was busy: load average 1.00 before / ")
    assert "1.10 after on 2 cores" in w and "2-100x slow" in w


def test_busy_after_counts_only_the_others():
    # quiet before, but 3.0 after 120 s: the bench's 2 threads explain at most ~1.73
    assert record(0.1, 3.0, seconds=120).busy()
    assert load_warning(record(0.1, 3.0, seconds=120)) is not None


def test_a_free_core_for_a_one_thread_bench_is_not_busy():
    # --threads 1 on 2 cores: one other process still leaves the bench its core
    assert not record(1.0, 1.0, threads=1).busy()
    assert record(1.8, 1.8, threads=1).busy()


def test_threshold_is_the_stated_fraction_of_the_cores():
    # others + threads > 1.25 x cores: 0.5 others on 2 cores with 2 threads is the edge
    assert not record(0.49, None).busy()
    assert record(0.51, None).busy()
    assert not record(3.9, None, cores=16, threads=16).busy()
    assert record(4.1, None, cores=16, threads=16).busy()


def test_no_load_average_means_no_load_warning():
    assert load_warning(record(None, None)) is None
    assert record(None, None).as_dict()["others_after"] is None


def test_spread_is_max_over_min():
    assert spread([2.0, 1.0, 1.5]) == pytest.approx(2.0)
    assert spread([1.0]) is None and spread([]) is None
    assert spread([0.0, 1.0]) is None  # a zero or nan time is no measurement


def test_spread_above_the_threshold_warns_per_row():
    timings = {"steady": [1.0, 1.1, 1.2], "noisy": [1.0, 1.5, 1.1], "once": [9.0]}
    lines = spread_warnings(timings)
    assert lines == ["runs disagree: row 'noisy' spread 1.50 > threshold 1.25 "
                     "(max / min of 3 runs)"]
    assert spread_warnings(timings, threshold=1.6) == []
    assert len(spread_warnings(timings, threshold=1.1)) == 2


def test_warnings_combine_load_and_spread():
    busy, quiet = record(1.0, 1.0), record(0.0, 0.1)
    timings = {"a": [1.0, 2.0], "b": [1.0, 1.01]}
    got = warnings(busy, timings)
    assert len(got) == 2 and got[0].startswith("machine was busy")
    assert got[1].startswith("runs disagree: row 'a'")
    assert warnings(quiet, {"b": [1.0, 1.01]}) == []


def test_load_average_and_cores_are_read():
    la = load.load_average()
    assert la is None or la >= 0
    assert load.usable_cores() >= 1


@pytest.fixture
def fake_command(monkeypatch):
    """A bench command that times two rows, one steady and one whose runs disagree."""
    mod = types.ModuleType("fake_bench_command")
    mod.add_arguments = lambda parser: None
    mod.run = lambda args: {"ratios": {"x": 1.0},
                            "timings": {"steady": [1.0, 1.05, 1.1], "noisy": [1.0, 3.0, 1.2]}}
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(COMMANDS, "fake", mod.__name__)
    monkeypatch.setattr(load, "usable_cores", lambda: 2)
    return mod


def test_main_records_load_and_warns_on_a_busy_machine(fake_command, monkeypatch, tmp_path,
                                                      capsys):
    monkeypatch.setattr(load, "load_average", lambda: 4.0)
    out = tmp_path / "fake.json"
    result = main(["fake", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["load"]["before"] == data["load"]["after"] == 4.0
    assert data["load"]["cores"] == 2 and data["load"]["busy"] is True
    assert data["warnings"] == result["warnings"] and len(result["warnings"]) == 2
    assert result["warnings"][0].startswith("machine was busy: load average 4.00 before")
    assert "row 'noisy' spread 3.00 > threshold 1.25" in result["warnings"][1]
    assert data["spread"]["rows"]["steady"] == pytest.approx(1.1)
    printed = capsys.readouterr().out
    assert "WARNING: machine was busy" in printed and "rerun on a quiet machine" in printed


def test_main_stays_quiet_on_a_quiet_machine(fake_command, monkeypatch, capsys):
    monkeypatch.setattr(load, "load_average", lambda: 0.0)
    fake_command.run = lambda args: {"ratios": {"x": 1.0}, "timings": {"steady": [1.0, 1.1]}}
    result = main(["fake"])
    assert result["warnings"] == [] and result["load"]["busy"] is False
    printed = capsys.readouterr().out
    assert "load average 0.00 before / 0.00 after on 2 cores" in printed
    assert "WARNING" not in printed


def test_main_without_timings_checks_the_load_only(fake_command, monkeypatch):
    monkeypatch.setattr(load, "load_average", lambda: None)
    fake_command.run = lambda args: {"ratios": {"x": 1.0}}
    result = main(["fake"])
    assert result["timings"] == {} and result["warnings"] == []
    assert result["load"]["before"] is None


def test_telemetry_quick_reports_its_timed_rows():
    result = main(["telemetry", "--quick", "--model", "code-s"])
    assert set(result["timings"]) == {"telemetry off", "telemetry on", "publisher per token"}
    assert all(len(t) == 1 and t[0] > 0 for t in result["timings"].values())
    assert "load" in result and isinstance(result["warnings"], list)
    assert "times_s" not in result  # moved to "timings", not reported twice


def test_serving_reports_the_median_run():
    from infer_lab.bench.serving import _median_run

    assert _median_run([3.0, 1.0, 2.0]) == 2
    assert _median_run([5.0]) == 0
    assert _median_run([2.0, 1.0]) == 1  # the lower of two: the faster, less disturbed run


def test_speculative_passes_keep_every_pass_outputs():
    from infer_lab.bench import interleaved_times
    from infer_lab.bench.speculative import Passes

    passes = Passes()
    passes.add("double", lambda p: [2 * x for x in p], [[1], [2]])
    passes.add("neg", lambda p: [-x for x in p], [[3]])
    times = interleaved_times(passes.fns, repeats=2, warmup=0, device="cpu")
    assert [len(t) for t in times.values()] == [2, 2]
    assert passes.outputs == {"double": [[[2], [4]], [[2], [4]]], "neg": [[[-3]], [[-3]]]}
