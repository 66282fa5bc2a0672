"""Scalars of the surface syntax that are not tensor coefficients: `const` values, the
options of boxes (an eps), the arguments of fixed tensors, and the affine mask
conditions (`p - s < Window`). Elaboration calls in here; all of it is pure.

A scalar is built from numbers, dims (their sizes), consts, loop variables, `sqrt`, and
`+ - * /`. In a mask condition, every other simple name is an index.
"""
from __future__ import annotations

from typing import Mapping

import sympy

from tndsl.lang import dims as dimmod, ir
from tndsl.lang.errors import LegError, SizeError, Span, TnError, UnknownNameError, did_you_mean
from tndsl.lang.syntax import ast


# A scalar is a few numbers and names (`Model / Heads`, `p - s + 1`): deeper nesting is
# refused before the recursive evaluation below could overflow Python's stack.
MAX_SCALAR_DEPTH = 64


def _check_depth(e: ast.Expr, what: str) -> None:
    stack = [(e, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCALAR_DEPTH:
            raise SizeError(f"{what} is nested more than {MAX_SCALAR_DEPTH} operations deep",
                            e.span, hint="a scalar is a short expression of numbers, dims "
                                         "and consts")
        if isinstance(node, ast.Binary):
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, ast.Negate):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Call):
            stack += [(a, depth + 1) for a in node.arguments]


class Scalars:
    """Evaluates scalar expressions given the dims, their sizes, consts and loop values."""

    def __init__(self, dims: Mapping[str, ir.Dim], sizes: Mapping[str, int | None],
                 consts: Mapping[str, sympy.Expr]):
        self.dims, self.sizes, self.consts = dims, sizes, consts

    def value(self, e: ast.Expr, env: Mapping[str, int], what: str) -> sympy.Expr:
        """An exact number: sizes are substituted; a dim without a size is an error."""
        _check_depth(e, what)
        value = dimmod.evaluate(self.expr(e, env, what), self.sizes)
        if value.free_symbols:
            names = ", ".join(sorted(s.name for s in value.free_symbols))
            raise SizeError(f"{what} needs the size of {names}", e.span,
                            hint="give it one when loading: dims={...}")
        if not value.is_real:
            raise SizeError(f"{what} is {value}, not a real number", e.span)
        return value

    def real(self, e: ast.Expr, env: Mapping[str, int], what: str) -> float:
        return float(self.value(e, env, what))

    def expr(self, e: ast.Expr, env: Mapping[str, int], what: str) -> sympy.Expr:
        if isinstance(e, ast.Number):
            return sympy.Rational(e.text)
        if isinstance(e, ast.BareName) and e.path.is_simple:
            name = str(e.path)
            if name in env:
                return sympy.Integer(env[name])
            if name in self.consts:
                return self.consts[name]
            if name in self.dims:
                return dimmod.symbol(name)
            raise UnknownNameError(f"unknown dim or const `{name}` in {what}", e.span,
                                   hint=did_you_mean(name, list(self.dims) + list(self.consts)))
        if isinstance(e, ast.Binary):
            left, right = self.expr(e.left, env, what), self.expr(e.right, env, what)
            if e.op in "/%" and right == 0:
                raise TnError("division by zero", e.right.span)
            if e.op == "%":
                return sympy.Mod(left, right)
            return {"+": left + right, "-": left - right, "*": left * right,
                    "/": left / right if e.op == "/" else None}[e.op]
        if isinstance(e, ast.Negate):
            return -self.expr(e.operand, env, what)
        if isinstance(e, ast.Call) and str(e.function) == "sqrt" and len(e.arguments) == 1 \
                and e.instance is None and e.rename is None:
            return sympy.sqrt(self.expr(e.arguments[0], env, what))
        raise SizeError(f"{what} is a number: numbers, dims, consts, `sqrt` and + - * / %",
                        e.span)

    # ---- mask conditions -------------------------------------------------------------
    def condition(self, c: ast.Comparison, env: Mapping[str, int]) -> ir.Condition:
        """`p - s < Window` → Condition(p, <, s, offset=Window): two position legs, each
        with coefficient ±1 on opposite sides once moved to the left."""
        _check_depth(c.left, "a mask condition")
        _check_depth(c.right, "a mask condition")
        left_coeffs, left_const = self._affine(c.left, env)
        right_coeffs, right_const = self._affine(c.right, env)
        coeffs = dict(left_coeffs)
        for index, k in right_coeffs.items():
            coeffs[index] = coeffs.get(index, 0) - k
        coeffs = {i: k for i, k in coeffs.items() if k != 0}
        constant = sympy.expand(left_const - right_const)
        plus = [i for i, k in coeffs.items() if k == 1]
        minus = [i for i, k in coeffs.items() if k == -1]
        if len(coeffs) != 2 or len(plus) != 1 or len(minus) != 1:
            raise LegError("a mask condition compares the positions of two legs: each leg "
                           "once, on opposite sides (`s <= p`, `p - s < Window`)", c.span)
        # plus - minus + constant (op) 0  ⇔  plus (op) minus - constant
        return ir.Condition(plus[0], c.op, minus[0], -constant)

    def _affine(self, e: ast.Expr, env) -> tuple[dict[str, int], sympy.Expr]:
        if isinstance(e, ast.BareName) and e.path.is_simple:
            name = str(e.path)
            if name not in env and name not in self.consts and name not in self.dims:
                return {name: 1}, sympy.Integer(0)
        if isinstance(e, ast.Binary) and e.op in "+-":
            lc, lk = self._affine(e.left, env)
            rc, rk = self._affine(e.right, env)
            sign = 1 if e.op == "+" else -1
            for index, k in rc.items():
                lc[index] = lc.get(index, 0) + sign * k
            return lc, lk + sign * rk
        if isinstance(e, ast.Negate):
            coeffs, constant = self._affine(e.operand, env)
            return {i: -k for i, k in coeffs.items()}, -constant
        value = self.expr(e, env, "a mask offset")
        if not (value.is_integer or value.free_symbols):
            raise SizeError(f"a mask offset is a whole number, not {value}", e.span)
        return {}, value
