"""Symbolic costs: FLOPs and intermediate sizes as polynomials in the dim names.

Each product term is planned as the compiler plans it (`plan.plan_term`, at the file's
sizes; unsized dims at PLANNING_SIZE), then every pairwise step is costed symbolically
the way opt_einsum counts: the product of the sizes of all indices involved, doubled
when something is summed. The naive cost contracts the operands left to right. One-hot
inputs met by a param are lookups (no FLOPs) and `ones` is free, as in compiled code,
and a fixed tensor costs what its compiled form does (`codegen/fixed.py`): a rotary map
applied to the one factor it meets is 3 FLOPs per rotated entry (two products and a
sum, in its cos/sin form), a grouping is a copy (no FLOPs), or a sum over each group
when contracted on its head leg.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping

import opt_einsum
import sympy

from tndsl.lang import dims as dimmod, fixed, ir, printer
from tndsl.passes.plan import plan_term

PLANNING_SIZE = 128


@dataclass(frozen=True)
class TermCost:
    equation: str
    where: str                    # "" for a top-level term, else "in softmax[s]" etc.
    order: tuple[str, ...]        # pairwise steps, "t1[p, e] = x[p, m] * W_Q[m, e]"
    flops: sympy.Expr
    largest: sympy.Expr
    naive: sympy.Expr             # left to right
    instance: str
    planner: str = ""             # the path search that chose `order` (plan.TermPlan)


@dataclass(frozen=True)
class CostReport:
    terms: tuple[TermCost, ...]
    sizes: Mapping[str, int | None]

    def value(self, expr: sympy.Expr) -> sympy.Expr:
        return dimmod.evaluate(expr, self.sizes)

    @property
    def total(self) -> sympy.Expr:
        return sympy.expand(sympy.Add(*(t.flops for t in self.terms)))

    def dominant(self, expr: sympy.Expr) -> sympy.Expr:
        """The leading term of `expr` as the symbolic dims (those without a size) grow:
        the monomial of highest total degree in them, ties broken by the value at the
        file's sizes with each symbolic dim at PLANNING_SIZE (then by sympy's order).
        With every dim sized, it is the largest term at the file's sizes."""
        terms = sympy.Add.make_args(sympy.expand(expr))
        symbolic = {dimmod.symbol(n) for n, v in self.sizes.items() if v is None}
        at = {n: (v if v is not None else PLANNING_SIZE) for n, v in self.sizes.items()}

        def key(term):
            degree = sum(sympy.degree(term, s) for s in symbolic if term.has(s))
            return (degree, _number(dimmod.evaluate(term, at)), sympy.default_sort_key(term))
        return max(terms, key=key)

    def by_instance(self) -> dict[str, sympy.Expr]:
        totals: dict[str, sympy.Expr] = {}
        for term in self.terms:
            key = term.instance or "(top level)"
            totals[key] = sympy.expand(totals.get(key, 0) + term.flops)
        return totals

    def render(self) -> str:
        lines = []
        for t in self.terms:
            head = t.equation + (f" ({t.where})" if t.where else "")
            lines.append(head)
            for step in t.order:
                lines.append(f"    {step}")
            lines.append(f"  flops    {_show(t.flops)} = {printer.format_count(self.value(t.flops))}"
                         f"   (left to right: {_show(t.naive)} = {printer.format_count(self.value(t.naive))})")
            lines.append(f"  largest  {_show(t.largest)} = {printer.format_count(self.value(t.largest))} entries")
            lines.append(f"  planner  {t.planner}")
        instances = self.by_instance()
        if len(instances) > 1:
            lines.append("")
            lines.append("by instance:")
            width = max(len(k) for k in instances)
            for name, flops in instances.items():
                lines.append(f"  {name:<{width}}  {_show(flops)} = {printer.format_count(self.value(flops))}")
        total = self.total
        lines.append("")
        lines.append(f"total flops  {_show(total)} = {printer.format_count(self.value(total))}")
        if total != 0:
            lines.append(f"dominant     {_show(self.dominant(total))}")
        return "\n".join(lines)

    def to_json(self) -> str:
        def entry(t: TermCost) -> dict:
            return {"equation": t.equation, "where": t.where, "instance": t.instance,
                    "order": list(t.order),
                    "flops": str(t.flops), "flops_value": _jsonable(self.value(t.flops)),
                    "largest": str(t.largest),
                    "largest_value": _jsonable(self.value(t.largest)),
                    "naive_flops": str(t.naive), "naive_value": _jsonable(self.value(t.naive)),
                    "planner": t.planner}
        total = self.total
        return json.dumps({
            "sizes": {k: v for k, v in self.sizes.items()},
            "terms": [entry(t) for t in self.terms],
            "by_instance": {k: str(v) for k, v in self.by_instance().items()},
            "total_flops": str(total), "total_value": _jsonable(self.value(total)),
            "dominant": str(self.dominant(total)) if total != 0 else "0",
        }, indent=2)


