"""The reference evaluator: deliberately plain, and independent of the compiler.

It shares only the IR with the code it checks. Each product term is one einsum over all
of its operands, contracted along opt_einsum's path (`budget.contract`, not the
compiler's planner) with every tensor sized against a `Budget` before it is allocated;
a one-hot input is a real one-hot tensor, `ones` is a real tensor of ones, and boxes
are their textbook formulas. It evaluates one example (no batch dims), in float64 by
default, and is differentiable, so its gradients check the compiled model's too.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from tndsl.lang import dims as dimmod, ir
from tndsl.verify.budget import UNLIMITED, Budget, contract
from tndsl.verify import fixed_values

EPS = 1e-5

_ELEMENTWISE = {
    "relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi)
                                                     * (x + 0.044715 * x ** 3))),
    "gelu_bloom": lambda x: 0.5 * x * (1 + torch.tanh(0.79788456 * (x + 0.044715 * x ** 3))),
    # (e^x - e^-x) / (e^x + e^-x), written with e^-2|x| so that it cannot overflow.
    "tanh": lambda x: torch.sign(x) * (1 - torch.exp(-2 * x.abs()))
    / (1 + torch.exp(-2 * x.abs())),
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "exp": torch.exp,
    "identity": lambda x: x,
    "step": lambda x: torch.where(x > 0, torch.ones_like(x), torch.zeros_like(x)),
}


class Reference:
    """Evaluates a checked program's equations from given params and inputs.

    `tensors` maps every param and input name to a tensor with its declared legs (a
    one-hot input as integer ids without its one-hot leg). Sizes must all be known."""

    def __init__(self, program, tensors: Mapping[str, torch.Tensor],
                 dtype: torch.dtype = torch.float64, budget: Budget = UNLIMITED,
                 eps_scale: float = 1.0):
        self.program = program
        self.budget = budget
        self.eps_scale = eps_scale  # 0: the norms without their eps (the verifier's probe)
        self.sizes = program.sizes
        self.dtype = dtype
        self.declared = {t.name: t for t in program.network.tensors}
        self.equations = {eq.name: eq for eq in program.network.equations}
        self.values: dict[str, torch.Tensor] = {}
        for name, tensor in self.declared.items():
            if tensor.kind == "fixed":  # its values are its definition, never given
                self.values[name] = fixed_values.dense(tensor, self.sizes, dtype)
            elif name in tensors:
                self.values[name] = self._declared_value(tensor, tensors[name])

    def _declared_value(self, tensor: ir.Tensor, value: torch.Tensor) -> torch.Tensor:
        if tensor.onehot is None:
            return value.to(self.dtype)
        # Put the one-hot leg back where it was declared.
        position = [leg.name for leg in tensor.legs].index(tensor.onehot)
        size = self.sizes[tensor.legs[position].dim]
        self.budget.allow([*value.shape, size], f"one-hot `{tensor.name}`")
        onehot = (value.unsqueeze(-1) == torch.arange(size)).to(self.dtype)
        return onehot.movedim(-1, position)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.values:
            # In dependency order, so deep models never recurse equation by equation.
            for eq in ir.dependency_order(self.program.network, [name]):
                if eq.name not in self.values:
                    self.values[eq.name] = self.sum(eq.rhs, list(eq.indices), eq)
        return self.values[name]

    def evaluate_check(self, check: ir.Check) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides of a check, each with the check's legs in order."""
        order = [leg.name for leg in check.legs]
        return self.sum(check.lhs, order, check), self.sum(check.rhs, order, check)

    # ---- expressions -----------------------------------------------------------------
    def sum(self, expr: ir.Sum, layout: list[str], owner) -> torch.Tensor:
        total = None
        for term in expr.terms:
            value = self.term(term, layout, owner)
            total = value if total is None else total + value
        return total

    def term(self, term: ir.Term, layout: list[str], owner) -> torch.Tensor:
        operands, subscripts = [], []
        for k, factor in enumerate(term.factors):
            if isinstance(factor, ir.Ref):
                indices = list(factor.indices)
                if factor.name == ir.ONES:
                    shape = [self._size(i, owner) for i in indices]
                    self.budget.allow(shape, "`ones`")
                    value = torch.ones(shape, dtype=self.dtype)
                else:
                    value = self[factor.name] if factor.name in self.equations \
                        else self.values[factor.name]
            else:
                indices = list(ir.free_legs(factor, ir.outside_of(term, k, set(layout))))
                value = self.composite(factor, indices, owner)
            operands.append(value)
            subscripts.append(indices)
        coefficient = self.coefficient(term.coefficient)
        if not operands:
            return torch.tensor(coefficient, dtype=self.dtype)
        return coefficient * contract(subscripts, layout, operands, self.budget)

    def coefficient(self, expr) -> float:
        """A term's coefficient at these sizes (memoised: sympy substitution is slow)."""
        cache = self.__dict__.setdefault("_coefficients", {})
        if expr not in cache:
            cache[expr] = float(expr) if expr.is_Number else \
                float(dimmod.evaluate(expr, self.sizes))
        return cache[expr]

    def composite(self, factor, legs: list[str], owner) -> torch.Tensor:
        if isinstance(factor, ir.Sum):
            return self.sum(factor, legs, owner)
        return self.apply(factor, self.sum(factor.argument, legs, owner), legs, owner)

    def apply(self, factor, value: torch.Tensor, legs: list[str], owner) -> torch.Tensor:
        """A box or mask applied to its argument's value (with `legs` in order)."""
        if isinstance(factor, ir.Mask):
            return value * self._mask(factor, legs, owner).to(self.dtype)
        if not factor.legs:
            if factor.function == "softcap":  # c · tanh(x / c)
                (cap,) = factor.args
                return cap * _ELEMENTWISE["tanh"](value / cap)
            if factor.function not in _ELEMENTWISE:
                raise NotImplementedError(f"reference has no box {factor.function!r}")
            return _ELEMENTWISE[factor.function](value)
        axes = [legs.index(leg) for leg in factor.legs]
        if factor.function == "softmax":
            inner = factor.argument.terms[0].factors[0] if _is_mask(factor.argument) else None
            keep = (self._mask(inner, legs, owner) if inner is not None
                    else torch.ones_like(value, dtype=torch.bool))
            # exp(x - max) over kept entries, divided by their sum; an empty row is 0.
            shifted = torch.where(keep, value, torch.full_like(value, -math.inf))
            peak = shifted.amax(dim=axes, keepdim=True)
            peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
            weights = torch.where(keep, torch.exp(value - peak), torch.zeros_like(value))
            total = weights.sum(dim=axes, keepdim=True)
            return torch.where(total > 0, weights / torch.where(total > 0, total, 1),
                               torch.zeros_like(value))
        if factor.function == "topk":
            return _top_k(value, axes, int(factor.args[0]))
        if factor.function == "normalize":
            return value / value.sum(dim=axes, keepdim=True)
        n = math.prod(value.shape[a] for a in axes)
        eps = (EPS if factor.eps is None else factor.eps) * self.eps_scale
        if factor.function == "layernorm":
            mean = value.sum(dim=axes, keepdim=True) / n
            variance = ((value - mean) ** 2).sum(dim=axes, keepdim=True) / n
            return (value - mean) / torch.sqrt(variance + eps)
        if factor.function == "rmsnorm":
            return value / torch.sqrt((value ** 2).sum(dim=axes, keepdim=True) / n + eps)
        raise NotImplementedError(f"reference has no box {factor.function!r}")

    def _mask(self, mask: ir.Mask, legs: list[str], owner) -> torch.Tensor:
        shape = [self._size(i, owner) for i in legs]
        return mask_values(mask, legs, shape, self.sizes, self.budget)

    def _size(self, index: str, owner) -> int:
        """`owner` is the equation or check the index belongs to."""
        dims = {leg.name: leg.dim for leg in owner.index_dims}
        return self.sizes[dims[index]]

