"""Mask conditions in normal form, as indicator factors of a monomial.

A mask `X where c1 and c2` is X times one indicator per condition ([c] is 1 where the
condition holds, else 0), so masks distribute over sums and commute with products like
any factor. Each condition is written one way only: `a op b + c` over integer positions
becomes `a <= b + c`, `a == b + c` or `a != b + c` (`p - s < 3`, `s > p - 3` and
`s - p > -3` are all `p <= s + 2`); an equality or inequality is oriented so that its
offset has no minus sign (and, with offset 0, it is symmetric in its two slots).

On one monomial the indicators then simplify: two bounds on the same pair keep the
stricter (a stricter mask under a looser one), a lower and an upper bound that meet are
an equality and bounds that cross are an empty mask (the monomial is zero), and a
condition on one index against itself is a constant. Across monomials, a condition and
its complement add up to 1 (`A where s <= p` + `A where s > p` is `A`).
"""
from __future__ import annotations

import functools

import sympy

PREFIX = "where:"


def indicator(left: str, op: str, right: str, offset) -> tuple[str, tuple[str, str]]:
    """The indicator factor of `left op right + offset`, in normal form."""
    offset = sympy.sympify(offset)
    if op == ">=":            # a >= b + c  ⇔  b <= a - c
        left, right, offset, op = right, left, -offset, "<="
    elif op == ">":           # a > b + c  ⇔  b <= a - c - 1
        left, right, offset, op = right, left, -offset - 1, "<="
    elif op == "<":           # a < b + c  ⇔  a <= b + c - 1
        offset, op = offset - 1, "<="
    offset = sympy.expand(offset)
    if op in ("==", "!=") and offset != 0 and offset.could_extract_minus_sign():
        left, right, offset = right, left, -offset
    return factor_name(op, offset), (left, right)


@functools.lru_cache(maxsize=4096)
def _offset(text: str) -> sympy.Expr:
    return sympy.sympify(text)


def factor_name(op: str, offset) -> str:
    return f"{PREFIX}{op}:{sympy.sstr(sympy.expand(offset))}"


def parse(name: str) -> tuple[str, sympy.Expr]:
    """(op, offset) of an indicator factor's name."""
    op, _, offset = name[len(PREFIX):].partition(":")
    return op, _offset(offset)


def is_indicator(name: str) -> bool:
    return name.startswith(PREFIX)


def symmetric(name: str) -> bool:
    """An equality or inequality with offset 0 reads the same with its slots swapped."""
    op, offset = parse(name)
    return op in ("==", "!=") and offset == 0


def complement(name: str, indices: tuple[str, str]) -> tuple[str, tuple[str, str]]:
    """The indicator of the negated condition: not (a <= b + c) is b <= a - c - 1."""
    op, offset = parse(name)
    a, b = indices
    if op == "<=":
        return indicator(b, "<=", a, -offset - 1)
    return indicator(a, "!=" if op == "==" else "==", b, offset)


def text(name: str, indices: tuple[str, str]) -> str:
    """`.tn` text of the condition: `a <= b + 2`."""
    op, offset = parse(name)
    a, b = indices
    if offset == 0:
        return f"{a} {op} {b}"
    shown = sympy.sstr(offset)
    return f"{a} {op} {b} - {sympy.sstr(-offset)}" if shown.startswith("-") \
        else f"{a} {op} {b} + {shown}"


def _sign(value) -> int | None:
    """-1, 0 or 1 where sympy can tell (dims are positive integers), else None."""
    value = sympy.expand(value)
    if value == 0:
        return 0
    if value.is_positive:
        return 1
    if value.is_negative:
        return -1
    return None


def simplify(factors: tuple) -> tuple | None:
    """The monomial's factors with its indicators simplified; None when they cannot all
    hold (the monomial is zero). Non-indicator factors are kept in order."""
    bounds: dict[tuple[str, str], list] = {}
    others, kept = [], []
    for name, indices in factors:
        if not is_indicator(name):
            others.append((name, indices))
            continue
        op, offset = parse(name)
        a, b = indices
        if a == b:  # a op a + c: a constant
            truth = {"<=": _sign(offset) is not None and _sign(offset) >= 0,
                     "==": offset == 0, "!=": _sign(offset) not in (0, None)}[op]
            falsity = {"<=": _sign(offset) == -1, "==": _sign(offset) not in (0, None),
                       "!=": offset == 0}[op]
            if falsity:
                return None
            if truth:
                continue
            kept.append((name, indices))
        elif op == "<=":
            bounds.setdefault((a, b), []).append(offset)
        else:
            kept.append((name, indices))
    # a <= b + c1 and a <= b + c2: the smaller bound, where sympy can order them
    tightest: dict[tuple[str, str], list] = {}
    for pair, offsets in bounds.items():
        chosen: list = []
        for c in offsets:
            replaced = False
            for k, d in enumerate(chosen):
                s = _sign(c - d)
                if s is not None:
                    chosen[k] = c if s < 0 else d
                    replaced = True
                    break
            if not replaced:
                chosen.append(c)
        tightest[pair] = chosen
    done = set()
    for (a, b), offsets in tightest.items():
        if (a, b) in done:
            continue
        opposite = tightest.get((b, a), [])
        done.update({(a, b), (b, a)})
        # a <= b + c and b <= a + d: b - d <= a <= b + c
        if len(offsets) == 1 and len(opposite) == 1:
            c, d = offsets[0], opposite[0]
            s = _sign(c + d)
            if s == -1:
                return None
            if s == 0:
                kept.append(indicator(a, "==", b, c))
                continue
        kept += [indicator(a, "<=", b, c) for c in offsets]
        kept += [indicator(b, "<=", a, d) for d in opposite]
    # an equality implies the bounds and inequalities that it satisfies
    equalities = {}
    for name, (a, b) in kept:
        op, offset = parse(name)
        if op == "==":
            equalities[(a, b)] = offset
            equalities[(b, a)] = -offset
    final = []
    for name, (a, b) in kept:
        op, offset = parse(name)
        if op != "==" and (a, b) in equalities:
            e = equalities[(a, b)]  # a == b + e
            s = _sign(offset - e)
            if op == "<=":
                if s is not None and s >= 0:
                    continue
                if s == -1:
                    return None
            elif op == "!=" and s is not None:
                if s != 0:
                    continue
                return None
        final.append((name, (a, b)))
    return tuple(others) + tuple(sorted(set(final)))
