"""Lemmas the symbolic tier applies to a monomial: what the built-in fixed tensors and
boxes are, as rewrites that keep its value. Each is applied only where its side
conditions hold syntactically, and each is named in the proof that used it.

Fixed tensors (`tndsl.lang.fixed`); a dummy is an index summed inside the monomial:
- rotary orthogonality: R[p, e, f] R[p, e, g] summed over e is [f == g] (RᵀR = I on the
  rotated block, and the pass-through block of a partial rotary is the identity);
  likewise R[p, e, f] R[p, g, f] summed over f (R Rᵀ = I);
- rotary relative position: R[p, e, f] R[s, e, g] summed over e is R(s - p)[f, g], a
  factor `rel:R` over (p, s, f, g) that depends on p and s only through s - p: it is
  the same factor at (p', s') wherever the monomial's equality masks give
  p' = p + k and s' = s + k, and R(s - p)[f, g] = R(p - s)[g, f]; two of them compose,
  R(s - p) R(t - s) = R(t - p) (the identity when t = p);
- grouping rows: G[h, g] summed over g is 1 (each query head is in one group), and
  summed over h it is Heads / KVHeads (each group has that many heads);
- grouping columns: G[h, a] G[h, b] summed over h is (Heads / KVHeads) [a == b];
- grouping entries are 0 or 1: G[h, g] G[h, g] is G[h, g].
Boxes:
- softmax sums to one: softmax[s](X) summed over s is 1 (a masked softmax too, where
  every row keeps an entry: each condition holds at s = its other leg, of s's dim).
Masks: the conditions' normal form and conjunctions (`masks.py`), and diagonals:
Σ_b X[b] [a == b] is X[a] for a summed b of a's dim.

A fixed tensor this module does not know (a new one) is an arbitrary tensor here, so a
proof never rests on an unknown tensor's values.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping

import sympy

from tndsl.lang import dims as dimmod
from tndsl.verify import masks

REL = "rel:"
MAX_VARIANTS = 64


def dummy(index: str) -> bool:
    return index.startswith("~")


@dataclass(frozen=True)
class BoxInfo:
    """What the lemmas need to know of a box: its function, the canonical slots of its
    axes, whether it is masked (and whether every row keeps an entry), its slots' dims."""
    function: str
    axes: tuple[int, ...]
    masked: bool
    rows_nonempty: bool
    slot_dims: tuple[str, ...]


