"""The package's import graph: no cycles, and imports flow one way between stages
(docs/architecture.md). Built from the source with `ast`, so an import inside a function
counts as much as one at the top of a file."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tndsl"

# Each stage may import its own modules and those of lower rank, never higher ones.
RANK = {"lang": 0, "passes": 1, "codegen": 2, "render": 2, "verify": 3, "program": 4,
        "models": 5, "interp": 6, "parallel": 7, "cli": 8, "__main__": 8}


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module → the tndsl modules it imports (the longest module prefix of each name)."""
    files = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                # An import of a module's own package (its __init__) is not an edge.
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop(); on.discard(w); component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None   # None: the root package, the facade


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            s, t = stage(source), stage(target)
            if s is None or t is None or s == t:
                continue          # the root facade, or within one stage
            if RANK[t] > RANK[s]:
                bad.append(f"{source} (stage {s}) imports {target} (stage {t})")
    return bad


def test_every_module_belongs_to_a_known_stage():
    unknown = {stage(m) for m in modules()} - set(RANK) - {None}
    assert not unknown, f"give these folders a rank in RANK: {sorted(unknown)}"


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_imports_flow_from_the_front_end_to_the_back_ends():
    assert layering_violations(import_graph()) == []


def test_the_checker_finds_a_cycle_and_a_wrong_way_import(tmp_path):
    package = tmp_path / "tndsl"
    (package / "lang").mkdir(parents=True)
    (package / "render").mkdir()
    (package / "__init__.py").write_text("")
    (package / "lang" / "__init__.py").write_text("")
    (package / "render" / "__init__.py").write_text("")
    (package / "lang" / "ir.py").write_text("from tndsl.lang import check\n")
    (package / "lang" / "check.py").write_text(
        "def f():\n    from tndsl.lang.ir import Node\n    from tndsl.render import dot\n")
    (package / "render" / "dot.py").write_text("import math\n")
    graph = import_graph(package)
    assert cycles(graph) == [["tndsl.lang.check", "tndsl.lang.ir"]]
    assert layering_violations(graph) == [
        "tndsl.lang.check (stage lang) imports tndsl.render (stage render)",
        "tndsl.lang.check (stage lang) imports tndsl.render.dot (stage render)"]


def test_public_submodules_are_attributes_and_torch_waits():
    code = ("import sys, tndsl\n"
            "assert 'torch' not in sys.modules, 'import tndsl imported torch'\n"
            "tndsl.load('examples/mlp.tn')\n"
            "assert 'torch' not in sys.modules, 'loading a file imported torch'\n"
            "assert callable(tndsl.weights.load_hf) and tndsl.hooks.run_with_cache\n"
            "assert tndsl.families.from_pretrained and tndsl.slicing and tndsl.paths\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent)


@pytest.mark.parametrize("old, new", [("tndsl.hooks", "tndsl.interp.hooks"),
                                      ("tndsl.syntax.parser", "tndsl.lang.syntax.parser"),
                                      ("tndsl.families.tables", "tndsl.models.tables"),
                                      ("tndsl.weights", "tndsl.models")])
def test_old_import_paths_warn_and_give_the_same_module(old, new):
    code = ("import importlib, warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            f"    old = importlib.import_module({old!r})\n"
            f"assert old is importlib.import_module({new!r})\n"
            "assert any(w.category is DeprecationWarning and 'moved' in str(w.message)\n"
            "           for w in caught), caught\n"
            f"assert old.__spec__.name == {new!r}\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent)
