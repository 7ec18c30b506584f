"""The project's module graph as the structure rules count it: imports inside functions count (a lazy import
still ties two modules together), so do "reflectevo.x.y:Name" registry strings, and importing a module also
runs its parent packages. Used by tests/test_imports.py (cycles, layers) and tests/test_dvc_deps.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_STRING = re.compile(r"(reflectevo(?:\.\w+)+):\w+")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the package (resources/ holds data, not modules)."""
    out = {}
    for path in sorted((root / "reflectevo").rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        if "resources" in rel.parts:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, mods: dict[str, Path], package: str) -> set[str]:
    """The project modules `path` imports anywhere in its body (functions included) or names in a registry
    string, plus their parent packages. `package`: the package relative imports resolve against."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(r for a in node.names if (r := _resolve(a.name, mods)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module or ""
            for a in node.names:
                r = _resolve(f"{base}.{a.name}", mods) if f"{base}.{a.name}" in mods else _resolve(base, mods)
                if r:
                    out.add(r)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = REGISTRY_STRING.fullmatch(node.value)
            if m and (r := _resolve(m.group(1), mods)):
                out.add(r)
    for m in list(out):
        parts = m.split(".")
        out.update(p for i in range(1, len(parts)) if (p := ".".join(parts[:i])) in mods)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    edges = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges[name] = imports_of(path, mods, package) - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; a package and one of its
    own modules importing each other (two modules) is not counted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
            pair = len(comp) == 2 and (comp[0].startswith(comp[1] + ".") or comp[1].startswith(comp[0] + "."))
            if len(comp) > 1 and not pair:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def reach(script: Path, root: Path = ROOT) -> set[str]:
    """Every project module a script (e.g. stages/generate.py) reaches through imports, transitively."""
    mods = modules(root)
    edges = graph(root)
    todo, seen = list(imports_of(script, mods, "stages")), set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(edges.get(m, ()))
    return seen