class Lemmas:
    def __init__(self, tensors: Mapping):
        self.tensors = tensors
        self.fixed = {name: t for name, t in tensors.items() if t.kind == "fixed"}
        families: dict[tuple, str] = {}
        for name in sorted(self.fixed):
            families.setdefault(self._family(name), name)
        # fixed tensors with the same function, arguments and dims are the same tensor
        self.representative = {name: families[self._family(name)] for name in self.fixed}
        self.boxes: dict[str, BoxInfo] = {}
        self.symmetries: dict[str, list[tuple[int, ...]]] = {}  # box -> slot permutations
        self.used: set[str] = set()

    def _family(self, name: str) -> tuple:
        t = self.fixed[name]
        return (t.fixed.function, t.fixed.args, tuple(leg.dim for leg in t.legs))

    def _kind(self, name: str) -> str | None:
        t = self.fixed.get(name)
        return t.fixed.function if t is not None else None

    # ---- rewriting one monomial --------------------------------------------------------
    def apply(self, coefficient, factors: tuple, free: set[str], free_dims=None):
        """(coefficient, factors) after every lemma that applies, repeatedly; factors is
        None when the monomial is zero. `free_dims` gives the free legs' dims."""
        factors = tuple((self.representative.get(n, n), i) for n, i in factors)
        for _ in range(4 * len(factors) + 4):
            if factors is None:
                return coefficient, None
            step = self._step(coefficient, factors, free, free_dims or {})
            if step is None:
                return coefficient, factors
            coefficient, factors = step
        return coefficient, factors

    def _step(self, coefficient, factors, free, free_dims):
        """One rewrite, or None when none applies."""
        if any(masks.is_indicator(n) for n, _ in factors):
            simplified = masks.simplify(factors)
            if simplified is None:
                self.used.add("mask conjunction")
                return coefficient, None
            if sorted(simplified) != sorted(factors):
                self.used.add("mask conjunction")
                return coefficient, simplified
        counts: dict[str, int] = {}
        for _, indices in factors:
            for i in indices:
                counts[i] = counts.get(i, 0) + 1

        def once(i: str) -> bool:
            return dummy(i) and counts[i] == 1

        for k, (name, indices) in enumerate(factors):
            rest = factors[:k] + factors[k + 1:]
            if masks.is_indicator(name) and name == masks.factor_name("==", 0):
                # Σ_b f(b) [a == b] = f(a) for a summed b of a's dim: a diagonal
                a, b = indices
                if not dummy(b):
                    a, b = b, a
                if dummy(b) and a != b:
                    dims = self._dims(rest, free_dims)
                    if dims.get(a) is not None and dims.get(a) == dims.get(b):
                        self.used.add("diagonal")
                        return coefficient, tuple((n, tuple(a if i == b else i for i in idx))
                                                  for n, idx in rest)
            kind = self._kind(name)
            if kind == "grouping" and once(indices[1]):
                self.used.add("grouping rows sum to one")
                head = self.fixed[name].legs[0].dim
                return coefficient, _with_ones(rest, indices[0], head)
            if kind == "grouping" and once(indices[0]):
                self.used.add("grouping columns sum to Heads/KVHeads")
                heads, groups = (leg.dim for leg in self.fixed[name].legs)
                return (coefficient * dimmod.symbol(heads) / dimmod.symbol(groups),
                        _with_ones(rest, indices[1], groups))
            info = self.boxes.get(name)
            if info is not None and info.function == "softmax" and info.axes and \
                    all(once(indices[a]) for a in info.axes) and \
                    (not info.masked or info.rows_nonempty):
                self.used.add("softmax sums to one")
                for s, i in enumerate(indices):
                    if s not in info.axes:
                        rest = _with_ones(rest, i, info.slot_dims[s])
                return coefficient, rest
        for j, k in itertools.combinations(range(len(factors)), 2):
            (a, x), (b, y) = factors[j], factors[k]
            if a == b and a.startswith(REL):
                composed = self._compose(coefficient, factors, j, k, counts)
                if composed is not None:
                    return composed
                continue
            if a != b or a not in self.fixed:
                continue
            rest = tuple(f for n, f in enumerate(factors) if n not in (j, k))
            kind = self._kind(a)
            tensor = self.fixed[a]
            if kind == "rotary":
                (p, e, f), (q, e2, g) = x, y
                if e == e2 and dummy(e) and counts[e] == 2:
                    return self._rotary(coefficient, rest, a, p, q, f, g, counts, tensor)
                if f == g and dummy(f) and counts[f] == 2:
                    # R[p] R[q]ᵀ = R(p - q): rel from q to p
                    return self._rotary(coefficient, rest, a, q, p, e, e2, counts, tensor)
            elif kind == "grouping":
                if x == y:
                    self.used.add("grouping entries are 0 or 1")
                    return coefficient, rest + ((a, x),)
                if x[0] == y[0] and dummy(x[0]) and counts[x[0]] == 2:
                    self.used.add("grouping columns: GᵀG = (Heads/KVHeads) I")
                    heads, groups = (leg.dim for leg in tensor.legs)
                    coefficient = coefficient * dimmod.symbol(heads) / dimmod.symbol(groups)
                    return _identity(coefficient, rest, x[1], y[1], groups)
        return None

    def _dims(self, factors, free_dims) -> dict[str, str]:
        """The dim of each index, from the factors that tell it (tensors, `ones`, boxes,
        relative rotary factors) and the free legs' dims."""
        dims = dict(free_dims)
        for name, indices in factors:
            if name.startswith("ones:"):
                slot_dims = (name[len("ones:"):],)
            elif name in self.tensors:
                slot_dims = tuple(leg.dim for leg in self.tensors[name].legs)
            elif name in self.boxes:
                slot_dims = self.boxes[name].slot_dims
            elif name.startswith(REL) and name[len(REL):] in self.fixed:
                legs = self.fixed[name[len(REL):]].legs
                slot_dims = (legs[0].dim, legs[0].dim, legs[1].dim, legs[2].dim)
            else:
                continue
            for index, dim in zip(indices, slot_dims):
                dims.setdefault(index, dim)
        return dims

    def _compose(self, coefficient, factors, j, k, counts):
        """R(b - a) R(c - b) = R(c - a): two relative rotary factors of one map that
        share a summed matrix index and the middle position (either may be read
        transposed, R(b - a)[f, g] = R(a - b)[g, f])."""
        name = factors[j][0]
        rest = tuple(f for n, f in enumerate(factors) if n not in (j, k))
        for a, b, f, g in (factors[j][1], _transposed(factors[j][1])):
            for c, d, h, l in (factors[k][1], _transposed(factors[k][1])):
                if g == h and dummy(g) and counts[g] == 2 and b == c:
                    self.used.add("rotary relative position")
                    if a == d:  # R(b - a) R(a - b) = I
                        tensor = self.fixed[name[len(REL):]]
                        return _identity(coefficient, rest, f, l, tensor.legs[1].dim)
                    return coefficient, rest + ((name, (a, d, f, l)),)
        return None

    def _rotary(self, coefficient, rest, name, p, q, f, g, counts, tensor):
        head = tensor.legs[1].dim
        if p == q:
            self.used.add("rotary orthogonality")
            if dummy(p) and counts[p] == 2:  # the position was summed over too
                coefficient = coefficient * dimmod.symbol(tensor.legs[0].dim)
            elif not dummy(p) and not any(p in i for _, i in rest):
                rest = rest + ((f"ones:{tensor.legs[0].dim}", (p,)),)
            return _identity(coefficient, rest, f, g, head)
        self.used.add("rotary relative position")
        return coefficient, rest + ((REL + name, (p, q, f, g)),)

    # ---- equivalent forms of one monomial ---------------------------------------------
    def variants(self, factors: tuple) -> list[tuple]:
        """Monomials equal to this one factor by factor: symmetric slots of boxes and
        indicators, and relative rotary factors shifted along equality masks or
        transposed. The canonical form is the least over these."""
        options = []
        classes = None
        for name, indices in factors:
            choices = {indices}
            if name in self.symmetries:
                choices |= {tuple(indices[s] for s in perm) for perm in self.symmetries[name]}
            elif masks.is_indicator(name) and masks.symmetric(name):
                choices.add(indices[::-1])
            elif name.startswith(REL):
                if classes is None:
                    classes = _offsets(factors)
                p, s, f, g = indices
                shifted = {(p, s)}
                if p in classes and s in classes:
                    (rp, op), (rs, os_) = classes[p], classes[s]
                    for p2, (r2, o2) in classes.items():
                        if r2 != rp:
                            continue
                        k = o2 - op
                        for s2, (r3, o3) in classes.items():
                            if r3 == rs and sympy.expand(o3 - os_ - k) == 0:
                                shifted.add((p2, s2))
                choices = {(a, b, f, g) for a, b in shifted} | {(b, a, g, f) for a, b in shifted}
            options.append(sorted(choices))
        total = 1
        for o in options:
            total *= len(o)
        if total == 1:
            return [factors]
        if total > MAX_VARIANTS:  # fewer variants: still sound, only less complete
            options = [o[:1] if len(o) > 2 else o for o in options]
        out = []
        for combo in itertools.product(*options):
            out.append(tuple((name, idx) for (name, _), idx in zip(factors, combo)))
            if len(out) >= MAX_VARIANTS:
                break
        return out


