"""Incremental decoding derived from the diagram: which intermediates a new position
needs from earlier positions, and whether computing only the new positions is exact.

A causal attention reads its keys and values at every position up to the query's. In the
IR this is a mask condition bounding one leg by another of the same dim (`s <= p`): the
bounded leg is a *key* position, the other a *query* position; their dim is the
sequence (`Context`). Every leg of that dim in the program then gets a role:

- `new`: only the positions given in this call (queries; the default);
- `all`: every position so far, cached ones first (keys): an index is `all` where it is
  the key of a causal condition, where it is summed over (a sum over positions ranges
  over the past), or where it reads a leg holding all positions.

Roles are decided backwards from the outputs: an equation read at `all` positions on a
leg is either computed over all of them (when it has another position leg, such as
`scores[h, p, s]`: its key leg is filled from its own inputs) or, with one position leg
(`k[p, g, e]`, `v[p, g, e]`, after rotary), computed for the new positions and *cached*:
the run time appends them to the ones kept from earlier calls. A token input read at
`all` positions is cached the same way.

Then the program is checked forwards: decoding one position at a time gives the values
of the whole sequence exactly when nothing at a position depends on later positions. A
sum or softmax over a key leg is allowed only where the summand is zero past the query
(a causal mask inside the softmax, or a factor that carries one, like `pattern`), with
that query leg kept; a norm over positions, an unmasked softmax over positions, a sum
over positions into a value without one, or a mask that looks ahead are refused with
the equation's location and the reason.

A pure function of the checked network: `derive(network, sizes)` → `DecodePlan`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import sympy

from tndsl.lang import ir
from tndsl.lang.errors import TnError

NEW = "new"
ALL = "all"


class DecodeError(TnError):
    """Incremental decoding is not valid for this program (or cannot be derived)."""


class NoPositions(DecodeError):
    """The program has no position dim: it is not a sequence model."""


@dataclass(frozen=True)
class DecodePlan:
    """What the code generator needs to decode incrementally.

    `dim`: the position dim. `roles`: per equation and per input, param or fixed tensor,
    the role of each leg (`new`, `all`, or None for a leg of another dim).
    `index_roles`: per equation, the role of each position index it uses.
    `cached`: (name, leg) of each tensor kept across calls, in dependency order; `leg`
    is the position of its position leg among its legs."""

    dim: str
    roles: Mapping[str, tuple[str | None, ...]]
    index_roles: Mapping[str, Mapping[str, str]]
    cached: tuple[tuple[str, int], ...]
    also_new: frozenset[str] = frozenset()  # cached names also read at the new positions

    def is_cached(self, name: str) -> bool:
        return any(name == c for c, _ in self.cached)

    def role(self, equation: str, index: str) -> str | None:
        return self.index_roles.get(equation, {}).get(index)


def derive(network: ir.Network, sizes: Mapping[str, int | None]) -> DecodePlan:
    """The decoding plan of a checked network; `DecodeError` (located) where decoding
    one position at a time would not give the whole sequence's values."""
    equations = {eq.name: eq for eq in network.equations}
    tensors = {t.name: t for t in network.tensors}
    dim = _position_dim(network, sizes)
    order = ir.dependency_order(network)

    def leg_dims(name):
        legs = equations[name].legs if name in equations else tensors[name].legs
        return [leg.dim for leg in legs]

    # ---- backwards: the role of every leg, from what its readers need --------------------
    demand: dict[str, list[set[str]]] = {}
    roles: dict[str, tuple[str | None, ...]] = {}
    index_roles: dict[str, dict[str, str]] = {}
    for eq in reversed(order):
        dims = leg_dims(eq.name)
        wanted = demand.get(eq.name, [set() for _ in dims])
        keys = _causal_keys(eq, dim, sizes)
        positions = sum(d == dim for d in dims)
        leg_roles = []
        for index, d, want in zip(eq.indices, dims, wanted):
            if d != dim:
                leg_roles.append(None)
            elif index in keys or (ALL in want and positions > 1):
                leg_roles.append(ALL)
            else:
                leg_roles.append(NEW)
        roles[eq.name] = tuple(leg_roles)
        own = {}
        index_dims = {leg.name: leg.dim for leg in eq.index_dims}
        for index, d in index_dims.items():
            if d != dim:
                continue
            if index in eq.indices:
                own[index] = leg_roles[eq.indices.index(index)]
            else:
                own[index] = ALL  # summed over: the positions so far
            if index in keys:
                own[index] = ALL
        index_roles[eq.name] = own
        for ref in ir.refs(eq.rhs):
            if ref.name not in equations and ref.name not in tensors:
                continue  # `ones`: takes its legs from the equation
            slots = demand.setdefault(ref.name, [set() for _ in leg_dims(ref.name)])
            for k, index in enumerate(ref.indices):
                if index in own:
                    slots[k].add(own[index])
    for tensor in network.tensors:
        wanted = demand.get(tensor.name, [set() for _ in tensor.legs])
        leg_roles = []
        for leg, want in zip(tensor.legs, wanted):
            if leg.dim != dim:
                leg_roles.append(None)
            elif tensor.kind == "input":
                leg_roles.append(NEW)
            elif len(want) > 1:
                raise DecodeError(
                    f"incremental decoding: `{tensor.name}` is read both at the new "
                    f"positions and at all positions on its leg `{leg.name}`",
                    tensor.span, hint="read it on one kind of position leg")
            else:
                leg_roles.append(next(iter(want), NEW))
        roles[tensor.name] = tuple(leg_roles)

    # ---- what is kept across calls --------------------------------------------------------
    cached, also_new = [], set()
    for name in [t.name for t in network.tensors if t.kind == "input"] + \
            [eq.name for eq in order]:
        wanted = demand.get(name)
        if not wanted:
            continue
        for k, (role, want) in enumerate(zip(roles[name], wanted)):
            if role == NEW and ALL in want:
                if sum(r is not None for r in roles[name]) > 1:
                    where = equations[name].span if name in equations else tensors[name].span
                    raise DecodeError(
                        f"incremental decoding: `{name}` would have to be kept for every "
                        "earlier position along one position leg of several", where)
                cached.append((name, k))
                if NEW in want:
                    also_new.add(name)

    # ---- forwards: nothing at a position may depend on a later one ------------------------
    bounds: dict[str, set[tuple[int, int]]] = {}
    for eq in order:
        own = index_roles[eq.name]
        for ref in ir.refs(eq.rhs):
            if ref.name not in roles:
                continue
            for k, index in enumerate(ref.indices):
                have, want = roles[ref.name][k], own.get(index)
                if have == ALL and want == NEW:
                    raise DecodeError(
                        f"incremental decoding: `{ref.name}` holds every position on its "
                        f"leg {k + 1}, and `{eq.name}` reads it at the new positions only "
                        f"(index `{index}`)", ref.span or eq.span)
        checker = _Causality(eq, dim, sizes, bounds)
        found = checker.sum(eq.rhs, set(eq.indices))
        bounds[eq.name] = {(eq.indices.index(a), eq.indices.index(b)) for a, b in found
                           if a in eq.indices and b in eq.indices}
    return DecodePlan(dim, roles, {k: dict(v) for k, v in index_roles.items()},
                      tuple(cached), frozenset(also_new))


