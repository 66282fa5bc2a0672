"""The symbolic tier: expand both sides of an identity into canonical monomials.

Expansion inlines named equations down to params and inputs, distributes products over
sums and collects scalar coefficients (sympy expressions in the dims). A monomial is an
einsum: factors with index tuples, where a free index keeps its name and every other
index is a dummy joining the slots it occurs in — two slots (a wire), or three or more
(a copy dot), which needs no special tensor here.

The canonical form of a monomial is invariant under renaming dummies and reordering
factors, and respects free-leg names and slot order (a transposed tensor is another
monomial). It is the serialisation under a complete canonical labelling of the
monomial's graph (a vertex per factor, coloured by its name, and per index, edges
labelled by slot), found by individualisation–refinement with automorphism pruning
(`canon.py`): exact, with no cap on tie-breaks, so rings of identical tensors, regular
tournaments and copy-dot stars canonicalise in milliseconds. (sympy's `canon_bp` solves
the same problem for tensors with a metric; here indices have no up/down position and
copy dots are hyperedges, which this formulation handles directly.)

A box or mask is opaque: a factor named `box:N`, where N is hash-consed from the
canonical form of its argument up to renaming its slots (one graph for the whole
argument polynomial, computed once per box), so `softmax[s](A)` on both sides cancels,
nested boxes cost once each, and nothing is assumed about what the function does.
"""
from __future__ import annotations

import itertools
import re
from typing import Mapping

import sympy

from tndsl.lang import dims as dimmod, ir
from tndsl.lang.printer import format_scalar
from tndsl.verify import canon, masks
from tndsl.verify.lemmas import REL, BoxInfo, Lemmas

MAX_MONOMIALS = 20_000      # beyond this, the symbolic tier gives up (unknown)


class TooLarge(Exception):
    """The expansion would exceed MAX_MONOMIALS."""


# A factor: (name, indices), where the name of a box or mask is its canonical text
# (`softmax[#1](...)` with its slots numbered). A monomial: tuple of factors. A
# polynomial: {canonical monomial: coefficient}.
Polynomial = dict


