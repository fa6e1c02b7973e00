"""Every server route, through jp_fetch: content, authentication, and the base URL."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError

from infer_lab.exercises import lab_exercises, progress

ROUTES = ["labs", "progress", "hardware"]
LABS = ["00_welcome", "01_kv_cache", "02_quantization", "03_pruning", "04_distillation",
        "05_speculative_decoding", "06_serving", "07_kernels", "08_runtimes",
        "09_applications"]


async def get(jp_fetch, route: str) -> dict:
    r = await jp_fetch("infer-lab", route)
    assert r.code == 200 and r.headers["Content-Type"].startswith("application/json")
    return json.loads(r.body)


def test_the_server_extension_is_enabled(jp_serverapp):
    assert "infer_lab_ext" in jp_serverapp.extension_manager.extensions
    assert jp_serverapp.extension_manager.extensions["infer_lab_ext"].enabled


async def test_labs_lists_every_lab_with_its_intro(jp_fetch):
    reply = await get(jp_fetch, "labs")
    labs = reply["labs"]
    assert [lab["id"] for lab in labs] == LABS
    kv = labs[1]
    assert kv["number"] == "01" and kv["title"] == "The KV cache"
    assert kv["minutes"] == 40 and len(kv["objectives"]) == 5
    assert kv["objectives"][0].startswith("Why decoding without a cache")
    assert kv["path"] == "labs/01_kv_cache.ipynb"
    for lab in labs:
        assert lab["minutes"] and 3 <= len(lab["objectives"]) <= 5, lab["id"]
        # totals come from the package's exercise registry (the real one, imported here)
        assert lab["exercises"] == lab_exercises(lab["id"]), lab["id"]
        assert lab["progress"] == {**lab["progress"], "passed": 0,
                                   "total": len(lab["exercises"]), "complete": False}
    assert reply["continue"] == "00_welcome"  # nothing done yet: start at the start


async def test_progress_counts_passes_and_continue_picks_the_latest_open_lab(jp_fetch):
    for name in lab_exercises("00_welcome"):  # lab 00 complete
        progress.record("00_welcome", name, "passed")
    first, second, *_ = lab_exercises("02_quantization")
    progress.record("02_quantization", first, "passed")
    progress.record("02_quantization", second, "failed")
    progress.record("01_kv_cache", lab_exercises("01_kv_cache")[0], "passed")
    # Order by time: 01 is the most recent record, so make 02 later by hand.
    data = progress.load_progress()
    for entry in data["labs"]["02_quantization"]["exercises"].values():
        entry["updated"] = "2999-01-01T00:00:00+00:00"
    progress.save_progress(data)

    reply = await get(jp_fetch, "labs")
    by_id = {lab["id"]: lab["progress"] for lab in reply["labs"]}
    assert by_id["00_welcome"]["complete"]
    assert by_id["00_welcome"]["passed"] == len(lab_exercises("00_welcome"))
    assert by_id["02_quantization"]["passed"] == 1
    assert by_id["02_quantization"]["status"][second] == "failed"
    assert by_id["01_kv_cache"]["passed"] == 1
    assert reply["continue"] == "02_quantization"

    only = await get(jp_fetch, "progress")
    assert only["labs"]["00_welcome"]["passed"] == len(lab_exercises("00_welcome"))
    assert only["labs"]["02_quantization"]["total"] == len(lab_exercises("02_quantization"))


async def test_a_corrupt_store_reads_as_empty_and_is_left_alone(jp_fetch, lab_home):
    lab_home.mkdir(parents=True, exist_ok=True)
    (lab_home / "progress.json").write_text("{not json")
    reply = await get(jp_fetch, "labs")
    assert all(lab["progress"]["passed"] == 0 for lab in reply["labs"])
    assert (lab_home / "progress.json").read_text() == "{not json"  # the server never writes


async def test_hardware_names_the_device_and_memory(jp_fetch):
    h = await get(jp_fetch, "hardware")
    assert h["kind"] in ("cpu", "gpu") and h["device"]
    assert h["memory"]["total"] > 0 and 0 < h["memory"]["used"] <= h["memory"]["total"]
    assert isinstance(h["gpus"], list) and (h["kind"] == "gpu") == bool(h["gpus"])


@pytest.mark.parametrize("route", ROUTES)
async def test_unauthenticated_requests_are_refused(http_server_client, jp_base_url, route):
    with pytest.raises(HTTPClientError) as e:
        await http_server_client.fetch(f"{jp_base_url}infer-lab/{route}")
    assert e.value.code == 403


@pytest.mark.parametrize("route", ROUTES)
async def test_routes_live_under_the_base_url_only(http_server_client, jp_auth_header,
                                                   jp_base_url, route):
    r = await http_server_client.fetch(f"{jp_base_url}infer-lab/{route}",
                                       headers=jp_auth_header)
    assert r.code == 200
    if jp_base_url != "/":  # under a hub prefix, the bare path is not ours
        with pytest.raises(HTTPClientError) as e:
            await http_server_client.fetch(f"/infer-lab/{route}", headers=jp_auth_header)
        assert e.value.code == 404