def costs(program, name: str | None = None) -> CostReport:
    """Costs of every equation, or of the equation `name`, or of every equation under
    the instance path `name` (`blocks.3`)."""
    equations = program.network.equations
    if name is not None:
        chosen = [eq for eq in equations
                  if eq.name == name or eq.name.startswith(name + ".")]
        if not chosen:
            from tndsl.lang.errors import UnknownNameError, did_you_mean
            raise UnknownNameError(f"no equation or instance `{name}`",
                                   hint=did_you_mean(name, [eq.name for eq in equations]))
        equations = chosen
    planner = _Coster(program)
    terms: list[TermCost] = []
    for eq in equations:
        terms.extend(planner.equation(eq))
    return CostReport(tuple(terms), program.sizes)


class _Coster:
    def __init__(self, program):
        self.program = program
        self.sizes = program.sizes
        self.tensors = {t.name: t for t in program.network.tensors}

    def equation(self, eq: ir.Equation) -> list[TermCost]:
        self.dims = {leg.name: leg.dim for leg in eq.index_dims}
        out: list[TermCost] = []
        self._sum(eq.rhs, list(eq.indices), eq, "", out)
        return out

    def _sum(self, expr: ir.Sum, layout: list[str], eq, where: str, out: list) -> None:
        for term in expr.terms:
            operands = []
            for k, factor in enumerate(term.factors):
                if isinstance(factor, ir.Ref):
                    if factor.name != ir.ONES:
                        operands.append((factor.name, list(factor.indices)))
                    continue
                legs = list(ir.free_legs(factor, ir.outside_of(term, k, set(layout))))
                inner = where
                if isinstance(factor, ir.Box):
                    inner = f"in {factor.function}" + (f"[{', '.join(factor.legs)}]"
                                                       if factor.legs else "")
                elif isinstance(factor, ir.Mask):
                    inner = "in a mask"
                self._sum(factor if isinstance(factor, ir.Sum) else factor.argument,
                          legs, eq, inner, out)
                operands.append((_composite_name(factor), legs))
            operands = self._lookups(operands, layout)
            operands, applied = self._fixed(operands, layout)
            target = [i for i in layout if any(i in idx for _, idx in operands)]
            if len(operands) >= 2 or applied:
                out.append(self._term_cost(eq, where, operands, target, applied))

    def _fixed(self, operands, layout) -> tuple[list, list[tuple[str, sympy.Expr]]]:
        """Each fixed tensor applied to the one operand it meets, as the compiler does it:
        the operands left, and a (step, FLOPs) for each application."""
        applied = []
        for name, indices in list(operands):
            tensor = self.tensors.get(name)
            if tensor is None or tensor.kind != "fixed":
                continue
            rest = [op for op in operands if op[0] != name or op[1] != indices]
            function = tensor.fixed.function
            must_have = None
            if function == "rotary":
                must_have, result, into = indices
                ways = ((into, result, "rotary"), (result, into, "rotary⁻¹"))
            elif function == "grouping":
                head, group = indices
                ways = ((group, head, "repeat"), (head, group, "group sum"))
            else:
                continue
            for contracted, renamed, form in ways:
                x = fixed.partner(rest, contracted, renamed, layout,
                                  indices=lambda op: op[1], must_have=must_have)
                if x is None:
                    continue
                new = (f"{form}({x[0]})", [renamed if i == contracted else i for i in x[1]])
                size = self._product(x[1])
                if function == "rotary":
                    flops = 3 * size * fixed.rotated(tensor, self.sizes) \
                        / self.sizes[tensor.legs[1].dim] if self.sizes.get(
                            tensor.legs[1].dim) else 3 * size
                else:
                    flops = sympy.Integer(0) if form == "repeat" else size
                applied.append((f"{new[0]}[{', '.join(new[1])}] = {name}[{', '.join(indices)}]"
                                f" * {x[0]}[{', '.join(x[1])}]", sympy.expand(flops)))
                operands = [new if op is x else op for op in rest]
                break
        return operands, applied

    def _lookups(self, operands, layout):
        """A one-hot input and the one param its leg meets become a lookup."""
        for name, indices in list(operands):
            tensor = self.tensors.get(name)
            if tensor is None or tensor.onehot is None:
                continue
            leg = indices[[l.name for l in tensor.legs].index(tensor.onehot)]
            partners = [op for op in operands if op[0] != name and leg in op[1]]
            if leg in layout or len(partners) != 1 or partners[0][0] not in self.tensors:
                continue
            rest = [i for i in indices if i != leg]
            gathered = (f"{partners[0][0]}[{name}]",
                        rest + [i for i in partners[0][1] if i != leg])
            operands = [op for op in operands if op[0] != name and op is not partners[0]]
            operands.append(gathered)
        return operands

    def _term_cost(self, eq, where, operands, target, applied=()) -> TermCost:
        if len(operands) == 1:  # a fixed tensor applied, nothing left to contract
            total = sympy.expand(sum((f for _, f in applied), sympy.Integer(0)))
            return TermCost(eq.name, where, tuple(s for s, _ in applied), total,
                            self._product(target), total, eq.instance, "fixed form")
        names = sorted({i for _, idx in operands for i in idx} | set(target))
        # opt_einsum's symbols go past the 52 ASCII letters (a chain of 53 indices is
        # legal here: nothing is run, so torch.einsum's limit does not apply).
        letters = {name: opt_einsum.get_symbol(k) for k, name in enumerate(names)}
        index_of = {c: i for i, c in letters.items()}
        specs = ["".join(letters[i] for i in idx) for _, idx in operands]
        output = "".join(letters[i] for i in target)
        sizes = {letters[i]: self._size(i) for i in names}
        # Costs are reported, never refused: nothing is allocated (no memory budget).
        plan = plan_term(specs, output, sizes, memory_budget=math.inf,
                         where=f"a term of `{eq.name}`", span=eq.span)
        current = [(label, spec) for (label, _), spec in zip(_labels(operands), specs)]
        order, flops, largest = [], sympy.Integer(0), sympy.Integer(0)
        largest_value = -1
        for n, step in enumerate(plan.steps, start=1):
            a = current.pop(step.take[0])
            b = current.pop(step.take[1])
            result = step.spec.split("->")[1]
            involved = {index_of[c] for c in a[1] + b[1]}
            kept = {index_of[c] for c in result}
            flops += self._product(involved) * (2 if involved - kept else 1)
            size = self._product(index_of[c] for c in result)
            value = _number(dimmod.evaluate(size, self.sizes))
            if value > largest_value:
                largest, largest_value = size, value
            label = f"t{n}" if n < len(plan.steps) else eq.name
            order.append(f"{label}[{', '.join(index_of[c] for c in result)}] = "
                         f"{a[0]} * {b[0]}")
            current.append((f"t{n}", result))
        before = sum((f for _, f in applied), sympy.Integer(0))
        return TermCost(eq.name, where, tuple(s for s, _ in applied) + tuple(order),
                        sympy.expand(flops + before), largest,
                        sympy.expand(self._naive(operands, target) + before), eq.instance,
                        plan.planner)

    def _naive(self, operands, target) -> sympy.Expr:
        total = sympy.Integer(0)
        current = list(operands[0][1])
        for n, (_, indices) in enumerate(operands[1:], start=1):
            involved = set(current) | set(indices)
            later = {i for _, idx in operands[n + 1:] for i in idx} | set(target)
            kept = [i for i in dict.fromkeys(current + indices) if i in later]
            total += self._product(involved) * (2 if involved - set(kept) else 1)
            current = kept
        return sympy.expand(total)

    def _product(self, indices) -> sympy.Expr:
        return sympy.Mul(*(dimmod.symbol(self.dims[i]) for i in indices))

    def _size(self, index: str) -> int:
        size = self.sizes.get(self.dims[index])
        return size if size is not None else PLANNING_SIZE


def _labels(operands):
    return [(f"{name}[{', '.join(idx)}]", idx) for name, idx in operands]


def _composite_name(factor) -> str:
    if isinstance(factor, ir.Box):
        return factor.function + (f"[{', '.join(factor.legs)}]" if factor.legs else "") + "(...)"
    if isinstance(factor, ir.Mask):
        return "mask(...)"
    return "(" + printer.expression(factor) + ")"


def _number(value: sympy.Expr) -> float:
    try:
        return float(value)
    except TypeError:
        return float("inf")  # still symbolic: treat as large


def _show(expr: sympy.Expr) -> str:
    return sympy.sstr(expr, order="grevlex")


def _jsonable(value: sympy.Expr):
    # Exact integers while Python can write them (4,300 digits); text past that.
    if value.is_Integer and int(value).bit_length() < 14_000:
        return int(value)
    return printer.format_count(value)