def _with_ones(rest: tuple, index: str, dim: str) -> tuple:
    """`rest`, with `ones` on `index` if no factor of it has that index (so that it
    stays a leg, or a sum over its dim)."""
    if any(index in idx for _, idx in rest):
        return rest
    return rest + ((f"ones:{dim}", (index,)),)


def _transposed(indices: tuple) -> tuple:
    p, s, f, g = indices
    return (s, p, g, f)


def _identity(coefficient, rest, f: str, g: str, dim: str):
    """The monomial `rest` times [f == g] (an identity matrix over `dim`)."""
    if f == g:
        if dummy(f) and not any(f in i for _, i in rest):
            return coefficient * dimmod.symbol(dim), rest
        if not dummy(f) and not any(f in i for _, i in rest):
            return coefficient, rest + ((f"ones:{dim}", (f,)),)
        return coefficient, rest
    if dummy(g) or dummy(f):
        gone, kept = (g, f) if dummy(g) else (f, g)
        return coefficient, tuple((n, tuple(kept if i == gone else i for i in idx))
                                  for n, idx in rest)
    return coefficient, rest + (masks.indicator(f, "==", g, 0),)


def _offsets(factors) -> dict[str, tuple[str, sympy.Expr]]:
    """Indices joined by equality masks (a == b + c), each with its class's root and
    its offset from it."""
    parent: dict[str, tuple[str, sympy.Expr]] = {}

    def find(i):
        if i not in parent:
            parent[i] = (i, sympy.Integer(0))
        root, offset = parent[i]
        if root == i:
            return i, offset
        r, o = find(root)
        parent[i] = (r, offset + o)
        return parent[i]

    for name, indices in factors:
        if masks.is_indicator(name):
            op, c = masks.parse(name)
            if op == "==":
                a, b = indices
                (ra, oa), (rb, ob) = find(a), find(b)
                if ra != rb:  # a = b + c: a's root sits at ob + c - oa from b's root
                    parent[ra] = (rb, ob + c - oa)
    return {i: find(i) for i in list(parent)}
