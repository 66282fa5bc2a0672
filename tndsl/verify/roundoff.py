"""A bound on the reference evaluator's own round-off, so that a numeric difference
refutes only when round-off cannot explain it.

Alongside each value the evaluator carries a first-order bound on its absolute error,
entry by entry (the running error analysis of Higham, *Accuracy and Stability of
Numerical Algorithms*, ch. 3), with u = 2⁻⁵³ the unit round-off of float64:

- data (params and inputs) is exact; a fixed tensor with non-integer values (a rotary
  map's cos and sin) is off by a few ulps times its angles;
- a product term c · Σ Π v_k: the error of each operand carried through the others'
  magnitudes, plus γ_L times the contraction of the magnitudes, L the number of
  products summed per entry and the factors multiplied (γ_L = L u);
- a sum of T terms: the terms' errors plus γ_T times the sum of their magnitudes;
- a mask keeps or zeroes the error with the value;
- an element-wise box f: |f'| (taken at both ends of the argument's error interval)
  times the argument's error, plus a few ulps of |f|;
- softmax: 2 s · (the row's largest argument error) plus γ_n s; layer norm and rms
  norm: the argument's error over the norm's denominator, times (1 + |y|) twice, plus
  γ_n (1 + |y|); any other box along legs: the change of its output when its
  argument moves by its error bound with random signs, times 4.

`exp(a)·exp(a) + 1 − exp(2a)` at a = 18 then carries an error bound of about 10¹⁶ u,
far above the 0.004 that float64 cancellation leaves, and is not refuted.
"""
from __future__ import annotations

import math

import torch

from tndsl.lang import ir
from tndsl.verify.budget import contract
from tndsl.verify.reference import Reference

U = 2.0 ** -53


class RoundOff:
    """(value, error bound) of a check's sides, through a Reference's values."""

    def __init__(self, reference: Reference):
        self.ref = reference
        self.errors: dict[str, torch.Tensor] = {}
        dtype = reference.dtype
        for name, tensor in reference.declared.items():
            if tensor.kind == "fixed" and name in reference.values:
                value = reference.values[name]
                if bool(torch.all(value == value.round())):
                    continue
                angle = 1 + max(reference.sizes[leg.dim] or 1 for leg in tensor.legs)
                self.errors[name] = torch.full_like(value, 16 * U * angle, dtype=dtype)

    def evaluate_check(self, check: ir.Check):
        order = [leg.name for leg in check.legs]
        return self.sum(check.lhs, order, check), self.sum(check.rhs, order, check)

    def error(self, name: str) -> torch.Tensor | None:
        if name in self.errors or name not in self.ref.equations:
            return self.errors.get(name)
        for eq in ir.dependency_order(self.ref.program.network, [name]):
            if eq.name not in self.errors:
                self.errors[eq.name] = self.sum(eq.rhs, list(eq.indices), eq)[1]
        return self.errors[name]

    def sum(self, expr: ir.Sum, layout: list[str], owner):
        values, errors = [], []
        for term in expr.terms:
            v, e = self.term(term, layout, owner)
            values.append(v)
            errors.append(e)
        total = values[0]
        error = errors[0]
        magnitude = values[0].abs()
        for v, e in zip(values[1:], errors[1:]):
            total = total + v
            error = error + e
            magnitude = magnitude + v.abs()
        return total, error + len(values) * U * magnitude

    def term(self, term: ir.Term, layout: list[str], owner):
        operands, errors, subscripts = [], [], []
        for k, factor in enumerate(term.factors):
            if isinstance(factor, ir.Ref):
                indices = list(factor.indices)
                if factor.name == ir.ONES:
                    shape = [self.ref._size(i, owner) for i in indices]
                    value, error = torch.ones(shape, dtype=self.ref.dtype), None
                else:
                    value = self.ref[factor.name] if factor.name in self.ref.equations \
                        else self.ref.values[factor.name]
                    error = self.error(factor.name)
            else:
                indices = list(ir.free_legs(factor, ir.outside_of(term, k, set(layout))))
                value, error = self.composite(factor, indices, owner)
            operands.append(value)
            errors.append(error)
            subscripts.append(indices)
        coefficient = self.ref.coefficient(term.coefficient)
        budget = self.ref.budget
        if not operands:
            value = torch.tensor(coefficient, dtype=self.ref.dtype)
            return value, value.abs() * U
        value = coefficient * contract(subscripts, layout, operands, budget)
        magnitudes = [op.abs() for op in operands]
        magnitude = abs(coefficient) * contract(subscripts, layout, magnitudes, budget)
        error = torch.zeros_like(value)
        for k, e in enumerate(errors):
            if e is None or not bool(e.any()):
                continue
            swapped = magnitudes[:k] + [e] + magnitudes[k + 1:]
            error = error + abs(coefficient) * contract(subscripts, layout, swapped, budget)
        sizes = {i: n for idx, op in zip(subscripts, operands) for i, n in zip(idx, op.shape)}
        summed = math.prod(n for i, n in sizes.items() if i not in layout)
        return value, error + (summed + len(operands) + 1) * U * magnitude

    def composite(self, factor, legs: list[str], owner):
        if isinstance(factor, ir.Sum):
            return self.sum(factor, legs, owner)
        x, e = self.sum(factor.argument, legs, owner)
        y = self.ref.apply(factor, x, legs, owner)
        if isinstance(factor, ir.Mask):
            keep = self.ref._mask(factor, legs, owner).to(e.dtype)
            return y, e * keep
        if not factor.legs:
            # (through `apply`, so a box's parameters count: softcap's c)
            return y, _elementwise_error(lambda t: self.ref.apply(factor, t, legs, owner),
                                         x, e) + 4 * U * y.abs()
        axes = [legs.index(leg) for leg in factor.legs]
        n = math.prod(x.shape[a] for a in axes)
        largest = e.amax(dim=axes, keepdim=True) if e.dim() else e
        if factor.function == "softmax":
            return y, 2 * y.abs() * largest + (n + 4) * U * y.abs()
        if factor.function in ("layernorm", "rmsnorm"):
            eps = (1e-5 if factor.eps is None else factor.eps) * self.ref.eps_scale
            if factor.function == "layernorm":
                centred = x - x.mean(dim=axes, keepdim=True)
            else:
                centred = x
            denominator = torch.sqrt((centred ** 2).mean(dim=axes, keepdim=True) + eps)
            return y, 2 * largest * (1 + y.abs()) / denominator + (n + 8) * U * (1 + y.abs())
        # Any other box along legs: how far its output moves when its argument does.
        generator = torch.Generator().manual_seed(0)
        moved = torch.zeros_like(y)
        for _ in range(3):
            signs = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2 - 1
            moved = torch.maximum(moved, (self.ref.apply(factor, x + signs * e, legs, owner)
                                          - y).abs())
        return y, 4 * moved + (n + 8) * U * y.abs()


def _elementwise_error(f, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """|f'| at both ends of [x - e, x + e], times e (`f` the box's element-wise function)."""
    slope = torch.zeros_like(x)
    for point in (x - e, x, x + e):
        point = point.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(f(point).sum(), point, allow_unused=True)
        if grad is not None:
            slope = torch.maximum(slope, grad.abs())
    return slope * e
