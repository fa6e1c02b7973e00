"""The walls between the package's parts (DESIGN.md sections 1-3), enforced.

Two kinds of check. A fresh interpreter imports the modules and reports what landed in
``sys.modules``: that catches an import anywhere below them, direct or transitive. And
the source is read with :mod:`ast` for every import statement, also those inside
functions, which an import-time check cannot see.

    core (config, model, kv_cache, generate, sampling, validate)
        -/-> techniques (quant, prune, distill, speculative, serving, kernels),
             telemetry, figures and widgets, lab material
    serving.sequence / .scheduler / .block_manager   -/-> torch
    generate, speculative, serving.engine            -/-> telemetry (it observes them)
    import infer_lab                                 -/-> torch, transformers, a kernel's
                                                         comm; no observer added
    the extension's server -> infer_lab's torch-free catalogue and progress, not torch
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "infer_lab"

CORE = ["infer_lab.config", "infer_lab.model", "infer_lab.kv_cache", "infer_lab.generate",
        "infer_lab.sampling", "infer_lab.validate"]
TECHNIQUES = ["quant", "prune", "distill", "speculative", "serving", "kernels"]
LAB_MATERIAL = ["lessons", "exercises", "scale", "bench"]
FIGURE_LIBRARIES = ["plotly", "ipywidgets", "anywidget", "matplotlib"]
OBSERVED = ["infer_lab.generate", "infer_lab.speculative", "infer_lab.serving.engine"]
PLAIN_SERVING = ["infer_lab.serving.sequence", "infer_lab.serving.scheduler",
                 "infer_lab.serving.block_manager"]
KERNEL_SIDE = ["transformers", "ipykernel", "jupyter_client", "comm"]
EXTENSION_SERVER = ["infer_lab_ext", "infer_lab_ext.labs", "infer_lab_ext.progress",
                    "infer_lab_ext.hardware", "infer_lab_ext.handlers"]


def loaded(modules: list[str], prelude: str = "", path: list[str] = ()) -> dict[str, list[str]]:
    """Import ``modules`` in turn in a fresh interpreter: {module: what it newly loaded}."""
    script = textwrap.dedent("""
        import json, sys
        sys.path[:0] = json.loads(sys.argv[1])
        {prelude}
        out = {{}}
        for name in json.loads(sys.argv[2]):
            before = set(sys.modules)
            __import__(name)
            out[name] = sorted(set(sys.modules) - before)
        print(json.dumps(out))
    """).format(prelude=prelude)
    run = subprocess.run([sys.executable, "-c", script, json.dumps(list(path)),
                          json.dumps(modules)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"importing {modules} failed:\n{run.stderr[-3000:]}"
    return json.loads(run.stdout.splitlines()[-1])


def crossings(found: dict[str, list[str]], wall) -> list[str]:
    """'module (loaded by importing X)' for each loaded module that ``wall`` forbids."""
    return [f"{m} (loaded by importing {name})" for name, mods in found.items()
            for m in mods if wall(m)]


def source_imports(module: str) -> dict[str, int]:
    """{imported module: line} of every import statement in ``module``'s source (also
    inside functions); ``from a import b`` counts as ``a`` and ``a.b``."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update({a.name: node.lineno for a in node.names})
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(p for p in (base, node.module) if p)
            out[base] = node.lineno
            out.update({f"{base}.{a.name}": node.lineno for a in node.names})
    return out


def source_crossings(modules: list[str], wall) -> list[str]:
    return [f"{name}:{line} imports {m}" for name in modules
            for m, line in source_imports(name).items() if wall(m)]


def _under(module: str, parts: list[str]) -> bool:
    return any(module == f"infer_lab.{p}" or module.startswith(f"infer_lab.{p}")
               for p in parts)  # startswith: speculative_widgets, speculative/ too


def _figure(module: str) -> bool:
    last = module.rpartition(".")[2]
    if module.split(".")[0] in FIGURE_LIBRARIES:
        return True
    return module.startswith("infer_lab.") and (
        "viz" in last or last == "widgets" or last.endswith("_widgets"))


def _beyond_core(module: str) -> bool:
    return (_under(module, TECHNIQUES + LAB_MATERIAL + ["telemetry"])
            or _figure(module))


def test_the_core_imports_no_technique_telemetry_figure_or_lab_material():
    found = loaded(["infer_lab", *CORE])  # the package first: its own imports show as its
    assert crossings(found, _beyond_core) == []
    assert source_crossings(CORE, _beyond_core) == []


def test_the_plain_serving_parts_import_no_torch():
    assert crossings(loaded(PLAIN_SERVING), lambda m: m == "torch") == []


def test_telemetry_observes_from_outside():
    def telemetry(m: str) -> bool:
        return m == "infer_lab.telemetry"

    assert crossings(loaded(OBSERVED), telemetry) == []
    assert source_crossings(OBSERVED, telemetry) == []


# A pretend kernel: ipykernel "running", IPython's get_ipython() with a kernel, and a
# comm module that writes down what is asked of it. The old import-time connect() would
# have registered a target and opened a comm here.
FAKE_KERNEL = """
import types
calls = []
class _Manager:
    targets = {}
    def register_target(self, name, fn):
        calls.append(("register_target", name))
class _Comm:
    def on_msg(self, cb): pass
    def on_close(self, cb): pass
    def send(self, data): pass
def _create_comm(**kw):
    calls.append(("create_comm", kw.get("target_name")))
    return _Comm()
sys.modules["ipykernel"] = types.ModuleType("ipykernel")
ipy = sys.modules["IPython"] = types.ModuleType("IPython")
ipy.get_ipython = lambda: types.SimpleNamespace(kernel=object())
c = sys.modules["comm"] = types.ModuleType("comm")
c.get_comm_manager, c.create_comm = lambda: _Manager(), _create_comm
"""


def test_import_infer_lab_has_no_side_effects():
    found = loaded(["infer_lab"])["infer_lab"]
    assert [m for m in found if m.split(".")[0] in KERNEL_SIDE + ["torch"]] == []
    assert [m for m in found if m == "infer_lab.telemetry"] == []
    check = FAKE_KERNEL + textwrap.dedent("""
        import infer_lab
        assert calls == [], calls  # no comm offered, no target registered
        from infer_lab import observe
        assert observe.default_observers == []
        assert infer_lab.telemetry.connect() is True  # the lab's setup cell does this
        assert [n for n, _ in calls] == ["register_target", "create_comm"], calls
        assert observe.default_observers == [infer_lab.telemetry.observer]
        print(json.dumps({}))
    """)
    loaded([], prelude=check)


def test_the_extension_server_imports_the_torch_free_catalogue_and_progress():
    found = loaded(EXTENSION_SERVER, path=[str(REPO / "extension")])
    every = {m for mods in found.values() for m in mods}
    assert crossings(found, lambda m: m == "torch") == []
    assert {"infer_lab.exercises.catalog", "infer_lab.exercises.progress"} <= every
