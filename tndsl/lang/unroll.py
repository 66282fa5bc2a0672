"""How many statements elaboration would produce, counted before it does any work.

Loops multiply (`for a in 0..1000 { for b in 0..1000 { ... } }` is 10⁶ statements),
a block call adds its block's statements once per call (so blocks calling blocks twice
each, 64 deep, would be 2⁶⁴), and a loop's bounds may be an enclosing loop's variable.
The count is exact (an `if` counts its larger branch: an upper bound) and cheap: a loop whose body does not depend on its variable
multiplies, one whose inner bounds do (`for b in 0..a`) is summed run by run, and each
block's count is computed once; counting stops as soon as the limit is passed (each
run adds a statement, so it never does more than `limit` steps). Elaboration refuses
the program at the top-level statement that pushes the total over the limit, before
unrolling anything.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from tndsl.lang.errors import ResourceError
from tndsl.lang.printer import format_count
from tndsl.lang.syntax import ast

# A bound is an INT (ast.Number) or a NAME (ast.Ident): a dim or a loop variable.
BoundValue = Callable[[object], "int | None"]


class _Counter:
    def __init__(self, blocks: Mapping[str, ast.BlockDef], dim_size: BoundValue, limit: int):
        self.blocks = blocks
        self.dim_size = dim_size
        self.limit = limit
        self.block_counts: dict[str, int] = {}
        self.open_blocks: set[str] = set()
        self.stopped = False  # counting stopped early: the count is a lower bound

    def statements(self, stmts: Sequence, loops: dict[str, int]) -> int:
        total = 0
        for k, stmt in enumerate(stmts):
            total += self.statement(stmt, loops)
            if total > self.limit and k + 1 < len(stmts):
                self.stopped = True
                break  # over already: the exact excess does not matter
        return total

    def statement(self, stmt, loops: dict[str, int]) -> int:
        if isinstance(stmt, ast.ForLoop):
            start, stop = self._bound(stmt.start, loops), self._bound(stmt.stop, loops)
            if start is None or stop is None or stop <= start:
                return 1  # elaboration reports a bad bound; an empty loop unrolls nothing
            var = stmt.var.name
            if not _bounds_use(stmt.body, var):
                return 1 + (stop - start) * self.statements(stmt.body, loops)
            # Inner bounds depend on this variable (`for b in 0..a`): count each run.
            # Every run adds at least one statement, so this stops within `limit` runs.
            total = 1
            for value in range(start, stop):
                total += self.statements(stmt.body, {**loops, var: value})
                if total > self.limit and value + 1 < stop:
                    self.stopped = True
                    break
            return total
        if isinstance(stmt, ast.IfStmt):
            # Either branch may be taken (the condition is decided later, with consts):
            # the larger one counts, so the count is an upper bound here.
            return 1 + max(self.statements(stmt.body, loops),
                           self.statements(stmt.orelse, loops))
        if isinstance(stmt, (ast.DimDecl, ast.BlockDef)):
            return 1
        calls = 0
        for value in _expressions(stmt):
            calls += self._calls(value)
        return 1 + calls

    def _bound(self, bound, loops) -> int | None:
        if isinstance(bound, ast.Number):
            return int(bound.text)
        if bound.name in loops:
            return loops[bound.name]
        return self.dim_size(bound.name)

    def _calls(self, expr) -> int:
        """Statements added by the block calls inside an expression (iteratively: a sum
        of ten thousand terms is one deep tree)."""
        total, stack = 0, [expr]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Call):
                name = node.function.segments[0] if node.function.is_simple else None
                if name in self.blocks:
                    total += self.block(name)
                stack.extend(node.arguments)
            elif isinstance(node, ast.Binary):
                stack += [node.left, node.right]
            elif isinstance(node, ast.Negate):
                stack.append(node.operand)
            elif isinstance(node, (ast.Where, ast.LegBox)):
                stack.append(node.argument)
        return total

    def block(self, name: str) -> int:
        if name in self.block_counts:
            return self.block_counts[name]
        if name in self.open_blocks:
            return 0  # a block that instantiates itself: elaboration reports it
        self.open_blocks.add(name)
        try:
            count = self.statements(self.blocks[name].body, {})
        finally:
            self.open_blocks.discard(name)
        self.block_counts[name] = count
        return count


def _bounds_use(stmts: Sequence, var: str) -> bool:
    """Whether a loop nested in `stmts` has `var` as a bound."""
    stack = list(stmts)
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, ast.ForLoop):
            if any(isinstance(b, ast.Ident) and b.name == var for b in (stmt.start, stmt.stop)):
                return True
            stack.extend(stmt.body)
        elif isinstance(stmt, ast.IfStmt):
            stack.extend(stmt.body + stmt.orelse)
    return False


def _expressions(stmt) -> list:
    if isinstance(stmt, ast.Equation):
        return [stmt.rhs]
    if isinstance(stmt, ast.Return):
        return [stmt.value]
    if isinstance(stmt, ast.Check):
        return [stmt.lhs, stmt.rhs]
    return []


def check_unrolled_size(statements: Sequence, blocks: Mapping[str, ast.BlockDef],
                        dim_size: BoundValue, limit: int) -> None:
    """Raise ResourceError, located at the top-level statement that crosses `limit`, if
    unrolling `statements` would produce more than `limit` statements."""
    counter = _Counter(blocks, dim_size, limit)
    total = 0
    for stmt in statements:
        count = counter.statement(stmt, {})
        total += count
        if total > limit:
            what = "loop unrolls" if isinstance(stmt, ast.ForLoop) else "statement expands"
            if counter.stopped:
                amount = f"more than {limit - (total - count):,} statements"
            elif total == count:
                amount = f"{format_count(count)} statements"
            else:
                amount = f"{format_count(count)} statements ({format_count(total)} in all)"
            raise ResourceError(f"this {what} to {amount}; at most {limit:,} statements "
                                "are unrolled in a program", stmt.span,
                                hint="check the loop bounds (nested loops multiply) and "
                                     "block calls inside loops")