def mask_values(mask: ir.Mask, legs: list[str], shape: list[int], sizes,
                budget: Budget = UNLIMITED) -> torch.Tensor:
    """Where the mask keeps entries (bool), over `legs` of sizes `shape`."""
    budget.allow([len(shape), *shape], "a mask")
    grids = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
    position = dict(zip(legs, grids))
    keep = torch.ones(shape, dtype=torch.bool)
    compare = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge,
               "==": torch.eq, "!=": torch.ne}
    for cond in mask.conditions:
        offset = int(dimmod.evaluate(cond.offset, sizes))
        # Positions lie in [0, n): an offset beyond ±(the largest size + 1) decides the
        # same as that bound, which cannot wrap in int64 as 2**63 - 1 would.
        reach = max(shape, default=0) + 1
        offset = max(-reach, min(reach, offset))
        keep &= compare[cond.op](position[cond.left], position[cond.right] + offset)
    return keep


def _is_mask(argument: ir.Sum) -> bool:
    terms = argument.terms
    return (len(terms) == 1 and terms[0].coefficient == 1 and len(terms[0].factors) == 1
            and isinstance(terms[0].factors[0], ir.Mask))


def _top_k(value: torch.Tensor, axes: list[int], k: int) -> torch.Tensor:
    """The entries among the k largest along `axes` kept, others 0: each entry's rank is
    the number of entries above it, or equal to it and earlier (the first in order among
    equals wins), counted by comparing every pair (no sort, no torch.topk)."""
    rest = [a for a in range(value.dim()) if a not in axes]
    moved = value.permute(*rest, *axes)
    flat = moved.reshape(*moved.shape[:len(rest)], -1)
    n = flat.shape[-1]
    a, b = flat.unsqueeze(-1), flat.unsqueeze(-2)  # a: the entry, b: every other
    earlier = torch.arange(n).unsqueeze(0) < torch.arange(n).unsqueeze(1)
    rank = ((b > a) | ((b == a) & earlier)).sum(-1)
    kept = torch.where(rank < k, flat, torch.zeros_like(flat)).reshape(moved.shape)
    inverse = [0] * value.dim()
    for position, axis in enumerate([*rest, *axes]):
        inverse[axis] = position
    return kept.permute(*inverse)
