"""Every coefficient must be a finite, nonzero-where-nonzero float64.

Coefficients stay exact (sympy) through elaboration and proofs, but a compiled model
and the numeric verifier compute in float64. Each literal is bounded by the parser; a
product of them (`1e300 * 1e300 * x[i]`), or a coefficient made of dim sizes, can still
leave float64's range, where it would silently become inf or 0 — and its text can run
past what Python will print. Such a term is a located error, found before anything
prints or compiles it.
"""
from __future__ import annotations

import sys
from typing import Mapping

import sympy

from tndsl.lang import dims as dimmod, ir
from tndsl.lang.errors import SizeError, Span, TnError

_MAX = int(sys.float_info.max)   # an integer: the comparison below stays exact
_HALF_TINY = 2 ** 1075            # |value| < 2**-1075 rounds to 0 (half the least subnormal)


# Exact products of literals stop here, far outside float64 but long before the exact
# arithmetic gets slow (a product of 3,000 literals 1e300 is 900,000 digits).
MAX_COEFFICIENT_BITS = 4096


def bounded_coefficient(value: sympy.Expr, span: Span | None) -> sympy.Expr:
    """`value`, or SizeError if it is a rational far outside float64's range (checked
    as elaboration multiplies, so a long product of literals stays cheap)."""
    if value.is_Rational and abs(int(value.p).bit_length() - int(value.q).bit_length()) \
            > MAX_COEFFICIENT_BITS:
        raise SizeError("this product's coefficient is far outside float64's range (beyond "
                        f"2^±{MAX_COEFFICIENT_BITS})", span,
                        hint="rescale the constants it multiplies")
    return value


def coefficient_problem(value: sympy.Expr) -> str | None:
    """Why `value` is not a usable float64, or None (also for a symbolic value)."""
    if value.free_symbols:
        return None
    if value.is_Rational:  # exact integer comparisons: no float, no text
        p, q = abs(int(value.p)), int(value.q)
        too_large, too_small = p > _MAX * q, p != 0 and p * _HALF_TINY < q
    else:  # sqrt(2) / 10**400: mpmath floats have unbounded exponents
        number = abs(sympy.N(value, 20))
        if not number.is_real:
            return None
        too_large = bool(number > _MAX)
        too_small = bool(number != 0 and number * _HALF_TINY < 1)
    if too_large:
        return "is not finite in float64 (its magnitude is above 1.8e308)"
    if too_small:
        return "rounds to 0 in float64 (its magnitude is below 4.9e-324)"
    return None


def coefficient_errors(network: ir.Network, sizes: Mapping[str, int | None]) -> list[TnError]:
    """A located error for each term, in equations and checks, whose coefficient at
    the file's sizes is out of float64's range."""
    errors: list[TnError] = []
    roots = [eq.rhs for eq in network.equations]
    roots += [side for check in network.checks for side in (check.lhs, check.rhs)]
    stack: list = list(roots)
    while stack:  # iteratively: a sum of ten thousand terms is one deep tree
        node = stack.pop()
        if isinstance(node, ir.Sum):
            stack.extend(node.terms)
        elif isinstance(node, ir.Term):
            value = dimmod.evaluate(node.coefficient, sizes) \
                if node.coefficient.free_symbols else node.coefficient
            problem = coefficient_problem(value)
            if problem is not None:
                errors.append(SizeError(f"this term's coefficient {problem}", node.span,
                                        hint="rescale the constants it multiplies"))
            stack.extend(node.factors)
        elif isinstance(node, (ir.Box, ir.Mask)):
            stack.append(node.argument)
    return errors
