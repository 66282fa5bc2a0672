"""Contraction planning: the order in which a product term's operands are contracted.

Planned once, at compile time, from the actual dimension sizes, with opt_einsum; the
result is a list of pairwise contractions that code generation emits as written, so no
path search happens when a model runs.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import opt_einsum

from tndsl.errors import ResourceError, Span, TnError, did_you_mean
from tndsl.printer import format_count

# Largest tensor (in bytes, at 4 bytes an entry) a compiled model may create; larger
# intermediates are refused at compile time. Override per call (memory_budget=...).
DEFAULT_MEMORY_BUDGET = 4 * 2**30
BYTES_PER_ENTRY = 4

# Terms with more operands than this are planned with random-greedy: exhaustive and
# dynamic-programming searches grow exponentially with the operand count.
LARGE_TERM = 20
MAX_OPERANDS = 256  # path search on more is slow, and no model needs it in one term


def _auto(n_operands: int):
    if n_operands <= 4:
        return "optimal"
    if n_operands <= LARGE_TERM:
        return "dp"
    return opt_einsum.RandomGreedy(max_repeats=64)


# name -> opt_einsum optimizer (or a function of the operand count choosing one)
OPTIMIZERS = {
    "auto": _auto,
    "optimal": lambda n: "optimal",
    "dp": lambda n: "dp",
    "greedy": lambda n: "greedy",
    "random-greedy": lambda n: opt_einsum.RandomGreedy(max_repeats=64),
}


def optimizer_for(name: str, n_operands: int):
    if name not in OPTIMIZERS:
        hint = did_you_mean(name, OPTIMIZERS) or ""
        raise TnError(f"unknown path optimiser `{name}`",
                      hint=(hint + " " if hint else "") + "valid: " + ", ".join(OPTIMIZERS))
    return OPTIMIZERS[name](n_operands)


@dataclass(frozen=True)
class Step:
    """Contract two operands of the current list (opt_einsum's convention: both are
    removed and the result is appended). `take` holds their positions in the order the
    spec names them, which is descending, so popping them in turn is safe."""

    take: tuple[int, int]
    spec: str          # "hme,pm->hep"
    flops: int
    size: int          # entries of the result


@dataclass(frozen=True)
class TermPlan:
    operands: tuple[str, ...]   # index letters of each operand
    output: str
    steps: tuple[Step, ...]
    flops: int                  # planned
    naive_flops: int            # one contraction over everything at once
    largest: int                # entries of the largest intermediate


def plan_term(operands: Sequence[str], output: str, sizes: Mapping[str, int], *,
              optimizer: str = "auto", memory_budget: int = DEFAULT_MEMORY_BUDGET,
              where: str = "", span: Span | None = None) -> TermPlan:
    """Plan one product term. `operands` and `output` are strings of index letters;
    `sizes` maps each letter to its size. Raises ResourceError if an intermediate would
    exceed `memory_budget` bytes."""
    if len(operands) > MAX_OPERANDS:
        raise ResourceError(f"{where or 'a term'} multiplies {len(operands)} tensors; the "
                            f"compiler plans at most {MAX_OPERANDS} in one term", span,
                            hint="name partial products with equations")
    spec = ",".join(operands) + "->" + output
    shapes = [tuple(sizes[c] for c in op) for op in operands]
    if len(operands) == 1:
        flops = _entries(operands[0], sizes)
        check_budget(output, sizes, memory_budget, where, span)
        return TermPlan(tuple(operands), output, (), flops, flops, _entries(output, sizes))
    state = random.getstate()  # random-greedy reseeds the global generator per trial
    try:
        path, info = opt_einsum.contract_path(spec, *shapes, shapes=True,
                                              optimize=optimizer_for(optimizer, len(operands)))
    finally:
        random.setstate(state)
    steps = []
    for (pair, _, step_spec, _, _), cost in zip(info.contraction_list, _step_costs(info)):
        result = step_spec.split("->")[1]
        steps.append(Step(tuple(sorted(pair, reverse=True)), step_spec, cost,
                          _entries(result, sizes)))
        check_budget(result, sizes, memory_budget, where, span)
    return TermPlan(tuple(operands), output, tuple(steps), int(info.opt_cost),
                    int(info.naive_cost), int(info.largest_intermediate))


def _step_costs(info) -> list[int]:
    # opt_einsum records a scaling, not a cost, per step; recompute each step's flops
    # the way it counts the total (2x the product of all sizes when something is summed).
    costs = []
    for _, removed, step_spec, _, _ in info.contraction_list:
        inputs, result = step_spec.split("->")
        letters = set(inputs.replace(",", ""))
        costs.append(opt_einsum.helpers.flop_count(letters, bool(removed),
                                                   len(inputs.split(",")),
                                                   info.size_dict))
    return costs


def _entries(letters: str, sizes: Mapping[str, int]) -> int:
    total = 1
    for c in letters:
        total *= sizes[c]
    return total


def check_budget(letters: str, sizes, budget: int, where: str, span: Span | None) -> None:
    """Raise ResourceError if a tensor with these legs would exceed `budget` bytes."""
    check_entries(_entries(letters, sizes), budget, where, span)


def check_entries(entries: int, budget: int, where: str, span: Span | None) -> None:
    """Raise ResourceError if a tensor of `entries` entries would exceed `budget` bytes."""
    need = entries * BYTES_PER_ENTRY
    if need > budget:
        raise ResourceError(
            f"{where or 'a contraction'} needs a tensor of {_bytes(need)} "
            f"({format_count(entries)} entries), over the memory budget of {_bytes(budget)}",
            span, hint="reorder the term, use smaller dims, or raise memory_budget")


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def _bytes(n: int) -> str:
    """`4.0 GiB`: binary units up to YiB, beyond them a count of YiB (exact integer
    arithmetic, so a 1,000-digit size neither overflows a float nor prints as 0)."""
    if n < 1024:
        return f"{n} B"
    k = min((n.bit_length() - 1) // 10, len(_UNITS) - 1)
    if k + 1 < len(_UNITS) and round(n / 1024 ** k, 1) >= 1024:
        k += 1  # 1023.96 KiB would print as 1024.0 KiB
    if n < 1024 ** (k + 1):
        return f"{n / 1024 ** k:.1f} {_UNITS[k]}"
    return f"{format_count(n // 1024 ** k)} {_UNITS[k]}"
