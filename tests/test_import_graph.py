"""No import cycles between our modules, counting imports inside functions.

import-linter's contracts (pyproject ``[tool.importlinter]``, run by ``.ci/run``) say which
package may import which; this says no module reaches itself again through any chain of imports,
lazy ones included: a lazy import is for start-up speed, never to hide a cycle. Read with ``ast``
(nothing is imported), so it also sees imports in functions that no test calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "cockpit")


def module_names(root: Path, packages=PACKAGES) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str, is_pkg: bool, known: dict) -> set[str]:
    """The modules of ours that this module's code imports, wherever the import statement is."""
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from engine import x` imports the module engine.x when there is one.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            # `import engine.x.y` runs engine.x.y; the nearest module of ours that the name names
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    known = module_names(root, packages)
    return {
        m: _imported(ast.parse(f.read_text(), str(f)), m, f.name == "__init__.py", known)
        for m, f in known.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    scc = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        scc.append(w)
                        if w == v:
                            break
                    if len(scc) > 1:
                        found.append(sorted(scc))
    return found


def cycle_path(graph: dict[str, set[str]], scc: list[str]) -> list[str]:
    """One concrete loop through a component, for the message: a -> b -> ... -> a."""
    members = set(scc)
    start = scc[0]
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return scc


def test_no_import_cycles_between_our_modules():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the code
    found = cycles(graph)
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(
        " -> ".join(cycle_path(graph, scc)) for scc in found
    )


def test_the_cycle_finder_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "engine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from engine.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from engine import c\n    return c.h()\n")
    (pkg / "c.py").write_text("import os\n\ndef h():\n    import engine.a\n    return engine.a\n")
    (pkg / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine.a import f\nfrom . import c\n"
    )
    graph = import_graph(tmp_path, ("engine",))
    assert graph["engine.d"] == {"engine.c"}  # the relative import counts; TYPE_CHECKING does not
    assert cycles(graph) == [["engine.a", "engine.b", "engine.c"]]
    assert cycle_path(graph, ["engine.a", "engine.b", "engine.c"]) == [
        "engine.a",
        "engine.b",
        "engine.c",
        "engine.a",
    ]


def test_the_config_knows_every_checklist_rule_by_name():
    from engine.config.rule_names import RULE_NAMES
    from engine.evaluate.checklist_rules import RULES

    assert tuple(RULES) == RULE_NAMES
