"""The layout keeps core, tools and framework packages apart (design: "Layout"), read from the
source with ``ast`` (nothing is imported, so the test needs no framework and costs no time):

- an import is any ``import``/``from`` statement, at module level or inside a function, and any
  ``importlib.import_module("name")``, ``__import__("name")`` or ``importlib.util.find_spec("name")``
  with a literal name: a string import is still an import;
- no import cycle among the modules of ``shared`` and ``shared.tools`` (a lazy cycle is still a cycle);
- the core (``shared`` outside ``shared.tools``) imports no framework, no framework package
  (``resnet_*``) and not the tools, by any of those means; the tools outside their adapters
  import no framework at all;
- a framework package imports no other framework, no other framework package, and not the tools;
- every adapter keeps the ``Adapter`` protocol;
- the README's layout table names paths that exist, and every package in the tree;
- pyproject ships every package, and its console script names the cli's ``main``.
"""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest

from shared import spec as S
from shared.tools import adapter

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "resnet_torch", "resnet_keras", "resnet_flax")
FRAMEWORKS = frozenset({"torch", "torchvision", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "orbax",
                        "onnxruntime"})
# What each framework package may import: its framework (Keras also the backends it runs on).
ALLOWED = {"resnet_torch": {"torch", "torchvision"}, "resnet_keras": {"keras", "tensorflow", "jax", "torch"},
           "resnet_flax": {"jax", "jaxlib", "flax", "optax", "orbax"}}
# Known cycles in files this layout's owner does not hold, each with what would remove it.
KNOWN_CYCLES: dict = {}  # none: a cycle added later must be named here, with its reason


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


# Calls that import (or look up, to import) the module their first argument names.
STRING_IMPORTS = {"import_module", "__import__", "find_spec"}


