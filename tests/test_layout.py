"""The layout keeps core, tools and framework packages apart (design: "Layout"), read from the
source with ``ast`` (nothing is imported, so the test needs no framework and costs no time):

- no import cycle among the modules of ``shared`` and ``shared.tools``, counting imports
  inside functions too (a lazy cycle is still a cycle);
- the core (``shared`` outside ``shared.tools``) imports no framework at module level and never
  the tools; the tools outside their adapters import no framework at all;
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


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module
    of ours, else ``a``); ``module_level_only``: not those inside functions."""
    tree = ast.parse(path.read_text(), str(path))
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


def _shared_graph() -> dict[str, set[str]]:
    ours = {m: p for m, p in MODULES.items() if _top(m) == "shared"}
    return {m: {i for i in imports(p) if i in ours and i != m} for m, p in ours.items()}


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


def test_the_tools_were_a_cycle_before():
    """The finder sees the cycle the issue named (``cli`` <-> ``bench``, both imports lazy)."""
    graph = _shared_graph()
    graph["shared.tools.bench"] = graph["shared.tools.bench"] | {"shared.tools.cli"}
    assert ["shared.tools.bench", "shared.tools.cli", "shared.tools.bench"] in cycles(graph)


def test_core_imports_no_framework_and_not_the_tools():
    for name, path in MODULES.items():
        if _top(name) != "shared" or name.startswith("shared.tools"):
            continue
        at_import = {_top(i) for i in imports(path, module_level_only=True)} & FRAMEWORKS
        assert not at_import, f"{name} imports {sorted(at_import)} at module level"
        tools = {i for i in imports(path) if i.startswith("shared.tools")}
        assert not tools, f"{name} imports the tools: {sorted(tools)}"


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
