"""Leg typing: IR → checked IR (every equation's legs and index dims filled in).

The rules (docs/language.md, "Contraction and free legs"):
- An index takes the dim of the first leg it binds in an equation; binding a leg of
  another dim is an error naming both places.
- In a product term, an index kept outside the term (on the left-hand side, or used
  outside the box or bracket the term sits in) is a free leg; any other index must
  occur at least twice and is contracted. An index occurring once and not kept is an
  open leg the left-hand side does not have: an error.
- Every term of a sum has the same free legs; at the top of an equation those are
  exactly the left-hand side's.
- A box's legs, and a mask's indices, are free legs of their argument; a box or a
  bracket contributes its argument's free legs to the enclosing term.
- In a `check` without explicit legs, the free legs of a side are the indices that occur
  once (Einstein's convention); both sides must agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tndsl.lang import ir
from tndsl.lang.errors import (BlockError, CycleError, LegError, Note, Span, TnError,
                          TnWarning)


@dataclass
class Checked:
    network: ir.Network
    errors: list[TnError]
    warnings: list[TnWarning]


def check(network: ir.Network) -> Checked:
    return _Checker(network).run()


@dataclass
class _Indices:
    """The dims bound to an equation's index names, with where each was first bound."""

    dims: dict[str, str] = field(default_factory=dict)
    first: dict[str, Span | None] = field(default_factory=dict)

    def bind(self, index: str, dim: str | None, span: Span | None) -> None:
        if dim is None:
            return
        if index not in self.dims:
            self.dims[index] = dim
            self.first[index] = span
        elif self.dims[index] != dim:
            notes = [Note(self.first[index], f"`{index}` bound to a leg of dim "
                                             f"{self.dims[index]} here")] if self.first[index] else []
            raise LegError(f"index `{index}` is bound to a leg of dim {dim} here, but to "
                           f"{self.dims[index]} elsewhere in this equation", span, notes=notes,
                           hint="use two index names if these are different legs")


