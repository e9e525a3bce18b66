"""The package's import graph, parsed from the sources (nothing is imported): no circles, and
arrows that point down: interfaces -> jobs -> variants -> engine / data / config / errors.

Imports inside functions count: they are how a circle hides. The two lists below are the
knots still open (issue 16, none today); an entry that is no longer true fails too, so they only
shrink.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_emdiffuse"

#: layer of a module by its dotted name's start (the longest match wins); everything else is the ground floor
LAYERS = {
    "cli": 3, "cli_calibrate": 3, "cli_jobs": 3, "arg_types": 3, "data.cli_commands": 3, "_widgets": 3, "_reader": 3, "_writer": 3,
    "bioimageio_export": 3, "bioimageio_model": 3, "_sample_data": 3, "demo": 3,
    "jobs": 2, "import_emdiffuse": 2,
    "variants": 1,
}
LAYER_NAMES = {3: "interfaces", 2: "jobs", 1: "variants", 0: "engine/data/config/errors"}

KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CIRCLES: set[frozenset[str]] = set()


def layer(module: str) -> int:
    best = ""
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return LAYERS.get(best, 0)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (dotted names without the package's own)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
                elif (node.module or "").split(".")[0] == package.name:
                    base = node.module.split(".")[1:]
                else:
                    continue
                stem = ".".join(base)
                for alias in node.names:  # `from . import metrics` imports a module, `from .x import f` a name of x
                    sub = f"{stem}.{alias.name}" if stem else alias.name
                    targets.add(sub if sub in modules else stem)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == package.name:
                        targets.add(".".join(alias.name.split(".")[1:]))
        targets.discard(name)
        targets.discard("")  # the package's __init__ (its version string)
    return graph


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a)}


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down():
    upward = upward_imports(import_graph(PACKAGE))
    new = sorted(upward - KNOWN_UPWARD)
    assert not new, "imports from a lower layer to a higher one: " + ", ".join(
        f"{a} ({LAYER_NAMES[layer(a)]}) -> {b} ({LAYER_NAMES[layer(b)]})" for a, b in new
    )
    assert not KNOWN_UPWARD - upward, f"fixed, remove from KNOWN_UPWARD: {sorted(KNOWN_UPWARD - upward)}"


def test_no_import_circles():
    found = circles(import_graph(PACKAGE))
    assert not found - KNOWN_CIRCLES, f"import circles: {[sorted(c) for c in found - KNOWN_CIRCLES]}"
    assert not KNOWN_CIRCLES - found, f"fixed, remove from KNOWN_CIRCLES: {[sorted(c) for c in KNOWN_CIRCLES - found]}"


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    pkg = tmp_path / "napari_emdiffuse"
    for name, text in {
        "__init__.py": "",
        "errors.py": "",
        "data/__init__.py": "",
        "data/io.py": "def f():\n    from ..jobs.train import train\n",  # hidden in a function
        "jobs/__init__.py": "",
        "jobs/train.py": "from ..data import io\nfrom napari_emdiffuse.errors import x\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["jobs.train"] == {"data.io", "errors"}
    assert upward_imports(graph) == {("data.io", "jobs.train")}
    assert circles(graph) == {frozenset({"data.io", "jobs.train"})}


def test_loading_a_preset_imports_no_variant_no_opencv_and_no_torch():
    """``config`` is the ground floor: reading a preset (the CLI's first step, the widgets'
    preset picker) must not pay for the variants, OpenCV or torch. ``-X importtime`` lists every
    module the statement imports, in a fresh interpreter."""
    code = "from napari_emdiffuse.config import load_preset; load_preset('tiny')"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "napari_emdiffuse.config" in imported  # the listing is what it claims to be
    heavy = sorted(m for m in imported if m.split(".")[0] in {"cv2", "torch"} or m.startswith("napari_emdiffuse.variants"))
    assert not heavy, f"load_preset imports {heavy}"


def test_every_error_type_lives_in_errors_py():
    """Any module may raise any error, so their types sit at the ground floor, in one file."""
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            bases = [getattr(b, "id", getattr(b, "attr", "")) for b in getattr(node, "bases", [])]
            if isinstance(node, ast.ClassDef) and any(b.endswith(("Error", "Exception")) for b in bases):
                elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert elsewhere and all(e.startswith("errors.py:") for e in elsewhere), sorted(e for e in elsewhere if not e.startswith("errors.py"))
