"""Evaluation at small sizes: random data, the randomized exact tier (arithmetic modulo
a prime, for box-free identities) and the search for a counterexample entry.

The modular evaluator is its own code, as plain as the reference evaluator: a term is
contracted pairwise along opt_einsum's path (`budget.contract`), reducing modulo the
prime after every step, so no value exceeds int64, and every tensor is sized against
the tier's `Budget` before it is allocated. A nonzero polynomial of degree d vanishes at a uniformly random
point modulo p with probability at most d / p (Schwartz–Zippel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import sympy
import torch

from tndsl.lang import dims as dimmod, ir
from tndsl.verify.budget import UNLIMITED, Budget, contract
from tndsl.verify.reference import Reference

PRIME = 1_000_003  # products stay below 2**40, sums of 2**23 of them below 2**63


def small_program(program, dims: Mapping[str, int] | None = None, *, keep_up_to: int = 12):
    """The same source, re-elaborated at small sizes (or at the sizes given); dims up to
    `keep_up_to` keep theirs (see `dims.small_sizes`)."""
    if dims is None:
        dims = dimmod.small_sizes({d.name: d for d in program.network.dims}, program.sizes,
                                  keep_up_to=keep_up_to)
    return program.reparse(dims)


def random_tensors(program, generator: torch.Generator, dtype=torch.float64, *,
                   integers: int | None = None, budget: Budget = UNLIMITED
                   ) -> dict[str, torch.Tensor]:
    """A random value for every param and input (token ids for one-hot inputs): standard
    normal, or uniform integers in [-integers, integers] when given."""
    values = {}
    for tensor in program.network.tensors:
        shape = [program.sizes[leg.dim] for leg in tensor.legs if leg.name != tensor.onehot]
        budget.allow(shape, f"random data for `{tensor.name}`")
        if tensor.onehot is not None:
            vocab = program.sizes[next(l.dim for l in tensor.legs if l.name == tensor.onehot)]
            values[tensor.name] = torch.randint(0, vocab, shape, generator=generator)
        elif integers is not None:
            values[tensor.name] = torch.randint(-integers, integers + 1, shape,
                                                generator=generator).to(dtype)
        else:
            values[tensor.name] = torch.randn(shape, generator=generator, dtype=dtype)
    return values


# ---- the randomized exact tier ---------------------------------------------------------

class Modular:
    """Evaluates box-free expressions of a program modulo PRIME."""

    def __init__(self, program, generator: torch.Generator, budget: Budget = UNLIMITED):
        self.program = program
        self.budget = budget
        self.sizes = program.sizes
        self.equations = {eq.name: eq for eq in program.network.equations}
        self.values: dict[str, torch.Tensor] = {}
        for tensor in program.network.tensors:
            shape = [self.sizes[leg.dim] for leg in tensor.legs]
            budget.allow(shape, f"random data for `{tensor.name}`")
            if tensor.onehot is None:
                self.values[tensor.name] = torch.randint(0, PRIME, shape, generator=generator)
            else:  # a real one-hot tensor: identities may rely on it being one
                position = [l.name for l in tensor.legs].index(tensor.onehot)
                ids = torch.randint(0, shape[position], shape[:position] + shape[position + 1:],
                                    generator=generator)
                onehot = (ids.unsqueeze(-1) == torch.arange(shape[position])).long()
                self.values[tensor.name] = onehot.movedim(-1, position)

    def equation(self, name: str) -> torch.Tensor:
        for eq in ir.dependency_order(self.program.network, [name]):
            if eq.name not in self.values:
                self.values[eq.name] = self.sum(eq.rhs, list(eq.indices), eq)
        return self.values[name]

    def sum(self, expr: ir.Sum, layout: list[str], owner) -> torch.Tensor:
        total = 0
        for term in expr.terms:
            total = (total + self.term(term, layout, owner)) % PRIME
        return total

    def term(self, term: ir.Term, layout: list[str], owner) -> torch.Tensor:
        dims = {leg.name: leg.dim for leg in owner.index_dims}
        operands = []
        for k, factor in enumerate(term.factors):
            if isinstance(factor, ir.Ref):
                if factor.name == ir.ONES:
                    shape = [self.sizes[dims[i]] for i in factor.indices]
                    self.budget.allow(shape, "`ones`")
                    value = torch.ones(shape, dtype=torch.long)
                elif factor.name in self.equations:
                    value = self.equation(factor.name)
                else:
                    value = self.values[factor.name]
                operands.append((value, list(factor.indices)))
            elif isinstance(factor, ir.Sum):
                legs = list(ir.free_legs(factor, ir.outside_of(term, k, set(layout))))
                operands.append((self.sum(factor, legs, owner), legs))
            else:
                raise ValueError("the modular tier evaluates box-free expressions only")
        coefficient = _modular(dimmod.evaluate(term.coefficient, self.sizes))
        if not operands:
            return torch.tensor(coefficient)
        value = contract([idx for _, idx in operands], layout, [v for v, _ in operands],
                         self.budget, reduce=lambda t: t % PRIME)
        return (value * coefficient) % PRIME


def _modular(value: sympy.Expr) -> int:
    if not value.is_Rational:
        raise ValueError(f"coefficient {value} is not rational at these sizes")
    numerator, denominator = int(value.p), int(value.q)
    return numerator * pow(denominator, -1, PRIME) % PRIME


def modular_sides(program, check: ir.Check, seed: int, budget: Budget = UNLIMITED
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    evaluator = Modular(program, torch.Generator().manual_seed(seed), budget)
    legs = [leg.name for leg in check.legs]
    return evaluator.sum(check.lhs, legs, check), evaluator.sum(check.rhs, legs, check)


# ---- counterexamples -------------------------------------------------------------------

@dataclass(frozen=True)
class Counterexample:
    sizes: dict[str, int]
    entry: dict[str, int]     # free leg -> position
    lhs: float
    rhs: float
    data: str                 # what the params and inputs were
    seed: int                 # the data's seed, to rebuild it (random_tensors)

    def render(self) -> str:
        sizes = ", ".join(f"{k} = {v}" for k, v in self.sizes.items())
        entry = ", ".join(f"{k} = {v}" for k, v in self.entry.items()) or "the scalar"
        return (f"counterexample at sizes {sizes}, {self.data}: at {entry}, "
                f"left = {self.lhs:.10g}, right = {self.rhs:.10g}")


def float_sides(program, check: ir.Check, values, budget: Budget = UNLIMITED
                ) -> tuple[torch.Tensor, torch.Tensor]:
    return Reference(program, values, budget=budget).evaluate_check(check)


def counterexample(program, check: ir.Check, *, boxes: bool, seeds=range(5),
                   tolerance: float = 1e-9, budget: Budget = UNLIMITED
                   ) -> Counterexample | None:
    """An entry where the two sides differ, from random data at the program's sizes:
    small integers (exact in float64) without boxes, standard normals with them."""
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        integers = None if boxes else 3
        values = random_tensors(program, generator, integers=integers, budget=budget)
        lhs, rhs = float_sides(program, check, values, budget)
        difference = (lhs - rhs).abs()
        scale = max(1.0, float(lhs.abs().max()), float(rhs.abs().max()))
        if float(difference.max()) <= tolerance * scale:
            continue
        flat = int(difference.argmax())
        position = [int(p) for p in torch.unravel_index(torch.tensor(flat), lhs.shape)] \
            if lhs.dim() else []
        entry = {leg.name: p for leg, p in zip(check.legs, position)}
        sizes = {k: v for k, v in program.sizes.items() if v is not None}
        data = ("random integers in [-3, 3]" if integers else "standard normal data") + \
            f", seed {seed}"
        return Counterexample(sizes, entry, float(lhs.flatten()[flat] if lhs.dim() else lhs),
                              float(rhs.flatten()[flat] if rhs.dim() else rhs), data, seed)
    return None
