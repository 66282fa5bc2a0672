"""Attention fusion: `scores = c · q·k`, `pattern = softmax[s](scores where s <= p)` (or
unmasked), `z = pattern · v` become one `F.scaled_dot_product_attention` call.

Also matched:
- grouped-query attention: the scores and `z` contract the key and value through a
  grouping tensor (`q[p, h, e] * group[h, g] * k[s, g, e]`, `tndsl.lang.fixed`), which SDPA
  applies itself (`enable_gqa`) instead of repeating the key and value per query head;
- a window clause `p - s < W` beside (or instead of) the causal one. One that holds for
  every allowed sequence length (W at least the position dim's size, its bound when the
  length varies) is dropped, so the plain causal kernel runs; another is kept as
  `window` (an integer known at compile time) for a masked SDPA call.

A pure function of a scope's planned items: the three equations are replaced by one
`FusedAttention` at the position of `z`, which keeps them for the explicit path that
code generation takes at run time when a hook asks for the scores or the pattern.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Mapping

import sympy

from tndsl.lang import dims as dimmod, ir
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
    # leg "h0", "h1", ... in the scores' order. A key/value head leg reached through the
    # grouping has the role of the query head it serves.
    query_roles: tuple[str, ...]
    key_roles: tuple[str, ...]
    value_roles: tuple[str, ...]
    out_roles: tuple[str, ...]
    heads: tuple[str, ...]      # "h0", ...; a grouped head last (SDPA groups dim -3)
    scale: sympy.Expr
    causal: bool
    window: int | None = None   # keep keys with p - s < window (None: no such clause)
    grouping: str | None = None  # the grouping tensor between query and key/value heads

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value)


def fuse_attention(items: tuple, keep: frozenset[str], values: frozenset[str],
                   groupings: frozenset[str] = frozenset(),
                   sizes: Mapping[str, int | None] | None = None,
                   varying: frozenset[str] = frozenset()) -> tuple:
    """`keep`: names that must be materialised (outputs); `values`: names that may be
    q, k or v (computed activations, not params or one-hot ids); `groupings`: the names
    of grouping tensors (grouped-query attention); `sizes`: the dims' sizes (a position
    dim's size bounds its run-time length), without which no window clause fuses;
    `varying`: the sized dims whose length is read at run time (at most the size)."""
    equations = {item.name: item for item in items if isinstance(item, ir.Equation)}
    counts = uses(items)
    fused: dict[str, FusedAttention] = {}
    for pattern in equations.values():
        match = _match(pattern, equations, counts, keep, values, groupings, sizes, varying)
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


def _ungroup(factors, groupings: frozenset[str]):
    """`(refs, grouping)` for a product of refs: with a grouping `G[h, g]` in it that
    exactly relabels one other factor's `g` as `h` (`g` is on that factor once and
    nowhere else, `h` not on it), that factor read as if over `h` and the grouping
    left out; else the refs as they are and None. None if not all are refs."""
    if not all(isinstance(f, ir.Ref) for f in factors):
        return None
    grouped = [f for f in factors if f.name in groupings]
    if not grouped:
        return list(factors), None
    if len(grouped) != 1 or len(factors) != 3:
        return None
    group = grouped[0]
    head, kv = group.indices
    if head == kv:
        return None
    rest = [f for f in factors if f is not group]
    having = [f for f in rest if kv in f.indices]
    if len(having) != 1 or having[0].indices.count(kv) != 1 or head in having[0].indices:
        return None
    target = having[0]
    renamed = ir.Ref(target.name, tuple(head if i == kv else i for i in target.indices),
                     target.span)
    return [renamed if f is target else f for f in rest], group


def _window(conditions, to_scores, p: str, s: str, dims, sizes, varying):
    """`(causal, window)` for mask clauses on the scores' positions `p` (query) and `s`
    (key): `s <= p` is causal; `p - s < W` in any of its spellings is a window of W, an
    integer of at least 1 known at compile time, or dropped (None) when it holds for
    every allowed length. None where a clause is anything else."""
    causal, window = False, None
    for condition in conditions:
        left, right = to_scores.get(condition.left), to_scores.get(condition.right)
        offset = condition.offset
        if offset == 0 and ((condition.op == "<=" and (left, right) == (s, p)) or
                            (condition.op == ">=" and (left, right) == (p, s))):
            causal = True
            continue
        # p < s + W, p <= s + W - 1, s > p - W, s >= p - W + 1: p - s < W.
        spelled = {("<", p, s): offset, ("<=", p, s): offset + 1,
                   (">", s, p): -offset, (">=", s, p): -offset + 1}
        width = spelled.get((condition.op, left, right))
        if width is None or window is not None or sizes is None or p not in dims:
            return None
        # Sizes known at compile time; a varying dim's size only bounds its length.
        fixed = {d: n for d, n in sizes.items() if n is not None and d not in varying}
        length = dimmod.symbol(dims[p])
        bound = sizes.get(dims[p])
        # p - s is at most length - 1: the clause always holds if W - length >= 0 for
        # every allowed length: a constant slack, or c - length (c a constant), which is
        # least at the length's bound.
        others = {d: n for d, n in fixed.items() if d != dims[p]}
        slack = dimmod.evaluate(width - length, others)
        c = slack + length
        if (not slack.free_symbols and slack >= 0) or \
                (not c.free_symbols and bound is not None and c >= bound):
            continue  # always true: dropped
        width = dimmod.evaluate(width, fixed)
        if width.free_symbols or not width.is_integer or width < 1:
            return None  # a window read at run time, or one that empties rows
        window = int(width)
    return causal, window


def _match(pattern: ir.Equation, equations, counts, keep, values, groupings=frozenset(),
           sizes=None, varying=frozenset()) -> FusedAttention | None:
    box = _single(pattern.rhs)
    if not (isinstance(box, ir.Box) and box.function == "softmax" and len(box.legs) == 1):
        return None
    inner, conditions = _single(box.argument), ()
    if isinstance(inner, ir.Mask):
        conditions, inner = inner.conditions, _single(inner.argument)
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
    # scores[...] = c * A[...] * B[...]: one term, two refs (and perhaps a grouping).
    if len(scores.rhs.terms) != 1:
        return None
    term = scores.rhs.terms[0]
    ungrouped = _ungroup(term.factors, groupings)
    if ungrouped is None or len(ungrouped[0]) != 2:
        return None
    (a, b), group = ungrouped
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
    grouped_head = None
    if group is not None:
        if group.indices[0] not in heads or \
                not any(r.name == key.name and group.indices[1] in r.indices
                        for r in term.factors):
            return None  # the grouping must be on the key's side
        grouped_head = group.indices[0]
    dims = {leg.name: leg.dim for leg in scores.index_dims or ()}
    to_scores = dict(zip(pattern.indices, scores.indices))
    mask = _window(conditions, to_scores, p, s, dims, sizes, varying)
    if mask is None:
        return None
    causal, window = mask
    if (causal or window is not None) and dims.get(p) != dims.get(s):
        return None  # SDPA's causal mask and ours are one length's
    (e,) = features
    # The grouped head goes last among the heads: SDPA groups dim -3.
    ordered = [h for h in heads if h != grouped_head] + ([grouped_head] if grouped_head else [])
    roles = {p: "p", s: "s", e: "e", **{h: f"h{k}" for k, h in enumerate(ordered)}}
    # out[...] = pattern[...] * v[...] (perhaps through the same grouping).
    if len(out.rhs.terms) != 1 or out.rhs.terms[0].coefficient != 1:
        return None
    ungrouped = _ungroup(out.rhs.terms[0].factors, groupings)
    if ungrouped is None or len(ungrouped[0]) != 2:
        return None
    factors, out_group = ungrouped
    pref, vref = (factors if factors[0].name == pattern.name else factors[::-1])
    if pref.name != pattern.name or vref.name not in values or vref.name == pattern.name:
        return None
    if len(set(vref.indices)) != len(vref.indices) or len(set(pref.indices)) != len(pref.indices) \
            or len(set(out.indices)) != len(out.indices):
        return None
    # Names in `out` -> roles, through the pattern's legs (which are the scores' legs).
    out_roles = {n: roles[scores.indices[k]] for k, n in enumerate(pref.indices)}
    if (group is None) != (out_group is None):
        return None
    if out_group is not None:
        # The same grouping, between the pattern's grouped head and the value.
        if out_group.name != group.name or \
                out_roles.get(out_group.indices[0]) != roles[grouped_head] or \
                not any(r.name == vref.name for r in out.rhs.terms[0].factors
                        if out_group.indices[1] in r.indices):
            return None
    extra = [i for i in vref.indices if i not in out_roles]
    if len(extra) != 1:
        return None  # v has exactly one leg the pattern lacks: its feature
    out_roles[extra[0]] = "f"
    value_roles = tuple(out_roles[i] for i in vref.indices)
    head_roles = [f"h{k}" for k in range(len(heads))]
    if sorted(value_roles) != sorted(["s", "f", *head_roles]):
        return None
    result_roles = tuple(out_roles.get(i, "?") for i in out.indices)
    if sorted(result_roles) != sorted(["p", "f", *head_roles]):
        return None
    return FusedAttention(scores, pattern, out, query.name, key.name, vref.name,
                          tuple(roles[i] for i in query.indices),
                          tuple(roles[i] for i in key.indices), value_roles, result_roles,
                          tuple(head_roles), term.coefficient, causal, window,
                          group.name if group is not None else None)
