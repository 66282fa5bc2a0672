"""Liveness: drop every intermediate right after its last use.

Python keeps a local alive until the function returns, so a forward pass written as a
straight line holds every intermediate at once; with `del` after the last use, peak
memory follows the live set. A pure function of the planned code (a function body's
lines): a hook or cache that keeps a value holds its own reference, so deleting the
local never loses a value anyone asked for. Nothing is dropped in the function's tail
(the return, and the value passed through its hook point just before): returning drops
it as soon.
"""
from __future__ import annotations

import ast
from typing import Iterable, Sequence


def insert_deletes(lines: Sequence[str], candidates: Iterable[str]) -> list[str]:
    """`lines`: a function body at indentation 0. `candidates`: the locals that may be
    dropped (intermediates, not params or sizes). Returns the body with `del` lines."""
    tree = ast.parse("\n".join(lines))
    # after line -> indent -> names. A branch's last line can also end its `if`: the
    # branch's own `del` (deeper) must come before the one after the `if`.
    inserts: dict[int, dict[str, list[str]]] = {}
    _block(tree.body, set(candidates), lines, inserts, _tail(tree.body))
    result = []
    for number, line in enumerate(lines, start=1):
        result.append(line)
        for indent, names in sorted(inserts.get(number, {}).items(),
                                    key=lambda item: -len(item[0])):
            result.append(f"{indent}del {', '.join(names)}")
    return result


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _tail(body: list[ast.stmt]) -> int:
    """Where the function's tail starts: its last statements that are the `return` and
    pass-throughs `v = f(v)` (a hook point)."""
    start = len(body)
    while start and (isinstance(body[start - 1], ast.Return) or _pass_through(body[start - 1])):
        start -= 1
    return start


def _pass_through(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.Call)
            and len(stmt.value.args) == 1 and not stmt.value.keywords
            and isinstance(stmt.value.args[0], ast.Name)
            and stmt.value.args[0].id == stmt.targets[0].id)


def _block(body: list[ast.stmt], candidates: set[str], lines, inserts,
           tail: int | None = None) -> None:
    """`tail`: in the function's own body, where its tail starts (no `del` from the
    statement before it on)."""
    used = [_names(stmt) for stmt in body]
    last: dict[str, int] = {}
    for k, names in enumerate(used):
        for name in names & candidates:
            last[name] = k
    for name, k in sorted(last.items()):
        stmt = body[k]
        if isinstance(stmt, ast.Return) or (tail is not None and k >= tail - 1):
            continue
        if isinstance(stmt, ast.If) and sum(name in u for u in used) == 1 and \
                name not in _names(stmt.test):
            continue  # only inside this `if`: dropped within its branch below
        indent = lines[stmt.lineno - 1][:stmt.col_offset]
        inserts.setdefault(stmt.end_lineno, {}).setdefault(indent, []).append(name)
    for k, stmt in enumerate(body):
        if isinstance(stmt, ast.If):
            # Names used nowhere else are local to the branches.
            others = set().union(*(u for j, u in enumerate(used) if j != k)) | _names(stmt.test)
            local = (used[k] & candidates) - others
            for branch in (stmt.body, stmt.orelse):
                if branch:
                    _block(branch, local, lines, inserts)