class Expander:
    """Expands expressions of a checked program. Fresh dummies are `~0`, `~1`, ...
    (a `~` cannot appear in a `.tn` index name)."""

    def __init__(self, program, deadline: float | None = None):
        self.program = program
        self.deadline = deadline  # perf_counter seconds; past it, canon.TimeBudget
        self.equations = {eq.name: eq for eq in program.network.equations}
        self.tensors = {t.name: t for t in program.network.tensors}
        self.counter = itertools.count()
        self.has_boxes = False
        self.opaque: dict[tuple, tuple[str, tuple[int, ...]]] = {}
        self.box_names: dict[tuple, str] = {}   # a box's identity -> its name, box:N
        self.display = BoxTexts()
        self.lemmas = Lemmas(self.tensors)

    def side(self, expr: ir.Sum, legs: tuple[str, ...], index_dims: Mapping[str, str]
             ) -> Polynomial:
        """One side of a check with free legs `legs`."""
        free = set(legs)
        return _collect(self.expand(expr, {i: i for i in legs}, index_dims, free), free,
                        self.deadline, self.lemmas, {i: index_dims[i] for i in legs})

    # ---- expansion ---------------------------------------------------------------------
    def expand(self, expr: ir.Sum, subst: dict[str, str], dims: Mapping[str, str],
               keep: set[str]) -> list[tuple[sympy.Expr, tuple]]:
        """Monomials of `expr`. `subst` renames the indices bound outside it; `keep` are
        those indices' original names; every other index becomes a fresh dummy."""
        out = []
        for term in expr.terms:
            out.extend(self._term(term, subst, dims, keep))
            if len(out) > MAX_MONOMIALS:
                raise TooLarge
        return out

    def _term(self, term: ir.Term, subst, dims, keep) -> list[tuple[sympy.Expr, tuple]]:
        subst = dict(subst)
        for index in sorted(ir.indices(term)):
            if index not in subst:
                subst[index] = f"~{next(self.counter)}"
        products: list[tuple[sympy.Expr, tuple]] = [(term.coefficient, ())]
        for k, factor in enumerate(term.factors):
            options = self._factor(factor, ir.outside_of(term, k, keep), subst, dims)
            if len(products) * len(options) > MAX_MONOMIALS:
                raise TooLarge  # before building them: the product may not fit in memory
            products = [(c1 * c2, f1 + f2) for c1, f1 in products for c2, f2 in options]
            if len(products) > MAX_MONOMIALS:
                raise TooLarge
        return products

    def _factor(self, factor, outside: set[str], subst, dims
                ) -> list[tuple[sympy.Expr, tuple]]:
        one = sympy.Integer(1)
        if isinstance(factor, ir.Ref):
            if factor.name == ir.ONES:  # ones[p, s] is ones[p] * ones[s]
                return [(one, tuple((f"ones:{dims[i]}", (subst[i],)) for i in factor.indices))]
            indices = tuple(subst[i] for i in factor.indices)
            if factor.name in self.tensors:
                return [(one, ((factor.name, indices),))]
            eq = self.equations[factor.name]
            inner_dims = {leg.name: leg.dim for leg in eq.index_dims}
            box = _single_box(eq)
            if box is not None:  # `pattern = softmax[s](...)`: opaque, shown by its name
                return [(one, (self._named_opaque(eq, box, indices, inner_dims),))]
            return self.expand(eq.rhs, dict(zip(eq.indices, indices)), inner_dims,
                               set(eq.indices))
        if isinstance(factor, ir.Sum):
            legs = set(ir.free_legs(factor, outside))
            return self.expand(factor, {i: subst[i] for i in legs}, dims, legs)
        self.has_boxes = True
        legs = list(ir.free_legs(factor, outside))
        if isinstance(factor, ir.Mask):
            # A mask is its argument times one indicator per condition (masks.py).
            conditions = tuple(masks.indicator(subst[c.left], c.op, subst[c.right], c.offset)
                               for c in factor.conditions)
            self.lemmas.used.add("mask normal form")
            inner = self.expand(factor.argument, {i: subst[i] for i in legs}, dims, set(legs))
            return [(c, f + conditions) for c, f in inner]
        return [(one, (self._opaque(factor, legs, subst, dims),))]

    def _opaque(self, factor, legs: list[str], subst, dims) -> tuple:
        """A box or mask over `legs` as one factor, named by the canonical form of its
        argument and its slots in canonical order, so that the same box written with
        other index names matches."""
        name, order = self._box(factor, legs, dims)
        return (name, tuple(subst[legs[j]] for j in order))

    def _named_opaque(self, eq: ir.Equation, box, indices: tuple, dims) -> tuple:
        """The box an equation consists of, remembering to display it by the equation's
        name (its identity, which decides equality, is its argument's canonical form)."""
        self.has_boxes = True
        legs = list(eq.indices)
        name, order = self._box(box, legs, dims)
        slot = {legs[j]: n for n, j in enumerate(order)}
        self.display.named[name] = f"{eq.name}[{', '.join(f'#{slot[i]}' for i in eq.indices)}]"
        subst = dict(zip(eq.indices, indices))
        return (name, tuple(subst[legs[j]] for j in order))

    def _box(self, factor, legs: list[str], dims) -> tuple[str, tuple[int, ...]]:
        """The name and canonical slot order of a box over `legs`, computed once per box
        of the program (the same box recurs in many monomials) and hash-consed: boxes
        whose arguments have the same canonical form share a name."""
        key = (id(factor), tuple(legs))
        if key not in self.opaque:
            argument, conditions = factor.argument, ()
            if factor.function == "softmax" and _is_mask(argument):
                # A masked softmax: masked entries get probability 0, not exp(0), so
                # its conditions belong to the function, not to its argument.
                mask = argument.terms[0].factors[0]
                argument = mask.argument
                conditions = tuple(
                    (legs.index(b), masks.parse(n), legs.index(c)) for n, (b, c) in
                    (masks.indicator(c.left, c.op, c.right, c.offset) for c in mask.conditions))
                conditions = tuple((l, (op, str(offset)), r) for l, (op, offset), r in conditions)
            axes = {leg: p for p, leg in enumerate(factor.legs)}
            kind = (factor.function, tuple(legs.index(leg) for leg in factor.legs),
                    factor.eps, conditions, factor.args)
            roles = [f"axis{axes[leg]}" if leg in axes else "slot" for leg in legs]
            # When the function alone tells the slots apart (softmax[s](... where s <= p)
            # over h, p, s), expand with them already in canonical order.
            invariant = _slot_invariants(roles, kind)
            legs, kind, roles, back = _presort(legs, kind, roles, invariant)
            written = {leg: f"#{j}" for j, leg in enumerate(legs)}
            slots = set(written.values())
            poly = _collect(self.expand(argument, dict(written), dims, set(legs)), slots,
                            self.deadline, self.lemmas, {written[l]: dims[l] for l in legs})
            poly = self._shift_invariance(factor.function, kind, poly)
            identity, order = _box_identity(poly, roles, kind, self.deadline)
            name = self.box_names.setdefault(identity, f"box:{len(self.box_names)}")
            if name not in self.display.boxes:  # in the numbering `poly` uses
                self.display.boxes[name] = (factor, kind, poly, order)
                slot_of = {j: n for n, j in enumerate(order)}
                self.lemmas.boxes[name] = BoxInfo(
                    factor.function, tuple(sorted(slot_of[a] for a in kind[1])),
                    bool(kind[3]), _rows_nonempty(kind, [dims[legs[j]] for j in range(len(legs))]),
                    tuple(dims[legs[j]] for j in order))
                symmetries = self._symmetries(poly, kind, order)
                if symmetries:
                    self.lemmas.symmetries[name] = symmetries
            self.opaque[key] = (name, tuple(back[j] for j in order))
        return self.opaque[key]

    def _shift_invariance(self, function: str, kind: tuple, poly: Polynomial) -> Polynomial:
        """softmax and layernorm along their legs do not change when a term constant
        along those legs is added (masked softmax too): such terms of the argument (no
        factor but `ones` on an axis slot) are dropped, unless nothing would remain."""
        if function not in ("softmax", "layernorm") or not kind[1]:
            return poly
        axes = {f"#{a}" for a in kind[1]}
        kept = {m: c for m, c in poly.items()
                if any(axes & set(i) for n, i in m if not n.startswith("ones:"))}
        if kept and len(kept) < len(poly):
            self.lemmas.used.add(f"{function} shift invariance")
            return kept
        return poly

    def _symmetries(self, poly: Polynomial, kind: tuple, order) -> list[tuple[int, ...]]:
        """Permutations of a box's canonical slots that leave it unchanged: those of its
        argument that keep its axes and conditions (exp(X + Xᵀ) is symmetric)."""
        k = len(order)
        if k < 2 or k > 4 or len(poly) > 64:
            return []
        found = []
        for perm in itertools.permutations(range(k)):
            if perm == tuple(range(k)):
                continue
            if any(perm[a] != a for a in kind[1]):
                continue
            if kind[3] and sorted((perm[l], c, perm[r]) for l, c, r in kind[3]) != \
                    sorted(kind[3]):
                continue
            rename = {f"#{j}": f"#{perm[j]}" for j in range(k)}
            renamed: Polynomial = {}
            for monomial, coefficient in poly.items():
                factors = tuple((n, tuple(rename.get(i, i) for i in idx)) for n, idx in monomial)
                key = canonical(factors, set(rename.values()), self.deadline, self.lemmas)
                renamed[key] = renamed.get(key, 0) + coefficient
            if renamed == poly:
                # written slot j ↔ perm[j]; in canonical slots n = order⁻¹(written)
                at = {j: n for n, j in enumerate(order)}
                found.append(tuple(at[perm[order[n]]] for n in range(k)))
        if found:
            self.lemmas.used.add("box symmetry")
        return found


