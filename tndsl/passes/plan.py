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

from tndsl.lang.errors import ResourceError, Span, TnError, did_you_mean
from tndsl.lang.printer import format_count

# Largest tensor (in bytes, at 4 bytes an entry) a compiled model may create; larger
# intermediates are refused at compile time. Override per call (memory_budget=...).
DEFAULT_MEMORY_BUDGET = 4 * 2**30
BYTES_PER_ENTRY = 4

# Above LARGE_TERM operands the exhaustive dynamic programme (`dp`) grows
# exponentially in general, but not on sparse networks (chains, rings, trees, grids of
# low degree), where its cost-capped form (opt_einsum's: the cap starts at the output's
# size and doubles until a contraction fits, pruning every costlier subtree) takes
# milliseconds at 30 operands and its paths cost 1.7-3.4x fewer FLOPs than
# random-greedy's. So `auto` runs cost-capped dp up to MAX_DP_TERM operands whenever no
# contracted index joins more than MAX_DP_DEGREE operands, keeps greedy's path if that
# is cheaper (dp skips outer products), and plans denser or larger terms with greedy and
# random-greedy, keeping the cheaper. Every choice is deterministic.
LARGE_TERM = 20
MAX_DP_TERM = 64
MAX_DP_DEGREE = 4
MAX_OPERANDS = 256  # path search on more is slow, and no model needs it in one term


def _random_greedy():
    return opt_einsum.RandomGreedy(max_repeats=64)


def _auto(operands: Sequence[str], output: str) -> list[tuple[str, object]]:
    n = len(operands)
    if n <= 4:
        return [("optimal", "optimal")]
    if n <= LARGE_TERM:
        return [("dp", "dp")]
    degree: dict[str, int] = {}
    for op in operands:
        for c in set(op):
            if c not in output:
                degree[c] = degree.get(c, 0) + 1
    if n <= MAX_DP_TERM and max(degree.values(), default=0) <= MAX_DP_DEGREE:
        return [("dp with a cost cap", opt_einsum.DynamicProgramming(cost_cap=True)),
                ("greedy", "greedy")]
    return [("greedy", "greedy"), ("random-greedy", _random_greedy())]


# name -> the planners to try on a term (operand specs, output), the cheapest path kept
OPTIMIZERS = {
    "auto": _auto,
    "optimal": lambda operands, output: [("optimal", "optimal")],
    "dp": lambda operands, output: [("dp", "dp")],
    "greedy": lambda operands, output: [("greedy", "greedy")],
    "random-greedy": lambda operands, output: [("random-greedy", _random_greedy())],
}


def optimizers_for(name: str, operands: Sequence[str], output: str
                   ) -> list[tuple[str, object]]:
    if name not in OPTIMIZERS:
        hint = did_you_mean(name, OPTIMIZERS) or ""
        raise TnError(f"unknown path optimiser `{name}`",
                      hint=(hint + " " if hint else "") + "valid: " + ", ".join(OPTIMIZERS))
    return OPTIMIZERS[name](operands, output)


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
    planner: str = ""           # which path search produced the steps


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
        return TermPlan(tuple(operands), output, (), flops, flops, _entries(output, sizes),
                        "none")
    best = None
    for label, method in optimizers_for(optimizer, operands, output):
        state = random.getstate()  # random-greedy reseeds the global generator per trial
        try:
            path, info = opt_einsum.contract_path(spec, *shapes, shapes=True, optimize=method)
        finally:
            random.setstate(state)
        if best is None or info.opt_cost < best[1].opt_cost:
            best = (path, info, label)
    path, info, planner = best
    if any(len(pair) != 2 for pair in path):
        path, info = opt_einsum.contract_path(spec, *shapes, shapes=True,
                                              optimize=pairwise_path(path, len(operands)))
    steps = []
    for (pair, _, step_spec, _, _), cost in zip(info.contraction_list, _step_costs(info)):
        result = step_spec.split("->")[1]
        steps.append(Step(tuple(sorted(pair, reverse=True)), step_spec, cost,
                          _entries(result, sizes)))
        check_budget(result, sizes, memory_budget, where, span)
    return TermPlan(tuple(operands), output, tuple(steps), int(info.opt_cost),
                    int(info.naive_cost), int(info.largest_intermediate), planner)


def pairwise_path(path: Sequence[tuple[int, ...]], n_operands: int) -> list[tuple[int, ...]]:
    """`path` (opt_einsum's convention: the operands a step takes are removed, its result
    appended) without its one-operand steps. The dp optimiser reduces an operand alone
    first (the trace of `W[c, c]`, a leg no other operand has), which code generation,
    emitting one two-operand einsum per step, cannot express; einsum does that
    reduction within the operand's next pairwise step anyway."""
    theirs = list(range(n_operands))  # operand ids in the order `path` sees them
    ours = list(range(n_operands))    # ... in the order the new path sees them
    fresh, result = n_operands, []
    for step in path:
        taken = [theirs[k] for k in step]
        for k in sorted(step, reverse=True):
            del theirs[k]
        if len(step) == 1:  # the reduced operand keeps its identity, moved to the end
            theirs.append(taken[0])
            continue
        result.append(tuple(ours.index(t) for t in taken))
        ours = [t for t in ours if t not in taken] + [fresh]
        theirs.append(fresh)
        fresh += 1
    return result


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
            f"{where or 'a contraction'} needs a tensor of {format_bytes(need)} "
            f"({format_count(entries)} entries), over the memory budget of {format_bytes(budget)}",
            span, hint="reorder the term, use smaller dims, or raise memory_budget")


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def format_bytes(n: int) -> str:
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
