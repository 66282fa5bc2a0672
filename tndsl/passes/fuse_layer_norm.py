"""Norm fusion: `n = layernorm[m](x)`, `y = n * w + b * ones` become one
`F.layer_norm(x, shape, w, b)` (`rmsnorm` likewise, with `F.rms_norm`).

A pure function of a scope's planned items: the two equations are replaced by one
`FusedNorm` at the position of `y`, which keeps them for the explicit path that code
generation takes at run time when a hook asks for the normalised value.
"""
from __future__ import annotations

from dataclasses import dataclass

from tndsl import ir
from tndsl.passes.fusion import uses


@dataclass(frozen=True)
class FusedNorm:
    normalized: ir.Equation
    out: ir.Equation
    function: str          # "layernorm" | "rmsnorm"
    argument: str          # x, laid out as `normalized` (its normalised legs last)
    legs: int              # how many trailing legs are normalised
    weight: str
    bias: str | None
    eps: float | None = None  # the box's own epsilon, if it gives one

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.argument, self.weight) + ((self.bias,) if self.bias else ())


def fuse_layer_norm(items: tuple, keep: frozenset[str], values: frozenset[str],
                    params: frozenset[str]) -> tuple:
    equations = {item.name: item for item in items if isinstance(item, ir.Equation)}
    counts = uses(items)
    fused: dict[str, FusedNorm] = {}
    for eq in equations.values():
        match = _match(eq, equations, counts, keep, values, params)
        if match is not None:
            fused[match.out.name] = match
    if not fused:
        return items
    dropped = {f.normalized.name for f in fused.values()}
    return tuple(fused.get(getattr(item, "name", None), item)
                 if isinstance(item, ir.Equation) else item
                 for item in items if getattr(item, "name", None) not in dropped)


def _match(normalized, equations, counts, keep, values, params) -> FusedNorm | None:
    rhs = normalized.rhs
    if len(rhs.terms) != 1 or rhs.terms[0].coefficient != 1 or len(rhs.terms[0].factors) != 1:
        return None
    box = rhs.terms[0].factors[0]
    if not (isinstance(box, ir.Box) and box.function in ("layernorm", "rmsnorm")):
        return None
    arg = box.argument
    if len(arg.terms) != 1 or arg.terms[0].coefficient != 1 or len(arg.terms[0].factors) != 1:
        return None
    x = arg.terms[0].factors[0]
    layout = tuple(normalized.indices)
    k = len(box.legs)
    if not (isinstance(x, ir.Ref) and x.name in values and tuple(x.indices) == layout
            and len(set(layout)) == len(layout) and layout[len(layout) - k:] == tuple(box.legs)):
        return None
    if counts.get(normalized.name) != 1 or normalized.name in keep:
        return None
    outs = [eq for eq in equations.values()
            if any(r.name == normalized.name for r in ir.refs(eq.rhs))]
    if len(outs) != 1:
        return None
    out = outs[0]
    if len(set(out.indices)) != len(out.indices):
        return None
    trailing = tuple(out.indices[len(out.indices) - k:])
    leading = set(out.indices[:len(out.indices) - k])
    weight = bias = None
    for term in out.rhs.terms:
        if term.coefficient != 1 or not all(isinstance(f, ir.Ref) for f in term.factors):
            return None
        names = [f.name for f in term.factors]
        if normalized.name in names and weight is None and len(term.factors) == 2:
            n, w = term.factors if names[0] == normalized.name else term.factors[::-1]
            if tuple(n.indices) != tuple(out.indices) or w.name not in params or \
                    tuple(w.indices) != trailing:
                return None
            weight = w.name
        elif normalized.name not in names and bias is None:
            b = [f for f in term.factors if f.name != ir.ONES]
            ones = {i for f in term.factors if f.name == ir.ONES for i in f.indices}
            if len(b) != 1 or b[0].name not in params or tuple(b[0].indices) != trailing or \
                    ones != leading:
                return None
            bias = b[0].name
        else:
            return None
    if weight is None:
        return None
    return FusedNorm(normalized, out, box.function, x.name, k, weight, bias, box.eps)