class BoxTexts(Mapping):
    """How to show each box of an expansion as `.tn` text, computed only when shown:
    an equation that is a single box by its name (`pattern[#0, #1, #2]`), any other box
    in full, with its slots #0, #1, ... in canonical order and its own dummies named by
    nesting depth (j1, then jj1 inside a box inside it)."""

    def __init__(self, depth: int = 1, named=None, boxes=None):
        self.depth = depth
        self.named: dict[str, str] = {} if named is None else named
        self.boxes: dict[str, tuple] = {} if boxes is None else boxes

    def __getitem__(self, name: str) -> str:
        if name in self.named:
            return self.named[name]
        factor, kind, poly, order = self.boxes[name]
        slot = {f"#{j}": f"#{n}" for n, j in enumerate(order)}
        renamed: Polynomial = {}
        for monomial, coefficient in poly.items():
            factors = tuple((f, tuple(slot.get(i, i) for i in indices))
                            for f, indices in monomial)
            renamed[canonical(factors, set(slot.values()))] = coefficient
        inner = BoxTexts(self.depth + 1, self.named, self.boxes)
        argument = render_polynomial(renamed, dummy="j" * self.depth, display=inner)
        if kind[3]:
            conds = " and ".join(
                masks.text(masks.factor_name(op, sympy.sympify(offset)),
                           (slot[f'#{l}'], slot[f'#{r}'])) for l, (op, offset), r in kind[3])
            argument = f"{argument} where {conds}"
        if kind[1]:
            eps = f"; eps={kind[2]!r}" if kind[2] is not None else ""
            return f"{kind[0]}[{', '.join(slot[f'#{j}'] for j in kind[1])}{eps}]({argument})"
        return f"{kind[0]}({argument})"

    def __iter__(self):
        return iter({**self.boxes, **self.named})

    def __len__(self) -> int:
        return len({**self.boxes, **self.named})


