"""Norm fusion: `n = layernorm[m](x)`, `y = n * w + b * ones` become one
`F.layer_norm(x, shape, w, b)` (`rmsnorm` likewise, with `F.rms_norm`); so does the
one-equation form `y = layernorm[m](x) * w + b * ones` (Llama's, Pythia's norms), and
Gemma's `y = n + n * w`, which is `F.rms_norm(x, shape, 1 + w)`.

A pure function of a scope's planned items: the equations are replaced by one
`FusedNorm` at the position of `y`, which keeps them for the explicit path that code
generation takes at run time when a hook asks for the normalised value (the
one-equation form has no such value: `normalized` is None).
"""
from __future__ import annotations

from dataclasses import dataclass

from tndsl.lang import ir
from tndsl.passes.fusion import uses


@dataclass(frozen=True)
class FusedNorm:
    normalized: ir.Equation | None  # None: the norm is a factor of `out` itself
    out: ir.Equation
    function: str          # "layernorm" | "rmsnorm"
    argument: str          # x, laid out as `normalized` (its normalised legs last)
    legs: int              # how many trailing legs are normalised
    weight: str
    bias: str | None
    eps: float | None = None  # the box's own epsilon, if it gives one
    plus_one: bool = False    # the weight is applied as (1 + w) (Gemma)

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def equations(self) -> tuple[ir.Equation, ...]:
        return (self.out,) if self.normalized is None else (self.normalized, self.out)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.argument, self.weight) + ((self.bias,) if self.bias else ())


def fuse_layer_norm(items: tuple, keep: frozenset[str], values: frozenset[str],
                    params: frozenset[str]) -> tuple:
    equations = {item.name: item for item in items if isinstance(item, ir.Equation)}
    counts = uses(items)
    fused: dict[str, FusedNorm] = {}
    for eq in equations.values():
        match = _match(eq, equations, counts, keep, values, params) or \
            _match_one(eq, values, params)
        if match is not None and match.out.name not in fused:
            fused[match.out.name] = match
    if not fused:
        return items
    dropped = {f.normalized.name for f in fused.values() if f.normalized is not None}
    return tuple(fused.get(getattr(item, "name", None), item)
                 if isinstance(item, ir.Equation) else item
                 for item in items if getattr(item, "name", None) not in dropped)


def _match(normalized, equations, counts, keep, values, params) -> FusedNorm | None:
    rhs = normalized.rhs
    if len(rhs.terms) != 1 or rhs.terms[0].coefficient != 1 or len(rhs.terms[0].factors) != 1:
        return None
    box = rhs.terms[0].factors[0]
    x = _norm_box(box, tuple(normalized.indices), values)
    if x is None or normalized.name in keep:
        return None
    outs = [eq for eq in equations.values()
            if any(r.name == normalized.name for r in ir.refs(eq.rhs))]
    if len(outs) != 1:
        return None
    out = outs[0]
    # Read by `out` alone (twice in `n + n * w`).
    if counts.get(normalized.name) != sum(r.name == normalized.name for r in ir.refs(out.rhs)):
        return None
    affine = _affine(out, lambda f: isinstance(f, ir.Ref) and f.name == normalized.name
                     and tuple(f.indices) == tuple(out.indices), len(box.legs), params,
                     allow_plus_one=True)
    if affine is None:
        return None
    weight, bias, plus_one = affine
    return FusedNorm(normalized, out, box.function, x, len(box.legs), weight, bias, box.eps,
                     plus_one)


def _norm_box(box, layout: tuple[str, ...], values):
    """The argument's name if `box` is a layernorm/rmsnorm of one value laid out as
    `layout`, normalised over its trailing legs."""
    if not (isinstance(box, ir.Box) and box.function in ("layernorm", "rmsnorm")):
        return None
    arg = box.argument
    if len(arg.terms) != 1 or arg.terms[0].coefficient != 1 or len(arg.terms[0].factors) != 1:
        return None
    x = arg.terms[0].factors[0]
    k = len(box.legs)
    if not (isinstance(x, ir.Ref) and x.name in values and tuple(x.indices) == layout
            and len(set(layout)) == len(layout) and layout[len(layout) - k:] == tuple(box.legs)):
        return None
    return x.name


def _match_one(out, values, params) -> FusedNorm | None:
    """`y = norm[m](x) * w (+ b * ones)`: the norm a factor of the one equation."""
    if len(set(out.indices)) != len(out.indices):
        return None
    boxes = [f for term in out.rhs.terms for f in term.factors if isinstance(f, ir.Box)]
    if len(boxes) != 1:
        return None
    box = boxes[0]
    x = _norm_box(box, tuple(out.indices), values)
    if x is None:
        return None
    affine = _affine(out, lambda f: f is box, len(box.legs), params, allow_plus_one=False)
    if affine is None or affine[2]:
        return None
    return FusedNorm(None, out, box.function, x, len(box.legs), affine[0], affine[1],
                     box.eps)


def _affine(out, is_normalized, k: int, params, allow_plus_one: bool):
    """`(weight, bias, plus_one)` if `out` is `n * w + b * ones` (the bias optional;
    `n + n * w` when `allow_plus_one`), `n` the factor `is_normalized` picks and `w`,
    `b` params over the `k` trailing legs; else None."""
    if len(set(out.indices)) != len(out.indices):
        return None
    trailing = tuple(out.indices[len(out.indices) - k:])
    leading = set(out.indices[:len(out.indices) - k])
    weight = bias = None
    alone = 0  # terms that are `n` by itself
    for term in out.rhs.terms:
        if term.coefficient != 1:
            return None
        normalized = [f for f in term.factors if is_normalized(f)]
        others = [f for f in term.factors if not is_normalized(f)]
        if not all(isinstance(f, ir.Ref) for f in others):
            return None
        if len(normalized) == 1 and not others:
            alone += 1
        elif len(normalized) == 1 and len(others) == 1 and weight is None:
            w = others[0]
            if w.name not in params or tuple(w.indices) != trailing:
                return None
            weight = w.name
        elif not normalized and bias is None:
            b = [f for f in others if f.name != ir.ONES]
            ones = {i for f in others if f.name == ir.ONES for i in f.indices}
            if len(b) != 1 or b[0].name not in params or tuple(b[0].indices) != trailing or \
                    ones != leading:
                return None
            bias = b[0].name
        else:
            return None
    if weight is None or alone > 1 or (alone and not allow_plus_one):
        return None
    return weight, bias, bool(alone)