# ---- the position dim and causal conditions ----------------------------------------------

def _bound(cond: ir.Condition, sizes) -> list[tuple[str, str]]:
    """(key, query) pairs a condition implies `key <= query` for, as positions."""
    offset = sympy.sympify(cond.offset).subs(
        {sympy.Symbol(k): v for k, v in sizes.items() if v is not None})
    if not offset.is_number:
        return []
    o = float(offset)
    a, b = cond.left, cond.right
    pairs = []
    if cond.op in ("<=", "==") and o <= 0 or cond.op == "<" and o <= 1:
        pairs.append((a, b))             # a <= b + o <= b
    if cond.op in (">=", "==") and o >= 0 or cond.op == ">" and o >= -1:
        pairs.append((b, a))             # b <= a - o <= a
    return pairs


def _masks(node):
    if isinstance(node, ir.Mask):
        yield node
        yield from _masks(node.argument)
    elif isinstance(node, ir.Sum):
        for term in node.terms:
            for factor in term.factors:
                yield from _masks(factor)
    elif isinstance(node, ir.Box):
        yield from _masks(node.argument)


def _causal_keys(eq: ir.Equation, dim: str, sizes) -> set[str]:
    index_dims = {leg.name: leg.dim for leg in eq.index_dims}
    keys = set()
    for mask in _masks(eq.rhs):
        for cond in mask.conditions:
            for key, query in _bound(cond, sizes):
                if index_dims.get(key) == dim and index_dims.get(query) == dim:
                    keys.add(key)
    return keys


