"""Parenthesising generated Python where operator precedence would change its meaning.

Code generation composes expressions as text: a coefficient is written in front of an
operand (`2.0 * x`), a one-hot lookup is written after one (`W_E[tokens]`). An operand
is not always a name: a bracketed sum is `a + b`, a symbolic coefficient is `N + 1`,
and pasting those next to `*` or `[...]` silently regroups them
(`2.0 * a + b`). These functions look at the parsed expression, not at the text, and
add brackets only where the grouping would otherwise change, so readable code stays as
it was.
"""
from __future__ import annotations

import ast

# Nodes that bind at least as tightly as a subscript or attribute access.
_PRIMARY = (ast.Name, ast.Constant, ast.Call, ast.Attribute, ast.Subscript, ast.List,
            ast.Tuple, ast.Dict, ast.Set)
_MULTIPLICATIVE = (ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.MatMult)


def _top(code: str) -> ast.expr:
    return ast.parse(code.strip(), mode="eval").body


def _wrap(code: str) -> str:
    return code if _bracketed(code) else f"({code})"


def _bracketed(code: str) -> bool:
    """Whether `code` is one bracketed expression already: `(a * b)`, not `(a) * (b)`."""
    if not (code.startswith("(") and code.endswith(")")):
        return False
    depth = 0
    for k, char in enumerate(code):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return k == len(code) - 1
    return False


def as_primary(code: str) -> str:
    """`code`, bracketed unless it can be followed by `[...]` or `.name` as it is."""
    node = _top(code)
    if isinstance(node, _PRIMARY) and not (isinstance(node, ast.Constant) and
                                           isinstance(node.value, (int, float))):
        return code
    return _wrap(code)


def _unary(node: ast.expr) -> bool:
    return isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not)


def as_left_factor(code: str) -> str:
    """`code`, bracketed unless `code * y` multiplies all of it by y (`*` is left
    associative, so another product or a unary minus may stay bare)."""
    node = _top(code)
    if isinstance(node, _PRIMARY) or _unary(node) or (
            isinstance(node, ast.BinOp) and isinstance(node.op, (*_MULTIPLICATIVE, ast.Pow))):
        return code
    return _wrap(code)


def as_right_factor(code: str) -> str:
    """`code`, bracketed unless `x * code` multiplies x by all of it."""
    node = _top(code)
    if isinstance(node, _PRIMARY) or _unary(node) or (
            isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)):
        return code
    return _wrap(code)