def _box_identity(poly: Polynomial, roles: list[str], kind: tuple, deadline
                  ) -> tuple[tuple, tuple[int, ...]]:
    """The canonical form of a box's argument up to renaming its slots, and the slots'
    canonical order. The argument is one graph: a vertex per slot (coloured by its role
    in the function, e.g. the softmax axis), per monomial (coloured by its coefficient),
    per factor (joined to its monomial) and per dummy; a mask's conditions are vertices
    joined to their two slots."""
    k = len(roles)
    # Usually each slot is told apart by an invariant (its role, its conditions, where it
    # occurs): then sorting by it is the canonical slot order and the argument, its slots
    # renamed, is the identity. Only slots that share an invariant need the graph search.
    if len(set(_slot_invariants(roles, kind))) == k and \
            sorted(_slot_invariants(roles, kind)) == _slot_invariants(roles, kind):
        # presorted: the written order is canonical and the argument already canonical
        order = tuple(range(k))
        body = tuple(sorted((key, str(coefficient)) for key, coefficient in poly.items()))
        return (_box_head(kind, {j: j for j in order}), "sorted", body), order
    occurs: list[list] = [[] for _ in roles]
    for monomial, coefficient in poly.items():
        for name, indices in monomial:
            for s, index in enumerate(indices):
                if index.startswith("#"):
                    occurs[int(index[1:])].append((str(coefficient), name, len(indices), s))
    invariant = [(*_slot_invariants(roles, kind)[j], tuple(sorted(occurs[j])))
                 for j in range(k)]
    if len(set(invariant)) == k:
        order = tuple(sorted(range(k), key=invariant.__getitem__))
        slot_of = {j: n for n, j in enumerate(order)}
        rename = {f"#{j}": f"#{n}" for j, n in slot_of.items()}
        free = set(rename.values())
        body = tuple(sorted(
            (canonical(tuple((name, tuple(rename.get(i, i) for i in indices))
                             for name, indices in monomial), free, deadline), str(coefficient))
            for monomial, coefficient in poly.items()))
        return (_box_head(kind, slot_of), "sorted", body), order
    colours: list = [(0, role) for role in roles]
    adjacency: list[list[tuple[int, int]]] = [[] for _ in roles]

    def vertex(colour) -> int:
        colours.append(colour)
        adjacency.append([])
        return len(colours) - 1

    def edge(u: int, v: int, label: int) -> None:
        adjacency[u].append((v, label))
        adjacency[v].append((u, label))

    for left, op, right in kind[3]:
        c = vertex((1, op))
        edge(c, left, -2)
        edge(c, right, -3)
    for monomial, coefficient in poly.items():
        # An invariant of the monomial in its colours (which factors, the coefficient)
        # splits most of the graph before refinement has to.
        content = (str(coefficient), tuple(sorted((name, len(indices))
                                                  for name, indices in monomial)))
        m = vertex((2, content))
        dummies: dict[str, int] = {}
        for name, indices in monomial:
            f = vertex((3, name, len(indices), content))
            edge(f, m, -1)
            for s, index in enumerate(indices):
                if index.startswith("#"):
                    edge(f, int(index[1:]), s)
                else:
                    if index not in dummies:
                        dummies[index] = vertex((4, ""))
                    edge(f, dummies[index], s)
    edges = [(u, v, label) for u in range(len(colours)) for v, label in adjacency[u] if u <= v]

    def certificate(lab: list[int]) -> tuple:
        rank = [0] * len(lab)
        for r, v in enumerate(lab):
            rank[v] = r
        return (tuple(colours[v] for v in lab),
                tuple(sorted((min(rank[u], rank[v]), max(rank[u], rank[v]), label)
                             for u, v, label in edges)))

    cert, lab = canon.canonical_labelling(colours, adjacency, certificate, deadline=deadline)
    order = tuple(v for v in lab if v < k)
    slot_of = {j: n for n, j in enumerate(order)}
    return (_box_head(kind, slot_of), "graph", cert), order


