"""What the evaluation tiers may spend: the largest tensor they may create and the time
each tier may run, and the contraction of one product term along an opt_einsum path
within them.

Every tensor an evaluator creates (random data, `ones`, masks, intermediates of a
contraction, results) is sized before it is allocated; a tier that would pass its budget
stops with `Stopped`, which the verdict reports (which tier, and why) instead of being
killed for memory or hanging. Paths come from opt_einsum directly, not from
`passes/plan.py`: the verifier shares no code with the optimiser it checks.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import opt_einsum
import torch

# 2**26 entries: 512 MiB in float64 (int64 for the modular tier), per tensor.
MAX_ENTRIES = 2**26
TIER_SECONDS = {"symbolic": 30.0, "randomized exact": 30.0, "numeric": 30.0}


class Stopped(Exception):
    """A tier passed its budget; `reason` says which budget and by how much."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.tier = ""  # set by the tier that stopped


@dataclass(frozen=True)
class Budget:
    max_entries: int = MAX_ENTRIES
    seconds: float = 30.0
    deadline: float = math.inf  # perf_counter time, set by `start`

    def start(self) -> "Budget":
        return Budget(self.max_entries, self.seconds, time.perf_counter() + self.seconds)

    def allow(self, shape: Sequence[int], what: str) -> None:
        """Raise Stopped if a tensor of this shape is over budget (before it exists)."""
        entries = math.prod(shape)
        if entries > self.max_entries:
            raise Stopped(f"{what} would have {entries:,} entries, over the budget of "
                          f"{self.max_entries:,}")
        self.tick()

    def tick(self) -> None:
        if time.perf_counter() > self.deadline:
            raise Stopped(f"over its time budget of {self.seconds:g} s")


UNLIMITED = Budget(max_entries=2**62)


def contract(inputs: Sequence[Sequence[str]], output: Sequence[str],
             operands: Sequence[torch.Tensor], budget: Budget,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The einsum `inputs -> output` of `operands` (index names per operand), contracted
    pairwise along opt_einsum's path, each intermediate checked against the budget first;
    `reduce` is applied after every step (the modular tier reduces modulo its prime)."""
    names = sorted({i for idx in inputs for i in idx} | set(output))
    letters = {n: opt_einsum.get_symbol(k) for k, n in enumerate(names)}
    subscripts = ["".join(letters[i] for i in idx) for idx in inputs]
    result = "".join(letters[i] for i in output)
    sizes = {}
    for subscript, operand in zip(subscripts, operands):
        sizes.update(zip(subscript, operand.shape))
    budget.allow([sizes[c] for c in result], "a result")
    if len(operands) <= 2:
        return _step(f"{','.join(subscripts)}->{result}", list(operands), reduce)
    shapes = [tuple(op.shape) for op in operands]
    optimize = "dp" if len(operands) <= 24 else "greedy"
    path, _ = opt_einsum.contract_path(f"{','.join(subscripts)}->{result}", *shapes,
                                       shapes=True, optimize=optimize)
    operands, subscripts = list(operands), list(subscripts)
    for pair in path:
        picked = [subscripts[k] for k in pair]
        rest = [s for k, s in enumerate(subscripts) if k not in pair]
        keep = set(result).union(*rest) if rest else set(result)
        seen = dict.fromkeys("".join(picked))
        out = "".join(c for c in seen if c in keep) if rest else result
        budget.allow([sizes[c] for c in out], "an intermediate")
        value = _step(f"{','.join(picked)}->{out}", [operands[k] for k in pair], reduce)
        for k in sorted(pair, reverse=True):
            del operands[k], subscripts[k]
        operands.append(value)
        subscripts.append(out)
    (value,) = operands
    return value


def _step(spec: str, operands, reduce) -> torch.Tensor:
    value = torch.einsum(spec, *operands)
    return reduce(value) if reduce is not None else value
