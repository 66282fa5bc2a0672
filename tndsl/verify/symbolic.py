"""The symbolic tier: expand both sides of an identity into canonical monomials.

Expansion inlines named equations down to params and inputs, distributes products over
sums and collects scalar coefficients (sympy expressions in the dims). A monomial is an
einsum: factors with index tuples, where a free index keeps its name and every other
index is a dummy joining the slots it occurs in — two slots (a wire), or three or more
(a copy dot), which needs no special tensor here.

The canonical form of a monomial is invariant under renaming dummies and reordering
factors, and respects free-leg names and slot order (a transposed tensor is another
monomial). It is computed by colour refinement (Weisfeiler–Lehman) of the factors,
then, within classes of factors refinement cannot tell apart, by trying every order
and keeping the smallest serialisation — exact, because refinement colours are
invariant, so only orders within classes are candidates. (sympy's `canon_bp` solves the
same problem for tensors with a metric; here indices have no up/down position and
copy dots are hyperedges, which this formulation handles directly.)

A box or mask is opaque: a factor named by its function, its legs' slots and the
canonical form of its argument, so `softmax[s](A)` on both sides cancels, and nothing
is assumed about what the function does.
"""
from __future__ import annotations

import itertools
import re
from typing import Mapping

import sympy

from tndsl import dims as dimmod, ir

MAX_MONOMIALS = 20_000      # beyond this, the symbolic tier gives up (unknown)
MAX_ORDERINGS = 5_040       # tie-break orders tried per monomial (7!)
MAX_BOX_SLOTS = 5           # a box's slot orders tried: 5! = 120


class TooLarge(Exception):
    """The expansion would exceed MAX_MONOMIALS."""


# A factor: (name, indices), where the name of a box or mask is its canonical text
# (`softmax[#1](...)` with its slots numbered). A monomial: tuple of factors. A
# polynomial: {canonical monomial: coefficient}.
Polynomial = dict


class Expander:
    """Expands expressions of a checked program. Fresh dummies are `~0`, `~1`, ...
    (a `~` cannot appear in a `.tn` index name)."""

    def __init__(self, program):
        self.program = program
        self.equations = {eq.name: eq for eq in program.network.equations}
        self.tensors = {t.name: t for t in program.network.tensors}
        self.counter = itertools.count()
        self.has_boxes = False
        self.opaque: dict[tuple, tuple[str, tuple[int, ...]]] = {}
        self.display: dict[str, str] = {}  # opaque name -> how to show it, slots #0, #1
        self.box_depth = 0

    def side(self, expr: ir.Sum, legs: tuple[str, ...], index_dims: Mapping[str, str]
             ) -> Polynomial:
        """One side of a check with free legs `legs`."""
        free = set(legs)
        return _collect(self.expand(expr, {i: i for i in legs}, index_dims, free), free)

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
        return [(one, (self._opaque(factor, legs, subst, dims),))]

    def _opaque(self, factor, legs: list[str], subst, dims) -> tuple:
        """A box or mask over `legs` as one factor, its slots in the order that makes its
        name smallest, so that the same box written with other index names matches."""
        key = (id(factor), tuple(legs))
        if key not in self.opaque:  # the same box recurs in many monomials
            self.opaque[key] = self._opaque_name(factor, legs, dims)
        name, order = self.opaque[key]
        return (name, tuple(subst[legs[j]] for j in order))

    def _named_opaque(self, eq: ir.Equation, box, indices: tuple, dims) -> tuple:
        """The box an equation consists of, remembering to display it by the equation's
        name (its canonical name, which decides equality, is its full argument)."""
        self.has_boxes = True
        legs = list(eq.indices)
        key = (id(box), tuple(legs))
        if key not in self.opaque:
            self.opaque[key] = self._opaque_name(box, legs, dims)
        name, order = self.opaque[key]
        slot = {legs[j]: n for n, j in enumerate(order)}
        self.display[name] = f"{eq.name}[{', '.join(f'#{slot[i]}' for i in eq.indices)}]"
        subst = dict(zip(eq.indices, indices))
        return (name, tuple(subst[legs[j]] for j in order))

    def _opaque_name(self, factor, legs: list[str], dims) -> tuple[str, tuple[int, ...]]:
        best = None
        # Every order of up to MAX_BOX_SLOTS slots; beyond, only the written one (sound,
        # but the same box written with other index names may not match).
        orders = (itertools.permutations(range(len(legs))) if len(legs) <= MAX_BOX_SLOTS
                  else [tuple(range(len(legs)))])
        # Dummies inside a box are named by its nesting depth (j1, then jj1 inside a box
        # inside it): the name stays canonical and reads back as `.tn` with each box's
        # contractions kept inside it.
        self.box_depth += 1
        try:
            for order in orders:
                slots = {legs[j]: f"#{n}" for n, j in enumerate(order)}
                poly = _collect(self.expand(factor.argument, dict(slots), dims, set(legs)),
                                set(slots.values()))
                argument = render_polynomial(poly, dummy="j" * self.box_depth)
                if isinstance(factor, ir.Mask):
                    conds = " and ".join(c.text(slots[c.left], slots[c.right])
                                         for c in factor.conditions)
                    name = f"({argument} where {conds})"
                else:
                    name = f"{_kind(factor, slots)}({argument})"
                if best is None or name < best[0]:
                    best = (name, order)
        finally:
            self.box_depth -= 1
        return best


