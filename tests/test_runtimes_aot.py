"""AOTInductor packages of the decode step (issue 16): built once, loaded without
compiling, the same greedy tokens as eager decoding; a package for another model or shape
is refused. One package is built for the module (tens of seconds on 2 cores)."""

import pytest
import torch

from infer_lab.generate import generate
from infer_lab.runtimes.aot import PackagedDecoder, package_step

from test_runtimes_compiled import small_model


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    model = small_model(2)
    path = tmp_path_factory.mktemp("aot") / "step.pt2"
    seconds = package_step(model, batch=1, max_len=20, path=path)
    return model, path, seconds


def test_a_loaded_package_decodes_eagers_tokens(packaged):
    model, path, seconds = packaged
    assert path.is_file() and seconds > 0
    assert not list(path.parent.glob("*.partial*"))  # written aside, then moved in place
    dec = PackagedDecoder(model, path)
    assert dec.load_seconds < seconds  # loading is the point: no compile at startup
    for prompt, n in (([3, 1, 4, 1, 5, 9], 12), ([7, 7], 17)):  # the cache resets between
        assert dec.generate([prompt], n) == generate(model, [prompt], n, eos_id=None)
    assert dec.compile_seconds == 0.0 and dec.graphs == 0  # torch.compile never ran
    with pytest.raises(ValueError, match="do not fit the static cache of 20"):
        dec.generate([[1] * 10], 11)


def test_a_package_for_another_model_is_refused(packaged):
    _, path, _ = packaged
    other = small_model(1)  # one layer, not two
    with pytest.raises(ValueError, match="built for another model .*config"):
        PackagedDecoder(other, path)
    with pytest.raises(ValueError, match="built for another model .*dtype"):
        PackagedDecoder(small_model(2).to(torch.bfloat16), path)


def test_bad_paths_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no AOTInductor package at .*package_step"):
        PackagedDecoder(small_model(), tmp_path / "missing.pt2")
    with pytest.raises(ValueError, match="is a .pt2 file"):
        package_step(small_model(), 1, 8, tmp_path / "step.so")
