"""No import cycles among reflectevo's modules (module-level imports, as Python runs them on import)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(pkg_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the package (resources/ holds data, not modules)."""
    out = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(pkg_dir.parent).with_suffix("")
        if "resources" in rel.parts:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _top_level(nodes: list[ast.stmt]):
    """Statements Python runs when the module is imported: not function bodies (lazy imports)."""
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _top_level([n for n in inner if isinstance(n, ast.AST)])


def import_graph(pkg_dir: Path) -> dict[str, set[str]]:
    """module -> modules its import runs. `from P import n` needs P (or P.n when that is a module);
    importing a.b.c also runs a and a.b, except the importer's own parents (already being imported)."""
    mods = _modules(pkg_dir)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]
        own = set(_ancestors(name))
        targets: set[str] = set()
        for node in _top_level(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets.update(a for a in [*_ancestors(alias.name), alias.name] if a not in own)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets.update(a for a in _ancestors(base) if a not in own)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in mods else base)
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_reflectevo_has_no_import_cycles():
    graph = import_graph(ROOT / "reflectevo")
    assert "reflectevo.cli" in graph and "reflectevo.cli.compat" in graph["reflectevo.cli"]
    assert cycles(graph) == []


def test_the_check_finds_a_cycle(tmp_path):
    """The shape cli.py <-> cli_compat.py had: a package and a command module importing each other."""
    pkg = tmp_path / "pkg"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("app = object()\nfrom pkg.cli import extra  # noqa\n")
    (pkg / "cli" / "extra.py").write_text("from pkg.cli import app\n")
    (pkg / "a.py").write_text("import pkg.b\n\ndef f():\n    import pkg.c\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("try:\n    from .a import f\nexcept ImportError:\n    pass\n")
    (pkg / "d.py").write_text("def g():\n    import pkg.a  # lazy: no cycle\n")
    graph = import_graph(pkg)
    assert graph["pkg.cli.extra"] == {"pkg.cli"} and graph["pkg.b"] == {"pkg.c"}
    assert sorted(cycles(graph)) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.cli", "pkg.cli.extra"]]