def _collect(monomials, free: set[str]) -> Polynomial:
    poly: Polynomial = {}
    for coefficient, factors in monomials:
        coefficient, factors = _drop_ones(coefficient, factors, free)
        key = canonical(factors, free)
        poly[key] = poly.get(key, 0) + coefficient
    expanded = {k: sympy.expand(c) for k, c in poly.items()}
    return {k: c for k, c in expanded.items() if c != 0}


def _drop_ones(coefficient, factors: tuple, free: set[str]):
    """Normal form for `ones`: it changes nothing on a leg another factor has; a free leg
    only ones have keeps one; summing ones over a leg nothing else has is its size."""
    others = {i for name, indices in factors if not name.startswith("ones:") for i in indices}
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
            kept.append((name, indices))
        else:
            coefficient *= dimmod.symbol(name[len("ones:"):])
    return coefficient, tuple(kept)


def _single_box(eq: ir.Equation):
    """The box or mask if the equation is exactly one, over exactly its legs."""
    if len(eq.rhs.terms) != 1:
        return None
    term = eq.rhs.terms[0]
    if term.coefficient != 1 or len(term.factors) != 1:
        return None
    factor = term.factors[0]
    if not isinstance(factor, (ir.Box, ir.Mask)):
        return None
    if set(ir.free_legs(factor, set(eq.indices))) != set(eq.indices):
        return None
    return factor


def _kind(factor, slots: Mapping[str, str]) -> str:
    eps = f"; eps={factor.eps!r}" if factor.eps is not None else ""
    if factor.legs:
        return f"{factor.function}[{', '.join(slots[l] for l in factor.legs)}{eps}]"
    return factor.function


# ---- canonical form ---------------------------------------------------------------------

def canonical(factors: tuple, free: set[str]) -> tuple:
    """The canonical serialisation of a monomial (see the module docstring)."""
    n = len(factors)
    if n == 0:
        return ()
    occurrences: dict[str, list[tuple[int, int]]] = {}
    for f, (_, indices) in enumerate(factors):
        for s, index in enumerate(indices):
            occurrences.setdefault(index, []).append((f, s))
    colours = [repr((name, tuple(i if i in free else len(occurrences[i]) for i in indices)))
               for name, indices in factors]
    for _ in range(n):
        refined = []
        for f, (name, indices) in enumerate(factors):
            neighbours = []
            for s, index in enumerate(indices):
                if index in free:
                    continue
                neighbours.append((s, tuple(sorted((colours[g], t)
                                                   for g, t in occurrences[index]
                                                   if (g, t) != (f, s)))))
            refined.append(repr((colours[f], tuple(neighbours))))
        # Relabel to short ranks so colours stay small.
        ranks = {c: str(r) for r, c in enumerate(sorted(set(refined)))}
        refined = [ranks[c] for c in refined]
        stable = len(set(refined)) == len(set(colours))
        colours = refined
        if stable:
            break
    groups: dict[str, list[int]] = {}
    for f in range(n):
        groups.setdefault(colours[f], []).append(f)
    ordered = [groups[c] for c in sorted(groups, key=lambda c: int(c))]
    best = None
    tried = 0
    for choice in itertools.product(*(itertools.permutations(g) for g in ordered)):
        order = [f for group in choice for f in group]
        serial = _serialise(factors, order, free)
        if best is None or serial < best:
            best = serial
        tried += 1
        if tried >= MAX_ORDERINGS:
            break  # sound but possibly incomplete: equal monomials might not match
    return best


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
    names: dict[str, str] = {}

    def index(i: str) -> str:
        if i.startswith("~"):
            names.setdefault(i, f"{dummy}{len(names) + 1}")
            return names[i]
        return i

    parts = []
    for name, indices in key:
        shown = ", ".join(index(i) for i in indices)
        if name.startswith("ones:"):
            parts.append(f"ones[{shown}]")
        elif "(" in name:  # an opaque box or mask: put its legs into its slots
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
    body = " * ".join(parts) if parts else "1"
    if coefficient == 1:
        return body
    if coefficient == -1:
        return "-" + body
    text = sympy.sstr(coefficient)
    if isinstance(coefficient, sympy.Add):
        text = f"({text})"
    return f"{text} * {body}"


def render_polynomial(poly: Polynomial, *, dummy: str = "i") -> str:
    terms = [render_monomial(k, c, dummy=dummy) for k, c in sorted(poly.items(), key=repr)]
    text = " + ".join(terms) if terms else "0"
    return text.replace("+ -", "- ")
