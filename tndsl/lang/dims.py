"""Symbolic dimension sizes.

A dim is a sympy symbol; a declared size is an expression in other dims. Sizes are
resolved once (declared sizes, overridden by the caller's) into plain integers, or
None where a dim is left symbolic. Shapes and parameter counts stay sympy expressions
until sizes are substituted.
"""
from __future__ import annotations

from typing import Mapping

import sympy

from tndsl.lang import ir
from tndsl.lang.errors import CycleError, ErrorSink, SizeError, UnknownNameError, did_you_mean
from tndsl.lang.printer import format_count


# The largest size of one tensor dimension: torch indexes with int64, and a bound keeps
# every count made of sizes exact and printable (a product of dims written as literals
# could otherwise run to thousands of digits, past Python's int-to-text limit).
MAX_DIM_SIZE = 2**63 - 1


def _describe(value: sympy.Expr) -> str:
    """A size for a message, however large (no int-to-text beyond printer's limit)."""
    if value.is_Rational:
        p, q = int(value.p), int(value.q)
        return format_count(p) if q == 1 else f"{format_count(p)}/{format_count(q)}"
    return str(value)


def symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, positive=True, integer=True)


def resolve_sizes(dims: Mapping[str, ir.Dim], overrides: Mapping[str, int] | None = None,
                  errors: ErrorSink | None = None) -> dict[str, int | None]:
    """Every dim's integer size, or None where it has none.

    A size given for a derived dim is accepted when it equals what the dim is made of
    (`Head=16` with `Model=64, Heads=4`), and is an error naming both values otherwise.
    Errors are raised together; with `errors`, they are added to it instead and the
    sizes that could be resolved are still returned, so one bad dim does not leave every
    other dim (and every loop bound) without a size."""
    sink = errors if errors is not None else ErrorSink()
    overrides = dict(overrides or {})
    for name, value in list(overrides.items()):
        if name not in dims:
            sink.add(UnknownNameError(f"size given for unknown dim `{name}`",
                                      hint=did_you_mean(name, dims)))
            del overrides[name]
        elif not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            sink.add(SizeError(f"size given for `{name}` must be a positive integer, "
                               f"not {value!r}", dims[name].span,
                               hint=None if value is not None else
                               f"leave `{name}` out of the sizes to keep the file's own "
                               "(a program's `sizes` holds None for a dim without one)"))
            del overrides[name]
        elif value > MAX_DIM_SIZE:
            sink.add(SizeError(f"size given for `{name}` is {format_count(value)}, more than "
                               f"2^63 - 1, the largest size of a tensor dimension",
                               dims[name].span))
            del overrides[name]

    sizes: dict[str, int | None] = {}
    visiting: list[str] = []
    for name, dim in dims.items():
        # Checked before anything prints the expression (sympy would fail on it).
        if dim.size is not None and any(max(abs(int(r.p)), int(r.q)) > MAX_DIM_SIZE
                                        for r in dim.size.atoms(sympy.Rational)):
            sink.add(SizeError(f"dim `{name}` has a number beyond 2^63 - 1 in its size",
                               dim.span, hint="no tensor dimension can be that large"))
            sizes[name] = None

    def derived(dim: ir.Dim) -> bool:
        return dim.size is not None and bool(dim.size.free_symbols)

    def size_of(name: str) -> int | None:
        if name in sizes:
            return sizes[name]
        dim = dims[name]
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise CycleError("dims defined in terms of each other: " + " → ".join(cycle),
                             dim.span)
        if name in overrides and not derived(dim):
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
            # Its parts are unknown: a size given for it is taken as it is.
            sizes[name] = overrides.get(name)
            return sizes[name]
        value = dim.size.subs(values)
        written = f" = {dim.size}" if dim.size.free_symbols else ""
        if not (value.is_integer and value.is_positive):
            raise SizeError(f"dim `{name}`{written} is {_describe(value)}, not a positive "
                            "integer", dim.span)
        if value > MAX_DIM_SIZE:
            raise SizeError(f"dim `{name}`{written} is {_describe(value)}, more than 2^63 - 1, "
                            "the largest size of a tensor dimension", dim.span)
        sizes[name] = int(value)
        if name in overrides and overrides[name] != sizes[name]:
            raise SizeError(f"dim `{name}` = {dim.size} is {sizes[name]}, but "
                            f"{overrides[name]} was given for it", dim.span,
                            hint="set the dims it is made of instead, or give the same value")
        return sizes[name]

    for name in dims:
        try:
            size_of(name)
        except (SizeError, CycleError) as e:
            sink.add(e)
            sizes.setdefault(name, None)
    if errors is None:
        sink.raise_if_any()
    return sizes


def shape(tensor: ir.Tensor) -> tuple[sympy.Symbol, ...]:
    return tuple(symbol(leg.dim) for leg in tensor.legs)


def numel(tensor: ir.Tensor) -> sympy.Expr:
    return sympy.Mul(*shape(tensor))


def evaluate(expr: sympy.Expr, sizes: Mapping[str, int | None]) -> sympy.Expr:
    """Substitute the known sizes; the result is a number when all are known."""
    return expr.subs({symbol(n): v for n, v in sizes.items() if v is not None})


def small_sizes(dims: Mapping[str, ir.Dim], sizes: Mapping[str, int | None], *,
                keep_up_to: int = 12, largest: int = 24, budget: int = 50_000
                ) -> dict[str, int]:
    """Sizes for the base dims (those not derived) small enough to evaluate a model
    exactly, chosen so that every derived dim is still a positive integer.

    Dims already at most `keep_up_to` keep their size (so loop counts and head counts
    do not change); the others get small values, distinct where possible so that a
    transposed leg is not hidden by equal sizes. Raises SizeError if none are found."""
    base = [d.name for d in dims.values() if d.size is None or not d.size.free_symbols]
    fixed = {n: sizes[n] for n in base if sizes.get(n) is not None and sizes[n] <= keep_up_to}
    free = [n for n in base if n not in fixed]
    derived = [d for d in dims.values() if d.size is not None and d.size.free_symbols]
    tries = 0

    def consistent(chosen: dict[str, int]) -> bool:
        known = {symbol(n): v for n, v in chosen.items()}
        for dim in derived:
            if dim.size.free_symbols <= set(known):
                value = dim.size.subs(known)
                if not (value.is_integer and value.is_positive):
                    return False
        return True

    def search(k: int, chosen: dict[str, int]) -> dict[str, int] | None:
        nonlocal tries
        if k == len(free):
            return dict(chosen)
        used = set(chosen.values())
        values = list(range(3, largest + 1))
        start = (k * 3) % len(values)  # different dims start from different sizes
        values = values[start:] + values[:start]
        values.sort(key=lambda v: v in used)
        for value in values:
            tries += 1
            if tries > budget:
                return None
            chosen[free[k]] = value
            if consistent(chosen):
                found = search(k + 1, chosen)
                if found is not None:
                    return found
            del chosen[free[k]]
        return None

    found = search(0, dict(fixed))
    if found is None:
        raise SizeError("found no small sizes that keep every derived dim a positive integer",
                        hint="give small sizes explicitly with --dim NAME=SIZE")
    return {n: found[n] for n in free}
