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
from tndsl.verify import fixed_values
from tndsl.verify.budget import UNLIMITED, Budget, contract
from tndsl.verify.reference import Reference, mask_values
from tndsl.verify.roundoff import RoundOff

PRIME = 1_000_003  # products stay below 2**40, sums of 2**23 of them below 2**63


# A mask boundary at offset c is reachable when both positions' dims have more than
# |c| + 1 entries; shrunk dims grow to that, up to this size.
MASK_REACH_LIMIT = 64


def small_program(program, dims: Mapping[str, int] | None = None, *, keep_up_to: int = 12,
                  avoid=()):
    """The same source, re-elaborated at small sizes (or at the sizes given); dims up to
    `keep_up_to` keep theirs (see `dims.small_sizes`). The sizes keep every mask boundary
    reachable and are not roots of any expression in `avoid` (see `small_sizes`, which
    also says what could not be met)."""
    if dims is None:
        dims, _ = small_sizes(program, keep_up_to=keep_up_to, avoid=avoid)
    return program.reparse(dims)


def small_sizes(program, *, keep_up_to: int = 12, avoid=()) -> tuple[dict[str, int], tuple]:
    """Sizes for the dims that are shrunk (those without a size or above `keep_up_to`),
    and notes on what could not be met:
    - every mask condition's boundary is reachable: each of its two legs' dims has more
      than |offset| + 1 positions, so entries on both sides of it exist (a shrunk dim
      grows to that, up to MASK_REACH_LIMIT);
    - no expression of `avoid` (the residual's coefficients, polynomials in the dims)
      is zero there, or a difference would vanish at the sizes tried (shrunk dims grow
      by one until none is, a few times at most)."""
    table = {d.name: d for d in program.network.dims}
    chosen = dimmod.small_sizes(table, program.sizes, keep_up_to=keep_up_to)
    shrunk = set(chosen)
    kept = {n: v for n, v in program.sizes.items() if v is not None and n not in shrunk}
    conditions = _mask_conditions(program)
    notes: list[str] = []
    for attempt in range(24):
        full = _full_sizes(table, {**kept, **chosen})
        if full is None:  # a derived dim is not a positive integer: grow and retry
            chosen = {n: v + 1 for n, v in chosen.items()}
            continue
        grown = False
        for condition, left_dim, right_dim in conditions:
            offset = dimmod.evaluate(condition.offset, full)
            if offset.free_symbols:
                continue
            need = abs(int(offset)) + 2
            for dim in (left_dim, right_dim):
                if full.get(dim) is None or full[dim] >= need:
                    continue
                own = program.sizes.get(dim)
                if need > dimmod.MAX_DIM_SIZE or (own is not None and own < need):
                    continue  # out of reach at the file's own sizes too
                if dim in shrunk and need <= MASK_REACH_LIMIT:
                    chosen[dim] = need
                    grown = True
                else:
                    note = (f"the mask condition `{condition.text()}` has its boundary out of "
                            f"reach at {dim} = {full[dim]} (it needs {dim} ≥ {need})")
                    if note not in notes:
                        notes.append(note)
        if grown:
            continue
        if any(_vanishes(expr, full) for expr in avoid) and shrunk and attempt < 12:
            chosen = {n: v + 1 for n, v in chosen.items()}
            continue
        return chosen, tuple(notes)
    return chosen, tuple(notes)


def _full_sizes(table, base: Mapping[str, int]) -> dict[str, int] | None:
    full = dict(base)
    symbols = {dimmod.symbol(n): v for n, v in base.items()}
    for name, dim in table.items():
        if name in full or dim.size is None:
            continue
        value = sympy.sympify(dim.size).subs(symbols)
        if value.free_symbols:
            continue
        if not (value.is_integer and value.is_positive):
            return None
        full[name] = int(value)
    return full


def _vanishes(expr, sizes: Mapping[str, int]) -> bool:
    try:
        return dimmod.evaluate(sympy.sympify(expr), sizes) == 0
    except (TypeError, ValueError, ZeroDivisionError):
        return False


def _mask_conditions(program) -> list[tuple[ir.Condition, str, str]]:
    """Every mask condition of the program's equations and checks, with its legs' dims."""
    found = []
    owners = list(program.network.equations) + list(program.network.checks)
    for owner in owners:
        dims = {leg.name: leg.dim for leg in (owner.index_dims or ())}
        sides = [owner.rhs] if isinstance(owner, ir.Equation) else [owner.lhs, owner.rhs]
        stack = list(sides)
        while stack:
            node = stack.pop()
            if isinstance(node, ir.Sum):
                for term in node.terms:
                    stack.extend(term.factors)
            elif isinstance(node, (ir.Box, ir.Mask)):
                stack.append(node.argument)
                if isinstance(node, ir.Mask):
                    for c in node.conditions:
                        if c.left in dims and c.right in dims:
                            found.append((c, dims[c.left], dims[c.right]))
    return found


