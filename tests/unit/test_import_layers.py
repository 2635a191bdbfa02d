"""The trainer's layers, read from the source (ast), function-level imports included.

``trainer/`` is a stack of layers (README "Layout"); a module imports only its own package and
the layers below it, siblings on one level (``runtime``/``data``/``model``, ``training``/
``report``) not each other. ``jobs/`` imports of the trainer only ``core``, ``config`` and what
reads a run directory. No import circle, counting imports inside functions; and an import
inside a function is there to defer something heavy (TensorFlow, matplotlib, scikit-learn,
scipy, a cloud client), not to hide an arrow from the reader.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("trainer", "jobs")

# Higher imports lower. The longest matching prefix names a module's layer.
LAYERS = {
    "trainer.core": 0,
    "trainer.storage": 1,
    "trainer.config": 2,
    "trainer.runtime": 3, "trainer.data": 3, "trainer.model": 3,
    "trainer.training": 4, "trainer.report": 4, "trainer.promotions": 4,
    "trainer.promote": 5,
    "trainer.run": 6,
    "trainer.__main__": 7,
    "trainer": 8,  # trainer/__init__.py (a docstring)
}
# What the launcher may import of the trainer: the shared core and config, and what reads a
# run directory (``jobs runs``/``status`` read progress.json through the storage layer, and
# ``jobs runs`` a promotion target's history).
JOBS_MAY_IMPORT = ("trainer.core", "trainer.config", "trainer.storage", "trainer.training.progress",
                   "trainer.promotions")
# Libraries worth deferring: importing one costs a second or more (or must not happen at all in
# ``jobs`` and a run's own process: tests/trainer/test_phases.py).
HEAVY = ("tensorflow", "keras", "matplotlib", "sklearn", "scipy", "google.cloud", "google.auth",
         "kubernetes")
# Function-level imports of light project modules, each with its reason.
DEFERRED_FOR_A_REASON = {
    ("trainer.model.backbones", "trainer.model.schedule"):
        "docker/Dockerfile runs backbones.py alone (``bake``) before the package is copied",
    ("trainer.__main__", "trainer.run"):
        "--help and a bad config answer before numpy and the run's modules are imported",
    ("trainer.__main__", "trainer.data.packer"): "the same, for ``data pack --help``",
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported project module (or third-party name)
    line: int
    in_function: bool


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: set[str]) -> list[Import]:
    """Every import in ``module``: project targets resolved to modules, others kept by name.
    Imports under ``if TYPE_CHECKING:`` never run and are skipped."""
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(module, alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, path, child)
                for alias in child.names:
                    name = f"{base}.{alias.name}"
                    found.append(Import(module, name if name in modules else base, child.lineno,
                                        in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                           ast.Lambda)))

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def layer_of(module: str) -> tuple[str, int] | None:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return (best, LAYERS[best]) if best else None


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    files = module_files()
    return {m: imports_of(m, p, set(files)) for m, p in files.items()}


def arrow(imp: Import) -> str:
    where = "inside a function, " if imp.in_function else ""
    return f"{imp.source} -> {imp.target} ({where}line {imp.line})"


def test_every_trainer_module_has_a_layer(graph):
    assert [m for m in graph if m.startswith("trainer") and layer_of(m) is None] == []


def test_no_layer_imports_a_layer_above_or_beside_it(graph):
    bad = []
    for module, imps in graph.items():
        for imp in imps:
            if not is_project(imp.target):
                continue
            if module.startswith("jobs"):
                if imp.target.startswith("trainer") and not any(
                        imp.target == p or imp.target.startswith(p + ".") for p in JOBS_MAY_IMPORT):
                    bad.append(f"{arrow(imp)}: jobs/ imports only {', '.join(JOBS_MAY_IMPORT)}")
                continue
            if imp.target.startswith("jobs"):
                bad.append(f"{arrow(imp)}: the trainer never imports the launcher")
                continue
            (src_pkg, src), (dst_pkg, dst) = layer_of(module), layer_of(imp.target)
            if src_pkg == dst_pkg or dst < src:
                continue
            bad.append(f"{arrow(imp)}: {src_pkg} (layer {src}) imports {dst_pkg} (layer {dst})")
    assert bad == [], "imports against the layers:\n" + "\n".join(bad)


def find_circles(graph: dict[str, list[Import]]) -> list[str]:
    """Each import circle among the modules of ``graph``, as its chain of arrows."""
    edges = {m: [i for i in imps if i.target in graph and i.target != m] for m, imps in graph.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[Import] = []
    circles: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        for imp in edges[module]:
            if state.get(imp.target) == 1:
                chain = path + [imp]
                start = next(k for k, i in enumerate(chain) if i.source == imp.target)
                circles.append("\n  ".join(arrow(i) for i in chain[start:]))
            elif imp.target not in state:
                path.append(imp)
                walk(imp.target)
                path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module)
    return circles


def test_no_import_circle(graph):
    circles = find_circles(graph)
    assert circles == [], "import circles:\n  " + "\n\n  ".join(circles)


def _loads_heavy(module: str, graph: dict[str, list[Import]], seen: set[str]) -> bool:
    """True when importing ``module`` imports a heavy library (its own top-level imports, and
    theirs)."""
    if module in seen:
        return False
    seen.add(module)
    for imp in graph.get(module, []):
        if imp.in_function:
            continue
        if any(imp.target == h or imp.target.startswith(h + ".") for h in HEAVY):
            return True
        if imp.target in graph and _loads_heavy(imp.target, graph, seen):
            return True
    return False


def test_function_level_imports_defer_something_heavy(graph):
    hidden = [f"{arrow(imp)}: {imp.target} imports nothing heavy; import it at the top"
              for imps in graph.values() for imp in dict.fromkeys(imps)
              if imp.in_function and imp.target in graph
              and (imp.source, imp.target) not in DEFERRED_FOR_A_REASON
              and not _loads_heavy(imp.target, graph, set())]
    assert hidden == [], "function-level imports that defer nothing:\n" + "\n".join(hidden)


def test_the_checker_sees_function_level_imports_and_names_the_arrow(tmp_path):
    """The ast walk above on a two-module circle closed by an import inside a function."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    found = imports_of("b", tmp_path / "b.py", {"a", "b"})
    assert [(i.target, i.line, i.in_function) for i in found] == [("a", 2, True)]
    assert arrow(found[0]) == "b -> a (inside a function, line 2)"
    graph = {"a": imports_of("a", tmp_path / "a.py", {"a", "b"}), "b": found}
    assert find_circles(graph) == ["a -> b (line 1)\n  b -> a (inside a function, line 2)"]