def _slot_invariants(roles: list[str], kind: tuple) -> list[tuple]:
    """What the function says about each slot: its role and the conditions it is in."""
    conditions = kind[3]
    return [(roles[j], tuple(sorted((op, side) for left, op, right in conditions
                                    for side, slot in (("left", left), ("right", right))
                                    if slot == j)))
            for j in range(len(roles))]


def _presort(legs: list[str], kind: tuple, roles: list[str], invariant: list[tuple]):
    """Legs, kind and roles with the slots reordered by their invariants when these tell
    every slot apart (else unchanged), and the map back to the written positions."""
    k = len(legs)
    if len(set(invariant)) < k:
        return legs, kind, roles, list(range(k))
    back = sorted(range(k), key=invariant.__getitem__)
    new = {j: n for n, j in enumerate(back)}
    kind = (kind[0], tuple(new[j] for j in kind[1]), kind[2],
            tuple((new[l], op, new[r]) for l, op, r in kind[3])) + kind[4:]  # box params
    return [legs[j] for j in back], kind, [roles[j] for j in back], back


def _box_head(kind: tuple, slot_of: Mapping[int, int]) -> tuple:
    """The function with its axes and a masked softmax's conditions in canonical slot
    numbers (an equality with offset 0 is symmetric: its slots in order)."""
    conditions = []
    for l, (op, offset), r in kind[3]:
        l, r = slot_of[l], slot_of[r]
        if op in ("==", "!=") and offset == "0":
            l, r = min(l, r), max(l, r)
        conditions.append((l, (op, offset), r))
    # kind[4:]: the box's parameters (softcap's c, topk's k): part of its identity
    return (kind[0], tuple(slot_of[j] for j in kind[1]), kind[2], tuple(sorted(conditions))) \
        + kind[4:]


def _collect(monomials, free: set[str], deadline: float | None = None,
             lemmas: Lemmas | None = None, free_dims=None) -> Polynomial:
    poly: Polynomial = {}
    for coefficient, factors in monomials:
        coefficient, factors = _drop_ones(coefficient, factors, free)
        if lemmas is not None:
            had = {i for _, idx in factors for i in idx if i in free}
            coefficient, factors = lemmas.apply(coefficient, factors, free, free_dims)
            if factors is None:
                continue
            # A free leg whose factors a lemma consumed is still a leg: ones on it.
            lost = had - {i for _, idx in factors for i in idx}
            factors += tuple((f"ones:{free_dims[i]}", (i,)) for i in sorted(lost)
                             if free_dims and i in free_dims)
            coefficient, factors = _drop_ones(coefficient, factors, free)
        key = canonical(factors, free, deadline, lemmas)
        poly[key] = poly.get(key, 0) + coefficient
    expanded = {k: sympy.expand(c) for k, c in poly.items()}
    return complements({k: c for k, c in expanded.items() if c != 0}, free, deadline, lemmas,
                       free_dims)