def random_tensors(program, generator: torch.Generator, dtype=torch.float64, *,
                   integers: int | None = None, budget: Budget = UNLIMITED
                   ) -> dict[str, torch.Tensor]:
    """A random value for every param and input (token ids for one-hot inputs): standard
    normal, or uniform integers in [-integers, integers] when given."""
    values = {}
    for tensor in program.network.tensors:
        if tensor.kind == "fixed":  # its values are its definition
            continue
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
        self.fixed = {t.name: t for t in program.network.tensors if t.kind == "fixed"}
        for tensor in program.network.tensors:
            if tensor.kind == "fixed":  # its built-in values, when first used
                continue
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

    def fixed_value(self, name: str) -> torch.Tensor:
        """A fixed tensor's built-in values, exactly: only integer values can be."""
        if name not in self.values:
            tensor = self.fixed[name]
            shape = [self.sizes[leg.dim] for leg in tensor.legs]
            self.budget.allow(shape, f"fixed tensor `{name}`")
            dense = fixed_values.dense(tensor, self.sizes)
            if not bool(torch.all(dense == dense.round())):
                raise ValueError(f"fixed tensor `{name}` ({tensor.fixed.function}) has "
                                 "non-integer values")
            self.values[name] = dense.round().long() % PRIME
        return self.values[name]

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
                elif factor.name in self.fixed:
                    value = self.fixed_value(factor.name)
                else:
                    value = self.values[factor.name]
                operands.append((value, list(factor.indices)))
            elif isinstance(factor, ir.Sum):
                legs = list(ir.free_legs(factor, ir.outside_of(term, k, set(layout))))
                operands.append((self.sum(factor, legs, owner), legs))
            elif isinstance(factor, ir.Mask):  # exact: the argument times 0 or 1
                legs = list(ir.free_legs(factor, ir.outside_of(term, k, set(layout))))
                shape = [self.sizes[dims[i]] for i in legs]
                keep = mask_values(factor, legs, shape, self.sizes, self.budget).long()
                operands.append((self.sum(factor.argument, legs, owner) * keep, legs))
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
    bound: float = 0.0        # the round-off bound of the two values' difference

    def render(self) -> str:
        sizes = ", ".join(f"{k} = {v}" for k, v in self.sizes.items())
        entry = ", ".join(f"{k} = {v}" for k, v in self.entry.items()) or "the scalar"
        bound = f" (round-off bound {self.bound:.1e})" if self.bound else ""
        return (f"counterexample at sizes {sizes}, {self.data}: at {entry}, "
                f"left = {self.lhs:.17g}, right = {self.rhs:.17g}{bound}")


# A difference refutes when it is above SAFETY times the round-off bound and above
# `tolerance` relative to max(1, the values' scale).
SAFETY = 16.0


@dataclass(frozen=True)
class Comparison:
    """What random data at one set of sizes showed about a check."""
    example: Counterexample | None   # a difference beyond round-off: a refutation
    within_roundoff: str = ""        # a difference round-off may explain: why unknown
    overflowed: str = ""             # the data overflowed float64: why unknown


def compare(program, check: ir.Check, *, boxes: bool, seeds=range(5),
            tolerance: float = 1e-9, budget: Budget = UNLIMITED, fixed: bool = False,
            eps_scale: float = 1.0) -> Comparison:
    """Evaluate both sides on random data at the program's sizes, with the fixed tensors'
    built-in values: small integers (exact in float64) without boxes, standard normals
    with them. An entry whose difference passes the round-off bound is a counterexample."""
    doubtful = overflow = ""
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        integers = None if boxes else 3
        values = random_tensors(program, generator, integers=integers, budget=budget)
        reference = Reference(program, values, budget=budget, eps_scale=eps_scale)
        (lhs, lerr), (rhs, rerr) = RoundOff(reference).evaluate_check(check)
        finite = torch.isfinite(lhs) & torch.isfinite(rhs) & torch.isfinite(lerr) \
            & torch.isfinite(rerr)
        if not bool(finite.all()):
            overflow = overflow or f"the float64 evaluation overflowed on seed {seed}"
            lhs, rhs = torch.where(finite, lhs, 0), torch.where(finite, rhs, 0)
            lerr, rerr = torch.where(finite, lerr, 0), torch.where(finite, rerr, 0)
        difference = (lhs - rhs).abs()
        scale = max(1.0, float(lhs.abs().max()), float(rhs.abs().max()))
        bound = SAFETY * (lerr + rerr)
        beyond = (difference > tolerance * scale) & finite
        refuting = beyond & (difference > bound)
        if not bool(refuting.any()):
            if bool(beyond.any()) and not doubtful:
                flat = int(torch.where(beyond, difference, 0).argmax())
                doubtful = (f"the sides differ by {float(difference.flatten()[flat]):.3g} "
                            f"(seed {seed}), within the round-off bound "
                            f"{float(bound.flatten()[flat]):.3g} of the float64 evaluation")
            continue
        flat = int(torch.where(refuting, difference - bound, -1).argmax())
        position = [int(p) for p in torch.unravel_index(torch.tensor(flat), lhs.shape)] \
            if lhs.dim() else []
        entry = {leg.name: p for leg, p in zip(check.legs, position)}
        sizes = {k: v for k, v in program.sizes.items() if v is not None}
        data = ("random integers in [-3, 3]" if integers else "standard normal data") + \
            f", seed {seed}" + (", fixed tensors at their built-in values" if fixed else "")
        pick = (lambda t: float(t.flatten()[flat]) + 0.0) if lhs.dim() else \
            (lambda t: float(t) + 0.0)
        return Comparison(Counterexample(sizes, entry, pick(lhs), pick(rhs), data, seed,
                                         pick(lerr + rerr)))
    return Comparison(None, doubtful, overflow)


def counterexample(program, check: ir.Check, *, boxes: bool, seeds=range(5),
                   tolerance: float = 1e-9, budget: Budget = UNLIMITED
                   ) -> Counterexample | None:
    """An entry where the two sides differ beyond round-off (see `compare`)."""
    return compare(program, check, boxes=boxes, seeds=seeds, tolerance=tolerance,
                   budget=budget, fixed=True).example


def float_sides(program, check: ir.Check, values, budget: Budget = UNLIMITED
                ) -> tuple[torch.Tensor, torch.Tensor]:
    return Reference(program, values, budget=budget).evaluate_check(check)
