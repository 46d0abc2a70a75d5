"""The package's imports point one way: errors <- core, data <- training <- app <- results <- the
package face and the benchmarks; no import circle anywhere in src/ or benchmarks/; and no import of
the project's own modules inside a function, except those listed in LAZY with their reason.
Read with the standard library's ``ast`` from the files themselves (nothing is imported)."""

import ast
from pathlib import Path

from tests.conftest import ROOT

# a module's tier: the first name under dcgmm/ (or benchmarks); a module may import its own group
# and groups of lower tiers, never a group of its own tier or above
TIERS = {"errors": 0, "moved": 0, "core": 1, "data": 1, "training": 2, "app": 3, "results": 4, "": 5, "benchmarks": 6}
# imports of the project's own modules inside a function, each with its reason
LAZY = {
    ("dcgmm", "__getattr__", "dcgmm.app.api"): "`import dcgmm` stays light (no torch, no Lightning) until the estimator is asked for",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "src") if path.is_relative_to(ROOT / "src") else path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    files = [*(ROOT / "src" / "dcgmm").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    return {module_name(path): path for path in files}


def imports(path: Path, known: set[str]) -> list[tuple[str, str | None, int]]:
    """``(imported module, enclosing function or None, line)`` for every import of a project module."""
    found = []

    def target(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
            else:
                names = []
            for name in names:
                if name.split(".")[0] in ("dcgmm", "benchmarks") and (module := target(name)):
                    found.append((module, function, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text()), None)
    return found


def graph() -> dict[str, set[str]]:
    modules = sources()
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        edges[name] |= {module for module, _, _ in imports(path, set(modules)) if module != name}
    return edges


def group(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "benchmarks":
        return "benchmarks"
    return parts[1] if len(parts) > 1 else ""


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            connect(v)
    return found


def test_every_module_belongs_to_a_tier():
    assert {group(name) for name in sources()} <= set(TIERS), "a new top-level module or package needs a tier in TIERS (and docs/design.md)"


def test_imports_point_down_the_tiers():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            a, b = group(module), group(target)
            if a != b and TIERS[a] <= TIERS[b]:
                wrong.append(f"{module} ({a or 'dcgmm'}) imports {target} ({b or 'dcgmm'})")
    assert not wrong, "imports against the tiers: " + "; ".join(sorted(wrong))


def test_no_import_circle_in_src_or_benchmarks():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_project_import_inside_a_function_without_a_reason():
    modules = sources()
    lazy = [(name, function, target, line) for name, path in modules.items() if not name.startswith("benchmarks")
            for target, function, line in imports(path, set(modules)) if function is not None]
    unexplained = [f"{name}:{line} ({function}) imports {target}" for name, function, target, line in lazy if (name, function, target) not in LAZY]
    assert not unexplained, "imports inside functions (move them to the top, or list them in LAZY with the reason): " + "; ".join(unexplained)


def test_the_checks_see_a_circle_and_an_upward_import():
    """The walker itself: a made-up graph with a circle and a core module importing the app."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert TIERS[group("dcgmm.core.model")] < TIERS[group("dcgmm.app.module")]
    edges = graph()
    assert "dcgmm.training.annealing" in edges and "dcgmm.core.model" in edges["dcgmm.training.annealing"]


def test_the_earlier_flat_layout_resolves_to_the_same_modules():
    """Checkpoints pickle classes under the old module names (dcgmm.annealing.Annealing); user code
    may import them: each old name gives the module itself, not a second copy."""
    import importlib

    from dcgmm.moved import MOVED

    package = ROOT / "src" / "dcgmm"
    for old, new in MOVED.items():
        rel = Path(*old.split(".")[1:])
        assert not (package / rel).with_suffix(".py").exists() and not (package / rel).is_dir(), f"{old} exists again beside {new}"
        assert importlib.import_module(old) is importlib.import_module(new), old
    from dcgmm.annealing import Annealing as old_class
    from dcgmm.layers.gmm import GMMLayer as old_layer

    from dcgmm.core.layers.gmm import GMMLayer
    from dcgmm.training.annealing import Annealing

    assert old_class is Annealing and old_layer is GMMLayer
