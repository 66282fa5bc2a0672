"""Attention fusion: `scores = c · q·k`, `pattern = softmax[s](scores where s <= p)` (or
unmasked), `z = pattern · v` become one `F.scaled_dot_product_attention` call.

A pure function of a scope's planned items: the three equations are replaced by one
`FusedAttention` at the position of `z`, which keeps them for the explicit path that
code generation takes at run time when a hook asks for the scores or the pattern.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from tndsl import ir
from tndsl.passes.fusion import uses


@dataclass(frozen=True)
class FusedAttention:
    scores: ir.Equation
    pattern: ir.Equation
    out: ir.Equation
    query: str                  # the names of q, k, v
    key: str
    value: str
    # The role of each leg of q, k, v and the output, in their stored order: "p" (query
    # position), "s" (key position), "e" (q·k feature), "f" (value feature) or a head
    # leg "h0", "h1", ... in the scores' order.
    query_roles: tuple[str, ...]
    key_roles: tuple[str, ...]
    value_roles: tuple[str, ...]
    out_roles: tuple[str, ...]
    heads: tuple[str, ...]      # "h0", ...
    scale: sympy.Expr
    causal: bool

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value)


def fuse_attention(items: tuple, keep: frozenset[str], values: frozenset[str]) -> tuple:
    """`keep`: names that must be materialised (outputs); `values`: names that may be
    q, k or v (computed activations, not params or one-hot ids)."""
    equations = {item.name: item for item in items if isinstance(item, ir.Equation)}
    counts = uses(items)
    fused: dict[str, FusedAttention] = {}
    for pattern in equations.values():
        match = _match(pattern, equations, counts, keep, values)
        if match is not None:
            fused[match.out.name] = match
    if not fused:
        return items
    dropped = {n for f in fused.values() for n in (f.scores.name, f.pattern.name)}
    result = []
    for item in items:
        name = getattr(item, "name", None)
        if name in dropped:
            continue
        result.append(fused.get(name, item) if isinstance(item, ir.Equation) else item)
    return tuple(result)


def _single(expr: ir.Sum):
    """The one unscaled factor of a one-term sum, else None."""
    if len(expr.terms) == 1 and expr.terms[0].coefficient == 1 and \
            len(expr.terms[0].factors) == 1:
        return expr.terms[0].factors[0]
    return None


def _match(pattern: ir.Equation, equations, counts, keep, values) -> FusedAttention | None:
    box = _single(pattern.rhs)
    if not (isinstance(box, ir.Box) and box.function == "softmax" and len(box.legs) == 1):
        return None
    inner, condition = _single(box.argument), None
    if isinstance(inner, ir.Mask):
        if len(inner.conditions) != 1:
            return None
        condition, inner = inner.conditions[0], _single(inner.argument)
    if not (isinstance(inner, ir.Ref) and inner.name in equations):
        return None
    scores = equations[inner.name]
    if tuple(inner.indices) != tuple(pattern.indices) or len(set(pattern.indices)) != \
            len(pattern.indices):
        return None  # the pattern must keep the scores' layout
    # Users: scores only by the pattern, the pattern only by one equation.
    if counts.get(scores.name) != 1 or counts.get(pattern.name) != 1 or \
            scores.name in keep or pattern.name in keep:
        return None
    outs = [eq for eq in equations.values()
            if any(r.name == pattern.name for r in ir.refs(eq.rhs))]
    if len(outs) != 1:
        return None
    out = outs[0]
    # scores[...] = c * A[...] * B[...]: one term, two refs.
    if len(scores.rhs.terms) != 1:
        return None
    term = scores.rhs.terms[0]
    if len(term.factors) != 2 or not all(isinstance(f, ir.Ref) for f in term.factors):
        return None
    a, b = term.factors
    if a.name not in values or b.name not in values or len(set(a.indices)) != len(a.indices) \
            or len(set(b.indices)) != len(b.indices):
        return None
    lhs = list(scores.indices)
    shared = set(a.indices) & set(b.indices)
    heads = [i for i in lhs if i in shared]
    features = shared - set(lhs)
    only_a, only_b = set(a.indices) - shared, set(b.indices) - shared
    if len(features) != 1 or len(only_a) != 1 or len(only_b) != 1 or \
            set(lhs) != set(heads) | only_a | only_b or len(lhs) != len(set(lhs)):
        return None
    # Which side is the query: the one whose position is not the softmax leg.
    soft = scores.indices[list(pattern.indices).index(box.legs[0])]
    if soft in only_b:
        query, key, p, s = a, b, only_a.pop(), only_b.pop()
    elif soft in only_a:
        query, key, p, s = b, a, only_b.pop(), only_a.pop()
    else:
        return None
    dims = {leg.name: leg.dim for leg in scores.index_dims or ()}
    to_scores = dict(zip(pattern.indices, scores.indices))
    causal = False
    if condition is not None:
        if condition.offset != 0:  # a window, not the causal mask SDPA knows
            return None
        left, right = to_scores.get(condition.left), to_scores.get(condition.right)
        if not ((condition.op == "<=" and (left, right) == (s, p)) or
                (condition.op == ">=" and (left, right) == (p, s))):
            return None
        if dims.get(p) != dims.get(s):
            return None
        causal = True
    (e,) = features
    roles = {p: "p", s: "s", e: "e", **{h: f"h{k}" for k, h in enumerate(heads)}}
    # out[...] = pattern[...] * v[...]
    if len(out.rhs.terms) != 1 or out.rhs.terms[0].coefficient != 1:
        return None
    factors = out.rhs.terms[0].factors
    if len(factors) != 2 or not all(isinstance(f, ir.Ref) for f in factors):
        return None
    pref, vref = (factors if factors[0].name == pattern.name else factors[::-1])
    if pref.name != pattern.name or vref.name not in values or vref.name == pattern.name:
        return None
    if len(set(vref.indices)) != len(vref.indices) or len(set(pref.indices)) != len(pref.indices) \
            or len(set(out.indices)) != len(out.indices):
        return None
    # Names in `out` -> roles, through the pattern's legs (which are the scores' legs).
    out_roles = {n: roles[scores.indices[k]] for k, n in enumerate(pref.indices)}
    extra = [i for i in vref.indices if i not in out_roles]
    if len(extra) != 1:
        return None  # v has exactly one leg the pattern lacks: its feature
    out_roles[extra[0]] = "f"
    value_roles = tuple(out_roles[i] for i in vref.indices)
    if sorted(value_roles) != sorted(["s", "f", *(f"h{k}" for k in range(len(heads)))]):
        return None
    result_roles = tuple(out_roles.get(i, "?") for i in out.indices)
    if sorted(result_roles) != sorted(["p", "f", *(f"h{k}" for k in range(len(heads)))]):
        return None
    return FusedAttention(scores, pattern, out, query.name, key.name, vref.name,
                          tuple(roles[i] for i in query.indices),
                          tuple(roles[i] for i in key.indices), value_roles, result_roles,
                          tuple(f"h{k}" for k in range(len(heads))), term.coefficient, causal)
