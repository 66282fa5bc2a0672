"""Symbolic dimension sizes.

A dim is a sympy symbol; a declared size is an expression in other dims. Sizes are
resolved once (declared sizes, overridden by the caller's) into plain integers, or
None where a dim is left symbolic. Shapes and parameter counts stay sympy expressions
until sizes are substituted.
"""
from __future__ import annotations

from typing import Mapping

import sympy

from tndsl import ir
from tndsl.errors import CycleError, ErrorSink, SizeError, UnknownNameError, did_you_mean


def symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, positive=True, integer=True)


def resolve_sizes(dims: Mapping[str, ir.Dim], overrides: Mapping[str, int] | None = None
                  ) -> dict[str, int | None]:
    """Every dim's integer size, or None where it has none; errors are raised together."""
    overrides = dict(overrides or {})
    errors = ErrorSink()
    for name, value in overrides.items():
        if name not in dims:
            errors.add(UnknownNameError(f"size given for unknown dim `{name}`",
                                        hint=did_you_mean(name, dims)))
        elif dims[name].size is not None and dims[name].size.free_symbols:
            errors.add(SizeError(f"dim `{name}` is derived ({_show(dims[name])}); set the dims "
                                 "it is made of instead", dims[name].span))
        elif not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            errors.add(SizeError(f"size given for `{name}` must be a positive integer, "
                                 f"not {value!r}", dims[name].span))
    errors.raise_if_any()

    sizes: dict[str, int | None] = {}
    visiting: list[str] = []

    def size_of(name: str) -> int | None:
        if name in sizes:
            return sizes[name]
        dim = dims[name]
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise CycleError("dims defined in terms of each other: " + " → ".join(cycle),
                             dim.span)
        if name in overrides:
            sizes[name] = overrides[name]
            return sizes[name]
        if dim.size is None:
            sizes[name] = None
            return None
        visiting.append(name)
        try:
            values = {s: size_of(s.name) for s in dim.size.free_symbols}
        finally:
            visiting.pop()
        if any(v is None for v in values.values()):
            sizes[name] = None
            return None
        value = dim.size.subs(values)
        if not (value.is_integer and value.is_positive):
            raise SizeError(f"dim `{name}` = {_show(dim)} is {value}, not a positive integer",
                            dim.span)
        sizes[name] = int(value)
        return sizes[name]

    for name in dims:
        try:
            size_of(name)
        except (SizeError, CycleError) as e:
            errors.add(e)
            sizes.setdefault(name, None)
    errors.raise_if_any()
    return sizes


def _show(dim: ir.Dim) -> str:
    return str(dim.size)


def shape(tensor: ir.Tensor) -> tuple[sympy.Symbol, ...]:
    return tuple(symbol(leg.dim) for leg in tensor.legs)


def numel(tensor: ir.Tensor) -> sympy.Expr:
    return sympy.Mul(*shape(tensor))


def evaluate(expr: sympy.Expr, sizes: Mapping[str, int | None]) -> sympy.Expr:
    """Substitute the known sizes; the result is a number when all are known."""
    return expr.subs({symbol(n): v for n, v in sizes.items() if v is not None})

