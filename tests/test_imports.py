"""The library's structure: no import cycles and every module in its layer, counted as tests/structure_graph.py
counts them (imports inside functions and "reflectevo.x:Name" registry strings included)."""

from __future__ import annotations

import fnmatch

import pytest
from structure_graph import ROOT, cycles, graph, imports_of, modules

# The house, lowest floor first. A module may import its own floor and the floors below, never above;
# docs/architecture.md says what each floor is for. A new module must be placed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("reflectevo", "reflectevo.errors", "reflectevo.registry", "reflectevo.jsonio", "reflectevo.cache",
                    "reflectevo.settings", "reflectevo.demands", "reflectevo.sampling", "reflectevo.stats",
                    "reflectevo.metrics", "reflectevo.metrics_summary", "reflectevo.diagnostics", "reflectevo.adapters",
                    "reflectevo.paper", "reflectevo.progress",
                    "reflectevo.episodes*")),
    ("tasks", ("reflectevo.tasks*", "reflectevo.sandbox")),
    ("config", ("reflectevo.config*", "reflectevo.stage")),
    ("prompts", ("reflectevo.prompts", "reflectevo.compat*", "reflectevo.datacard")),
    ("models", ("reflectevo.models*", "reflectevo.backends*", "reflectevo.modelcard")),
    ("protocol", ("reflectevo.protocol*",)),
    ("work", ("reflectevo.generation*", "reflectevo.evaluation", "reflectevo.curation*", "reflectevo.judge",
              "reflectevo.training*")),
    ("top", ("reflectevo.systems", "reflectevo.evolve", "reflectevo.report", "reflectevo.publish", "reflectevo.serve",
             "reflectevo.paramsfile", "reflectevo.plan", "reflectevo.recipes",
             "reflectevo.cli*")),
]
# Packages of one floor that never import each other: each is a stage's own work.
SEPARATE: tuple[tuple[str, ...], ...] = (("reflectevo.generation*",), ("reflectevo.evaluation",),
                                         ("reflectevo.curation*", "reflectevo.judge"), ("reflectevo.training*",))
# Rules worth saying as pairs too: the low packages never reach the machinery.
NEVER = {"reflectevo.tasks*": ("reflectevo.backends*", "reflectevo.generation*", "reflectevo.training*",
                               "reflectevo.config*"),
         "reflectevo.sandbox": ("reflectevo.backends*", "reflectevo.generation*", "reflectevo.training*"),
         "reflectevo.config*": ("reflectevo.backends*", "reflectevo.generation*", "reflectevo.training*",
                                "reflectevo.prompts", "reflectevo.models*")}


def _match(module: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(module, p) or (p.endswith("*") and module == p[:-2].rstrip(".")) for p in patterns)


def layer_of(module: str) -> int:
    hits = [i for i, (_, pats) in enumerate(LAYERS) if _match(module, pats)]
    assert len(hits) == 1, f"{module}: placed in {len(hits)} layers of tests/test_imports.py LAYERS (must be one)"
    return hits[0]


def test_reflectevo_has_no_import_cycles():
    edges = graph()
    assert "reflectevo.protocol.rounds" in edges["reflectevo.generation.episodes"]
    assert cycles(edges) == []


def test_every_module_imports_only_its_layer_and_below():
    edges = graph()
    wrong = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
             for m, targets in edges.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert wrong == []


def test_the_stages_own_packages_stay_apart():
    edges = graph()
    wrong = [f"{m} imports {t}" for m, targets in edges.items() for t in targets
             for group in SEPARATE if _match(m, group)
             for other in SEPARATE if other is not group and _match(t, other)]
    assert wrong == []


@pytest.mark.parametrize("importer", sorted(NEVER))
def test_low_packages_never_import_high_ones(importer):
    edges = graph()
    wrong = [f"{m} imports {t}" for m, targets in edges.items() if _match(m, (importer,))
             for t in targets if _match(t, NEVER[importer])]
    assert wrong == []


def test_the_library_never_imports_the_stage_scripts_or_tests():
    import ast

    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(t.split(".")[0] in ("stages", "tests", "conftest", "helpers") for t in targets), name


def test_the_check_counts_lazy_imports_registry_strings_and_parents(tmp_path):
    """A cycle only through a function-level import, one only through a registry string, a package whose
    __init__ imports a module that imports a sibling that imports another: all counted; a package and one of
    its own modules alone are not."""
    pkg = tmp_path / "reflectevo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    import reflectevo.b\n")
    (pkg / "b.py").write_text("from reflectevo.a import f\n")
    (pkg / "c.py").write_text("REG = {'x': 'reflectevo.d:Thing'}\n")
    (pkg / "d.py").write_text("import reflectevo.c\n")
    (pkg / "sub" / "__init__.py").write_text("from reflectevo.sub.one import x\n")
    (pkg / "sub" / "one.py").write_text("from reflectevo.sub.two import y\nx = 1\n")
    (pkg / "sub" / "two.py").write_text("from reflectevo.sub.three import z\ny = 2\n")
    (pkg / "sub" / "three.py").write_text("z = 3\n")
    (pkg / "e.py").write_text("import reflectevo.f\n")
    (pkg / "f.py").write_text("")
    edges = graph(tmp_path)
    assert imports_of(pkg / "sub" / "one.py", modules(tmp_path), "reflectevo.sub") == {"reflectevo", "reflectevo.sub",
                                                                                      "reflectevo.sub.two"}
    assert sorted(cycles(edges)) == [["reflectevo.a", "reflectevo.b"], ["reflectevo.c", "reflectevo.d"],
                                     ["reflectevo.sub", "reflectevo.sub.one", "reflectevo.sub.two"]]


def test_every_module_is_in_one_layer():
    for m in modules(ROOT):
        layer_of(m)