def complements(poly: Polynomial, free: set[str], deadline=None, lemmas=None,
                free_dims=None) -> Polynomial:
    """A condition and its complement add up to one: c·(m where a) + c·(m where not a)
    is c·m, repeatedly (masks.py). `free_dims` gives the free legs' dims, for a free
    leg that only the condition had (it then gets its `ones` back); without it, such
    pairs are left alone."""
    if not any(masks.is_indicator(n) for key in poly for n, _ in key):
        return poly
    poly = dict(poly)
    partner: dict[tuple, tuple] = {}  # (key, k) -> the key with indicator k negated
    changed = True
    while changed:
        changed = False
        for key in sorted(poly, key=repr):
            if key not in poly:
                continue
            for k, (name, indices) in enumerate(key):
                if not masks.is_indicator(name):
                    continue
                rest = key[:k] + key[k + 1:]
                have = {i for _, idx in rest for i in idx}
                lost = [i for i in indices if i in free and i not in have]
                if lost and (free_dims is None or any(i not in free_dims for i in lost)):
                    continue
                if (key, k) not in partner:
                    partner[key, k] = canonical(rest + (masks.complement(name, indices),),
                                                free, deadline, lemmas)
                other = partner[key, k]
                if other == key or other not in poly or \
                        sympy.expand(poly[other] - poly[key]) != 0:
                    continue
                coefficient = poly.pop(key)
                poly.pop(other)
                rest += tuple((f"ones:{free_dims[i]}", (i,)) for i in dict.fromkeys(lost))
                coefficient, rest = _drop_ones(coefficient, rest, free)
                merged = canonical(rest, free, deadline, lemmas)
                total = sympy.expand(poly.get(merged, 0) + coefficient)
                if total == 0:
                    poly.pop(merged, None)
                else:
                    poly[merged] = total
                if lemmas is not None:
                    lemmas.used.add("complementary masks")
                changed = True
                break
    return poly


def _drop_ones(coefficient, factors: tuple, free: set[str]):
    """Normal form for `ones`: it changes nothing on a leg another factor has; a free leg
    only ones have keeps one (a free leg's dim is the check's), and so does a summed leg
    only masks' indicators have (they carry no dim); summing ones over a leg nothing
    else has is its size."""
    others = {i for name, indices in factors
              if not name.startswith("ones:") and not masks.is_indicator(name) for i in indices}
    conditioned = {i for name, indices in factors if masks.is_indicator(name) for i in indices}
    kept, seen = [], set()
    for name, indices in factors:
        if not name.startswith("ones:"):
            kept.append((name, indices))
            continue
        (index,) = indices
        if index in others or index in seen:
            continue
        seen.add(index)
        if index in free:
            if index not in conditioned:
                kept.append((name, indices))
        elif index in conditioned:
            kept.append((name, indices))
        else:
            coefficient *= dimmod.symbol(name[len("ones:"):])
    return coefficient, tuple(kept)


def _is_mask(argument: ir.Sum) -> bool:
    """The argument is exactly one mask (a masked softmax)."""
    terms = argument.terms
    return (len(terms) == 1 and terms[0].coefficient == 1 and len(terms[0].factors) == 1
            and isinstance(terms[0].factors[0], ir.Mask))


def _rows_nonempty(kind: tuple, slot_dims: list[str]) -> bool:
    """Every row of a masked softmax keeps an entry: one axis, and each condition joins
    it to another slot of the same dim and holds where the two positions are equal."""
    if len(kind[1]) != 1:
        return False
    (axis,) = kind[1]
    for left, (op, offset), right in kind[3]:
        if axis not in (left, right) or left == right:
            return False
        other = right if left == axis else left
        if slot_dims[other] != slot_dims[axis]:
            return False
        value = sympy.sympify(offset)
        if not ((op == "<=" and value.is_nonnegative) or (op == "==" and value == 0)):
            return False
    return True


def _single_box(eq: ir.Equation):
    """The box or mask if the equation is exactly one, over exactly its legs."""
    if len(eq.rhs.terms) != 1:
        return None
    term = eq.rhs.terms[0]
    if term.coefficient != 1 or len(term.factors) != 1:
        return None
    factor = term.factors[0]
    if not isinstance(factor, ir.Box):  # a mask is its argument times indicators
        return None
    if set(ir.free_legs(factor, set(eq.indices))) != set(eq.indices):
        return None
    return factor


# ---- canonical form ---------------------------------------------------------------------

def canonical(factors: tuple, free: set[str], deadline: float | None = None,
              lemmas: Lemmas | None = None) -> tuple:
    """The canonical serialisation of a monomial (see the module docstring): factors in
    the order of a canonical labelling, dummies renamed ~0, ~1, ... by first use. With
    `lemmas`, the least over the monomial's equal variants (symmetric slots)."""
    if not factors:
        return ()
    if lemmas is not None:
        variants = lemmas.variants(factors)
        if len(variants) > 1:
            return min(_canonical(v, free, deadline) for v in variants)
    return _canonical(factors, free, deadline)