def imports(path: Path | str, module_level_only: bool = False) -> set[str]:
    """Every module ``path`` (a file, or source text) imports (``from a import b`` counts as
    ``a.b`` when that is a module of ours, else ``a``; a string import by its literal name);
    ``module_level_only``: not those inside functions."""
    text = path.read_text() if isinstance(path, Path) else path
    tree = ast.parse(text, str(path) if isinstance(path, Path) else "<source>")
    nodes = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and module_level_only:
                continue
            nodes.append(child)
            visit(child)

    visit(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            out |= subs or {node.module}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(
                node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in STRING_IMPORTS:
                out.add(node.args[0].value)
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets (each as its modules, first repeated last)."""
    state, stack, found = {}, [], []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    ours = {m: p for m, p in MODULES.items() if _top(m) == package}
    return {m: {i for i in imports(p) if i in ours and i != m} for m, p in ours.items()}


def _shared_graph() -> dict[str, set[str]]:
    return _graph("shared")


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles_in_shared():
    every = cycles(_shared_graph())
    found = [c for c in every if frozenset(c) not in KNOWN_CYCLES]
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
    gone = set(KNOWN_CYCLES) - {frozenset(c) for c in every}
    assert not gone, f"no longer a cycle, remove from KNOWN_CYCLES: {[sorted(c) for c in gone]}"
    assert {"shared.tools.cli", "shared.tools.bench", "shared.tools.worker"} <= set(_shared_graph())


@pytest.mark.parametrize("package", ["resnet_torch", "resnet_keras", "resnet_flax"])
def test_no_import_cycles_in_a_framework_package(package):
    """Within each package too (``checkpoints`` <-> ``weights`` in Keras and Flax, and Flax's
    ``model`` <-> ``weights``, were cycles before; a lazy import inside a function counts)."""
    graph = _graph(package)
    found = [c for c in cycles(graph) if _top(c[0]) == package and c[0] != package]
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
    assert f"{package}.weights" in graph


def test_the_tools_were_a_cycle_before():
    """The finder sees the cycle the issue named (``cli`` <-> ``bench``, both imports lazy)."""
    graph = _shared_graph()
    graph["shared.tools.bench"] = graph["shared.tools.bench"] | {"shared.tools.cli"}
    assert ["shared.tools.bench", "shared.tools.cli", "shared.tools.bench"] in cycles(graph)


def core_violations(name: str, source: Path | str) -> list[str]:
    """What a core module imports that it must not: a framework, a framework package, the tools."""
    found = imports(source)
    bad = sorted({_top(i) for i in found} & (FRAMEWORKS | set(ALLOWED)))
    bad += sorted(i for i in found if i.startswith("shared.tools"))
    return [f"{name} imports {b}" for b in bad]


def test_core_imports_no_framework_no_framework_package_and_not_the_tools():
    found = [v for name, path in MODULES.items() if _top(name) == "shared" and not name.startswith("shared.tools")
             for v in core_violations(name, path)]
    assert not found, "; ".join(found)


@pytest.mark.parametrize("source, caught", [
    ("import torch", "torch"),
    ("def f():\n    import jax.numpy as jnp", "jax"),  # a lazy import is an import
    ("import importlib\ndef f():\n    return importlib.import_module('resnet_keras.checkpoints')", "resnet_keras"),
    ("from importlib import import_module\nm = import_module('flax')", "flax"),
    ("def f():\n    return __import__('tensorflow')", "tensorflow"),
    ("import importlib.util\nok = importlib.util.find_spec('torch') is not None", "torch"),
    ("from resnet_torch.checkpoints import read_pth", "resnet_torch"),
    ("from shared.tools import cli", "shared.tools.cli"),
])
def test_the_core_rule_catches_every_way_in(source, caught):
    """Each way a core module could reach a framework, a framework package or the tools is caught,
    and a legitimate core module (numpy, h5py, the standard library, a string that names no module
    to import) passes."""
    assert [v for v in core_violations("shared.broken", source) if v.endswith(f"imports {caught}")]
    legit = ("import numpy as np\nimport h5py\nimport importlib.util\n"
             "MESSAGE = 'a .pth checkpoint is read by resnet_torch'\nhas = importlib.util.find_spec('h5py')")
    assert core_violations("shared.fine", legit) == []


def test_tools_import_frameworks_only_in_their_adapters():
    for name, path in MODULES.items():
        if not name.startswith("shared.tools") or name.startswith("shared.tools.adapters"):
            continue
        found = {_top(i) for i in imports(path)} & (FRAMEWORKS | set(ALLOWED))
        assert not found, f"{name} imports {sorted(found)}: frameworks belong in shared.tools.adapters"



@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_framework_package_imports_no_other_framework_nor_the_tools(package):
    for name, path in MODULES.items():
        if _top(name) != package:
            continue
        found = imports(path)
        others = {_top(i) for i in found} & (FRAMEWORKS - ALLOWED[package])
        assert not others, f"{name} imports {sorted(others)}"
        packages = {_top(i) for i in found} & (set(ALLOWED) - {package})
        assert not packages, f"{name} imports {sorted(packages)}"
        tools = {i for i in found if i.startswith("shared.tools")}
        assert not tools, f"{name} imports the tools: {sorted(tools)}"


def _functions(path: Path) -> dict[str, list[str]]:
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            out[node.name] = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return out


@pytest.mark.parametrize("name", adapter.NAMES)
def test_every_adapter_keeps_the_protocol(name):
    """Read from the source (no framework imported): every member of ``Adapter``, with its parameters."""
    path = ROOT / "shared" / "tools" / "adapters" / f"{name}.py"
    tree = ast.parse(path.read_text())
    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert isinstance(assigned.get("NAME"), ast.Constant) and assigned["NAME"].value == name
    module = types.SimpleNamespace(NAME=name)
    for function, params in _functions(path).items():
        setattr(module, function, _signature_only(params))
    assert adapter.conformance(module) == []


def _signature_only(params):
    namespace = {}
    exec(f"def f({', '.join(params)}): pass", namespace)  # noqa: S102 (names from our own source)
    return namespace["f"]


def test_conformance_names_what_a_broken_adapter_lacks():
    broken = types.SimpleNamespace(NAME="x", versions=lambda: {}, setup_precision=lambda precision: None)
    problems = adapter.conformance(broken)
    assert "setup_precision(precision), expected setup_precision(precision, device)" in problems
    assert {"no run_check()", "no run_bench()", "no inject()"} <= set(problems)


def _layout_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Layout\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Layout' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]


def test_readme_layout_table_matches_the_tree():
    named = _layout_table()
    for path in named:
        assert (ROOT / path.rstrip("/")).exists(), f"README's layout table names {path}, which does not exist"
    packages = {str(p.parent.relative_to(ROOT)) + "/" for p in ROOT.glob("*/__init__.py")}
    packages |= {str(p.parent.relative_to(ROOT)) + "/" for p in (ROOT / "shared").rglob("__init__.py")}
    missing = (packages | {"tests/"}) - set(named)
    assert not missing, f"README's layout table leaves out {sorted(missing)}"


def test_every_package_ships_and_the_command_points_at_the_cli():
    """pyproject's package patterns take every package of the tree (``shared.tools`` too: the
    pattern "shared" alone does not), and the console script names a function that exists."""
    import fnmatch
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    unshipped = {p for p in packages if not any(fnmatch.fnmatchcase(p, pat) for pat in patterns)}
    assert not unshipped, f"pyproject's packages.find.include leaves out {sorted(unshipped)}"
    module, _, function = project["project"]["scripts"]["resnet-parity"].partition(":")
    assert function in _functions(MODULES[module])


def test_constructors_are_written_out_as_the_presets_say():
    """Every package's ``api.py`` holds one plain function per preset, and its ``__init__`` imports
    them, exactly as ``shared.tools.constructors`` writes them from ``PRESETS``."""
    from shared.tools import constructors

    assert constructors.stale() == [], "run: python -m shared.tools.constructors"
    for package in constructors.RETURNS:
        tree = ast.parse((ROOT / package / "api.py").read_text())
        written = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {p.constructor for p in S.PRESETS.values()} <= written, package


def test_a_stale_constructor_is_caught(tmp_path, monkeypatch):
    """Proof: an edited constructor, and a preset added without regenerating, each make the check fail."""
    import dataclasses
    import shutil

    from shared.tools import constructors

    for package in constructors.RETURNS:
        (tmp_path / package).mkdir()
        for name in ("api.py", "__init__.py"):
            shutil.copy(ROOT / package / name, tmp_path / package / name)
    assert constructors.stale(tmp_path) == []
    api = tmp_path / "resnet_flax" / "api.py"
    api.write_text(api.read_text().replace("def ResNet50(img_channel: int = 3", "def ResNet50(img_channel: int = 1"))
    assert constructors.stale(tmp_path) == ["resnet_flax/api.py"]
    extra = dataclasses.replace(S.PRESETS["resnet18"], constructor="ResNet10")
    from shared import contract

    for module in (constructors, contract):
        monkeypatch.setattr(module, "PRESETS", {**S.PRESETS, "resnet10": extra})
    assert len(constructors.stale(tmp_path)) == 6


def test_three_packages_of_one_shape():
    """The same modules in each framework package, each with one job: api (the contract's entry
    points), layers (one spec layer -> one native layer), model, weights, checkpoints, optim (a
    shared.recipe's optimizer and train step)."""
    shapes = {package: sorted(p.stem for p in (ROOT / package).glob("*.py")) for package in ALLOWED}
    assert all(shape == ["__init__", "api", "checkpoints", "layers", "model", "optim", "weights"] for shape in shapes.values()), shapes