class _Checker:
    def __init__(self, network: ir.Network):
        self.network = network
        self.errors: list[TnError] = []
        self.tensors = {t.name: t for t in network.tensors}
        self.equations = {eq.name: eq for eq in network.equations}
        # Legs of everything referable; None dims for equations that failed to check,
        # so their users are checked for counts only and errors do not cascade.
        self.legs: dict[str, tuple[ir.Leg, ...] | None] = {
            t.name: t.legs for t in network.tensors}

    def run(self) -> Checked:
        order = self._order()
        checked: dict[str, ir.Equation] = {}
        for name in order:
            eq = self.equations[name]
            try:
                checked[name] = self._equation(eq)
                self.legs[name] = checked[name].legs
            except _Poisoned:
                self.legs[name] = None
            except TnError as e:
                self.errors.append(e)
                self.legs[name] = None
        self._instances()
        checks = [c for c in (self._check(c) for c in self.network.checks) if c is not None]
        network = ir.Network(self.network.dims, self.network.tensors,
                             tuple(checked[eq.name] for eq in self.network.equations
                                   if eq.name in checked),
                             self.network.instances, tuple(checks), self.network.source)
        return Checked(network, self.errors, self._warnings())

    # ---- order and cycles ------------------------------------------------------------
    def _order(self) -> list[str]:
        """Equations in dependency order; those on a cycle are reported and left out."""
        deps = {name: [r for r in ir.refs(eq.rhs) if r.name in self.equations]
                for name, eq in self.equations.items()}
        state: dict[str, int] = {}  # 1: on the stack, 2: done
        order: list[str] = []
        for root in self.equations:
            if root in state:
                continue
            # Iterative depth-first search: a long chain of definitions must not hit
            # Python's recursion limit.
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[str] = [root]
            state[root] = 1
            while stack:
                name, i = stack[-1]
                if i < len(deps[name]):
                    stack[-1] = (name, i + 1)
                    ref = deps[name][i]
                    if state.get(ref.name) == 1:
                        cycle = path[path.index(ref.name):] + [ref.name]
                        self.errors.append(CycleError(
                            f"`{ref.name}` depends on itself: " + " → ".join(cycle), ref.span,
                            hint="an equation cannot use its own result; in a loop, rebinding "
                                 "a name makes a new version instead"))
                        for n in cycle:
                            state[n] = 2
                    elif ref.name not in state:
                        state[ref.name] = 1
                        stack.append((ref.name, 0))
                        path.append(ref.name)
                else:
                    stack.pop()
                    path.pop()
                    if state.get(name) == 1:
                        state[name] = 2
                        order.append(name)
        placed = set(order)  # not `in order`: a list, and this loop is over every equation
        on_cycle = {n for n in self.equations if n not in placed}
        for n in on_cycle:
            self.legs[n] = None
        return order

    # ---- equations -------------------------------------------------------------------
    def _equation(self, eq: ir.Equation) -> ir.Equation:
        table = _Indices()
        keep = set(eq.indices)
        free_by_term = self._sum_terms(eq.rhs, keep, table, einstein=False)
        for term, free in zip(eq.rhs.terms, free_by_term):
            missing = [i for i in eq.indices if i not in free]
            if missing:
                raise LegError(
                    f"left-hand-side leg `{missing[0]}` does not appear in this term",
                    term.span or eq.span,
                    hint=f"every term of `{eq.name}` needs the legs "
                         f"[{', '.join(eq.indices)}]; broadcasting is never implicit: "
                         f"multiply by `ones[{missing[0]}]` to broadcast over it")
        _ones_dims_known(eq.rhs, table)
        legs = tuple(ir.Leg(i, table.dims[i]) for i in eq.indices if i in table.dims)
        if len(legs) != len(eq.indices):  # only references to failed equations bound it
            raise _Poisoned(eq.name)
        index_dims = tuple(ir.Leg(i, d) for i, d in sorted(table.dims.items()))
        return ir.Equation(eq.name, eq.indices, eq.rhs, eq.span, legs, index_dims, eq.instance)

    def _sum_terms(self, expr: ir.Sum, keep: set[str], table: _Indices, *,
                   einstein: bool) -> list[frozenset[str]]:
        return [self._term(term, keep, table, einstein) for term in expr.terms]

    def _sum(self, expr: ir.Sum, keep: set[str], table: _Indices, einstein: bool
             ) -> frozenset[str]:
        """The free legs of a bracketed sum or box argument; all its terms must agree."""
        frees = self._sum_terms(expr, keep, table, einstein=einstein)
        first = frees[0]
        for term, free in zip(expr.terms[1:], frees[1:]):
            if free != first:
                diff = sorted(first ^ free)
                raise LegError(
                    f"terms of this sum have different free legs: this term has "
                    f"[{', '.join(sorted(free))}], the first has [{', '.join(sorted(first))}]",
                    term.span or expr.span,
                    hint=f"leg `{diff[0]}` is in one term and not the other")
        return first

    def _term(self, term: ir.Term, keep: set[str], table: _Indices, einstein: bool
              ) -> frozenset[str]:
        counts: dict[str, int] = {}
        where: dict[str, Span | None] = {}
        for k, factor in enumerate(term.factors):
            if isinstance(factor, ir.Ref):
                legs = self._ref(factor, table)
            else:
                outside = set(keep)
                for j, other in enumerate(term.factors):
                    if j != k:
                        outside |= ir.indices(other)
                legs = self._composite(factor, outside, table, einstein)
            for index in legs:
                counts[index] = counts.get(index, 0) + 1
                where.setdefault(index, factor.span)
        free = set()
        for index, count in counts.items():
            if index in keep or (einstein and count == 1):
                free.add(index)
            elif count == 1:
                raise LegError(
                    f"leg `{index}` is open in this term but is not a free leg here",
                    where[index] or term.span,
                    hint=f"contract `{index}` with another factor, or add it to the "
                         "left-hand side")
        return frozenset(free)

    def _ref(self, ref: ir.Ref, table: _Indices) -> list[str]:
        if ref.name == ir.ONES:
            return list(ref.indices)  # dims come from the rest of the equation
        if ref.name not in self.legs:
            raise _Poisoned(ref.name)  # unresolved: elaboration reported it
        legs = self.legs[ref.name]
        declared = self.tensors.get(ref.name) or self.equations.get(ref.name)
        if legs is None:  # a failed equation: count by its left-hand side
            if len(ref.indices) != len(declared.indices):
                raise self._count_error(ref, len(declared.indices))
            return list(ref.indices)
        if len(ref.indices) != len(legs):
            raise self._count_error(ref, len(legs), legs)
        for index, leg in zip(ref.indices, legs):
            table.bind(index, leg.dim, ref.span)
        return list(ref.indices)

    def _count_error(self, ref: ir.Ref, expected: int, legs=None) -> LegError:
        shown = f" [{', '.join(f'{l.name}: {l.dim}' for l in legs)}]" if legs else ""
        declared = self.tensors.get(ref.name) or self.equations.get(ref.name)
        notes = [Note(declared.span, "declared here")] if declared and declared.span else []
        return LegError(f"`{ref.name}` has {expected} leg{'s' if expected != 1 else ''}"
                        f"{shown}, but {len(ref.indices)} "
                        f"{'indices are' if len(ref.indices) != 1 else 'index is'} given",
                        ref.span, notes=notes)

    def _composite(self, factor, outside: set[str], table: _Indices, einstein: bool
                   ) -> frozenset[str]:
        if isinstance(factor, ir.Sum):
            return self._sum(factor, outside, table, einstein)
        keep = outside | set(factor.legs if isinstance(factor, ir.Box) else
                             [i for c in factor.conditions for i in (c.left, c.right)])
        free = self._sum(factor.argument, keep, table, einstein)
        if isinstance(factor, ir.Box):
            for leg in factor.legs:
                if leg not in free:
                    raise LegError(f"`{factor.function}` is over leg `{leg}`, which is not a "
                                   f"free leg of its argument", factor.span,
                                   hint=f"free legs: [{', '.join(sorted(free))}]")
        else:
            for cond in factor.conditions:
                for index in (cond.left, cond.right):
                    if index not in free:
                        raise LegError(f"mask index `{index}` is not a leg of the masked "
                                       "expression", factor.span,
                                       hint=f"its legs: [{', '.join(sorted(free))}]")
                if cond.left == cond.right:
                    raise LegError("a mask compares two different legs", factor.span)
        return free

    # ---- block arguments and outputs -------------------------------------------------
    def _instances(self) -> None:
        for inst in self.network.instances:
            for binding in inst.bindings:
                actual = self.legs.get(binding.tensor)
                if actual is None:
                    continue
                if [l.dim for l in actual] != [l.dim for l in binding.legs]:
                    self.errors.append(BlockError(
                        f"argument `{binding.input}` of block `{inst.block}` must have legs "
                        f"{_legs(binding.legs)}; it has {_legs(actual)}",
                        inst.span))
            actual = self.legs.get(inst.output)
            if actual is not None and [l.dim for l in actual] != [l.dim for l in inst.out_legs]:
                eq = self.equations[inst.output]
                self.errors.append(BlockError(
                    f"block `{inst.block}` declares it returns {_legs(inst.out_legs)}, but its "
                    f"`return` has {_legs(actual)}", eq.span))

    # ---- checks ----------------------------------------------------------------------
    def _check(self, check: ir.Check) -> ir.Check | None:
        table = _Indices()
        try:
            explicit = check.explicit_legs
            keep = set(explicit or ())
            sides = []
            for side in (check.lhs, check.rhs):
                frees = self._sum_terms(side, keep, table, einstein=explicit is None)
                sides.extend(zip(side.terms, frees))
            first = sides[0][1] if explicit is None else frozenset(explicit)
            for term, free in sides:
                if free != first:
                    raise LegError(f"this term of the check has free legs "
                                   f"[{', '.join(sorted(free))}], expected "
                                   f"[{', '.join(sorted(first))}]", term.span or check.span,
                                   hint="both sides of a check must have the same free legs")
            _ones_dims_known(check.lhs, table)
            _ones_dims_known(check.rhs, table)
            order = explicit or tuple(sorted(first))
            if any(i not in table.dims for i in order):
                raise _Poisoned(check.label)  # bound only by failed equations: reported
            legs = tuple(ir.Leg(i, table.dims[i]) for i in order)
        except _Poisoned:
            return None
        except TnError as e:
            self.errors.append(e)
            return None
        index_dims = tuple(ir.Leg(i, d) for i, d in sorted(table.dims.items()))
        return ir.Check(check.label, check.lhs, check.rhs, legs, check.explicit_legs, check.span,
                        index_dims)

    # ---- warnings --------------------------------------------------------------------
    def _warnings(self) -> list[TnWarning]:
        used = {r.name for eq in self.network.equations for r in ir.refs(eq.rhs)}
        used |= {r.name for c in self.network.checks for side in (c.lhs, c.rhs)
                 for r in ir.refs(side)}
        return [TnWarning(f"{t.kind} `{t.name}` is never used", t.span)
                for t in self.network.tensors if t.name not in used]


def _ones_dims_known(expr: ir.Sum, table: _Indices) -> None:
    for ref in ir.refs(expr):
        for index in ref.indices:
            if index not in table.dims and ref.name == ir.ONES:
                raise LegError(f"the dim of `{index}` is unknown: it only appears on `ones`",
                               ref.span, hint="use the index on a declared tensor as well")


class _Poisoned(TnError):
    """An equation depends on something already reported; it is skipped silently."""

    def __init__(self, name: str):
        super().__init__(f"`{name}` could not be checked")


def _legs(legs) -> str:
    return "[" + ", ".join(f"{l.name}: {l.dim}" for l in legs) + "]"