def _canonical(factors: tuple, free: set[str], deadline: float | None = None) -> tuple:
    # Identical factors (x[i] * x[i] * ..., a star of one copy dot) are one vertex with
    # a multiplicity: any permutation of them is a symmetry the search need not find.
    count: dict[tuple, int] = {}
    for factor in factors:
        count[factor] = count.get(factor, 0) + 1
    if len(count) < len(factors):
        unique = tuple(count)
        order = _canonical_order(unique, free, deadline, [count[f] for f in unique])
        return _serialise(unique, [f for f in order for _ in range(count[unique[f]])],
                          free)
    return _serialise(factors, _canonical_order(factors, free, deadline), free)


def _canonical_order(factors: tuple, free: set[str], deadline, multiplicity=None) -> list[int]:
    """Positions of `factors` in canonical order."""
    index_vertex: dict[str, int] = {}
    for _, indices in factors:
        for index in indices:
            if index not in index_vertex:
                index_vertex[index] = len(factors) + len(index_vertex)
    n_factors = len(factors)
    colours: list = [(0, name, len(indices), multiplicity[f] if multiplicity else 1)
                     for f, (name, indices) in enumerate(factors)]
    if len(set(colours)) == n_factors:  # names alone order the factors
        return sorted(range(n_factors), key=colours.__getitem__)
    colours += [(1, i) if i in free else (2, "") for i in index_vertex]
    adjacency: list[list[tuple[int, int]]] = [[] for _ in colours]
    for f, (_, indices) in enumerate(factors):
        for s, index in enumerate(indices):
            v = index_vertex[index]
            adjacency[f].append((v, s))
            adjacency[v].append((f, s))
    vertex_index = {v: i for i, v in index_vertex.items()}

    def certificate(lab: list[int]) -> tuple:
        # Dummies by their position in the labelling (not by first use), so that equal
        # certificates mean the two labellings differ by an automorphism.
        rank: dict[str, int] = {}
        for v in lab:
            if v >= n_factors and vertex_index[v] not in free:
                rank[vertex_index[v]] = len(rank)
        return tuple((colours[f], tuple(i if i in free else rank[i] for i in factors[f][1]))
                     for f in lab if f < n_factors)

    _, lab = canon.canonical_labelling(colours, adjacency, certificate, deadline=deadline)
    return [v for v in lab if v < n_factors]


def _serialise(factors, order, free) -> tuple:
    rename: dict[str, str] = {}
    out = []
    for f in order:
        name, indices = factors[f]
        renamed = []
        for index in indices:
            if index in free:
                renamed.append(index)
            else:
                if index not in rename:
                    rename[index] = f"~{len(rename)}"
                renamed.append(rename[index])
        out.append((name, tuple(renamed)))
    return tuple(out)


# ---- back to .tn text ---------------------------------------------------------------------

def render_monomial(key: tuple, coefficient=sympy.Integer(1), *, dummy: str = "i",
                    display: Mapping[str, str] | None = None) -> str:
    """`.tn` text for a canonical monomial: dummies become i1, i2, ..., a box is shown
    by its equation's name where `display` has one, else in full."""
    return _render_monomial(key, coefficient, dummy, display, 1)[0]