def _position_dim(network: ir.Network, sizes) -> str:
    found: dict[str, ir.Equation] = {}
    for eq in network.equations:
        index_dims = {leg.name: leg.dim for leg in eq.index_dims}
        for mask in _masks(eq.rhs):
            for cond in mask.conditions:
                for key, query in _bound(cond, sizes):
                    if index_dims.get(key) is not None and \
                            index_dims.get(key) == index_dims.get(query):
                        found.setdefault(index_dims[key], eq)
    if not found:  # no attention: the position legs of the token inputs
        for tensor in network.tensors:
            if tensor.kind == "input" and tensor.onehot is not None:
                for leg in tensor.legs:
                    if leg.name != tensor.onehot:
                        found.setdefault(leg.dim, None)
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise NoPositions(
            "incremental decoding needs a position dim: no causal mask (`where s <= p`) "
            "and no token input says which legs are positions",
            hint="declare the tokens as `input tokens[p: Context, v: onehot Vocab]`")
    names = sorted(found)
    eq = found[names[1]] or found[names[0]]
    raise DecodeError(f"incremental decoding: causal masks over two dims, "
                      f"{', '.join(f'`{n}`' for n in names)}; one position dim is supported",
                      eq.span if eq else None)


class _Causality:
    """The (key, query) index pairs an expression is zero past (key > query), checking
    that each sum and normalisation over positions stays within the past."""

    def __init__(self, eq: ir.Equation, dim: str, sizes, bounds):
        self.eq, self.dim, self.sizes, self.bounds = eq, dim, sizes, bounds
        self.index_dims = {leg.name: leg.dim for leg in eq.index_dims}

    def _position(self, index: str) -> bool:
        return self.index_dims.get(index) == self.dim

    def sum(self, node: ir.Sum, keep: set[str]) -> set[tuple[str, str]]:
        found = None
        for term in node.terms:
            pairs = self.term(term, keep)
            found = pairs if found is None else found & pairs
        return found or set()

    def term(self, term: ir.Term, keep: set[str]) -> set[tuple[str, str]]:
        pairs: set[tuple[str, str]] = set()
        for k, factor in enumerate(term.factors):
            pairs |= self.factor(factor, ir.outside_of(term, k, keep))
        summed = {i for f in term.factors for i in ir.indices(f)} - keep
        for index in sorted(summed):
            if self._position(index) and not any(a == index and b in keep
                                                 for a, b in pairs):
                raise DecodeError(
                    f"incremental decoding is not valid: `{self.eq.name}` sums over the "
                    f"positions `{index}` ({self.dim}) with nothing masking later positions, "
                    "so its value depends on tokens not yet generated",
                    term.span or self.eq.span,
                    hint=f"mask the sum causally (`where {index} <= p`) or keep `{index}` "
                         "as a leg")
        return {(a, b) for a, b in pairs if a in keep and b in keep}

    def factor(self, factor, keep: set[str]) -> set[tuple[str, str]]:
        if isinstance(factor, ir.Ref):
            eq_bounds = self.bounds.get(factor.name, set())
            return {(factor.indices[a], factor.indices[b]) for a, b in eq_bounds}
        if isinstance(factor, ir.Sum):
            return self.sum(factor, set(ir.free_legs(factor, keep)))
        if isinstance(factor, ir.Mask):
            pairs = {pair for cond in factor.conditions for pair in _bound(cond, self.sizes)
                     if self._position(pair[0]) and self._position(pair[1])}
            return pairs | self.sum(factor.argument, set(ir.free_legs(factor, keep)))
        # a box
        legs = set(factor.legs)
        inner = set(ir.free_legs(factor, keep))
        positions = [leg for leg in factor.legs if self._position(leg)]
        if not positions:
            pairs = self.sum(factor.argument, inner)
            return pairs if factor.function == "softmax" else set()
        if factor.function != "softmax":
            raise DecodeError(
                f"incremental decoding is not valid: `{self.eq.name}` takes a "
                f"{factor.function} over the positions `{positions[0]}` ({self.dim}), so "
                "each position depends on later ones", factor.span or self.eq.span)
        pairs = self.sum(factor.argument, inner)
        for leg in positions:
            if not any(a == leg and b in keep - legs for a, b in pairs):
                raise DecodeError(
                    f"incremental decoding is not valid: `{self.eq.name}` takes a softmax "
                    f"over the positions `{leg}` ({self.dim}) without a causal mask, so "
                    "each position attends to later ones",
                    factor.span or self.eq.span,
                    hint=f"mask it: `softmax[{leg}](... where {leg} <= p)`")
        return pairs