def _render_monomial(key: tuple, coefficient, dummy: str, display, first: int
                     ) -> tuple[str, int]:
    """The text, and how many dummy names it used (numbered from `first`)."""
    names: dict[str, str] = {}

    def index(i: str) -> str:
        if i.startswith("~"):
            names.setdefault(i, f"{dummy}{len(names) + first}")
            return names[i]
        return i

    # The normal form drops `ones` on a leg another factor has, so a dummy may occur
    # once; written out, a leg that occurs once is open, so it gets its `ones` back.
    uses: dict[str, int] = {}
    for _, indices in key:
        for i in indices:
            if i.startswith("~"):
                uses[i] = uses.get(i, 0) + 1

    parts = []
    for name, indices in key:
        shown = ", ".join(index(i) for i in indices)
        if name.startswith("ones:"):
            parts.append(f"ones[{shown}]")
        elif masks.is_indicator(name):
            parts.append(f"(ones[{', '.join(dict.fromkeys(index(i) for i in indices))}] "
                         f"where {masks.text(name, tuple(index(i) for i in indices))})")
        elif name.startswith(REL):  # R(s - p)[f, g], the relative rotary map
            p, s_, f, g = (index(i) for i in indices)
            parts.append(f"{name[len(REL):]}[{s_} - {p}, {f}, {g}]")
        elif name.startswith("box:"):  # an opaque box or mask: put its legs into its slots
            name = (display or {}).get(name, name)
            # Dummies inside the box are local to it in its canonical name; written out,
            # they must differ from every other index, or `.tn` would join two boxes
            # that share a dummy's name.
            local: dict[str, str] = {}

            def fresh(m: re.Match) -> str:
                if m.group(0) not in local:
                    local[m.group(0)] = index(f"~box{len(names)}")
                return local[m.group(0)]

            name = re.sub(r"\bj+\d+\b", fresh, name)
            # One pass: a slot's replacement may itself be a marker of the enclosing box.
            parts.append(re.sub(r"#(\d+)", lambda m: index(indices[int(m.group(1))]), name))
        else:
            parts.append(f"{name}[{shown}]")
    parts += [f"ones[{index(i)}]" for i, n in uses.items() if n == 1]
    body = " * ".join(parts) if parts else "1"
    if coefficient == 1:
        return body, len(names)
    if coefficient == -1:
        return "-" + body, len(names)
    text = format_scalar(coefficient)   # `.tn` text: no `**`
    if isinstance(coefficient, sympy.Add):
        text = f"({text})"
    return f"{text} * {body}", len(names)


def render_polynomial(poly: Polynomial, *, dummy: str = "i",
                      display: Mapping[str, str] | None = None) -> str:
    """`.tn` text for a sum of monomials. Dummy names run on from one monomial to the
    next: in `.tn` an index name stands for one dim throughout an equation, and two
    monomials' dummies may be legs of different dims."""
    terms, used = [], 0
    for key, coefficient in sorted(poly.items(), key=repr):
        text, n = _render_monomial(key, coefficient, dummy, display, used + 1)
        terms.append(text)
        used += n
    text = " + ".join(terms) if terms else "0"
    return text.replace("+ -", "- ")


# ---- case split on mask conditions --------------------------------------------------------

MAX_SPLIT_CONDITIONS = 8


def case_split(poly: Polynomial, free_dims: Mapping[str, str], deadline=None,
               lemmas: Lemmas | None = None) -> bool:
    """Whether `poly` is zero by cases on its masks' conditions: when every indicator is
    on free legs, each assignment of true or false to the conditions that can hold
    together (masks.simplify) leaves a polynomial without masks, which must cancel.
    False when it does not, or the split does not apply (too many conditions, a
    condition on a summed index)."""
    free = set(free_dims)
    parts = []
    conditions: dict[tuple, None] = {}
    for key, coefficient in poly.items():
        core, conds = [], []
        for name, indices in key:
            if masks.is_indicator(name):
                if not set(indices) <= free:
                    return False
                if masks.symmetric(name):
                    indices = tuple(sorted(indices))
                conds.append((name, indices))
                conditions.setdefault((name, indices))
            else:
                core.append((name, indices))
        parts.append((tuple(core), frozenset(conds), coefficient))
    conditions = list(conditions)
    if not conditions or len(conditions) > MAX_SPLIT_CONDITIONS:
        return False
    cores: dict[tuple, tuple] = {}

    def core_key(core: tuple) -> tuple:
        if core not in cores:
            have = {i for _, idx in core for i in idx}
            ones = tuple((f"ones:{free_dims[i]}", (i,)) for i in sorted(free - have))
            coefficient, factors = _drop_ones(sympy.Integer(1), core + ones, free)
            cores[core] = (canonical(factors, free, deadline, lemmas), coefficient)
        return cores[core]

    for truth in itertools.product((True, False), repeat=len(conditions)):
        literals = tuple(c if t else masks.complement(*c) for c, t in zip(conditions, truth))
        if masks.simplify(literals) is None:
            continue  # these conditions cannot hold together
        holding = {c for c, t in zip(conditions, truth) if t}
        region: Polynomial = {}
        for core, conds, coefficient in parts:
            if conds <= holding:
                key, factor = core_key(core)
                region[key] = region.get(key, 0) + coefficient * factor
        if any(sympy.expand(c) != 0 for c in region.values()):
            return False
    if lemmas is not None:
        lemmas.used.add("case split on mask conditions")
    return True
