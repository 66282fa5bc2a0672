"""Proving `check A == B`: the tiers in order, and what a result says.

1. Symbolic: expand both sides to canonical monomials (`symbolic.py`); if the
   difference is zero, the identity holds for every size and every value: proven.
2. Randomized exact, for box-free identities: evaluate both sides modulo a prime on
   random values at small sizes, three times (`numeric.Modular`). Any difference refutes;
   agreement proves with error probability at most (d / p)³.
3. Numeric, for identities with boxes: float64 through the reference evaluator on random
   data. A difference beyond 1e-9 (relative) refutes; agreement is evidence, not proof.

A refutation carries the symbolic residual (what does not cancel, as `.tn` text) when the
symbolic tier ran, and one concrete entry where the two sides differ.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import torch

from tndsl.lang import ir
from tndsl.lang.errors import Span, TnError
from tndsl.verify import canon, numeric, symbolic
from tndsl.verify.budget import TIER_SECONDS, Budget, Stopped

TRIALS = 3


@dataclass(frozen=True)
class Result:
    label: str
    status: str                  # "proven" | "refuted" | "unknown"
    tier: str                    # which tier decided, or "" when none did
    detail: str
    residual: tuple[str, ...] = ()         # uncancelled monomials, `.tn` text
    counterexample: numeric.Counterexample | None = None
    seconds: float = 0.0
    span: Span | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.status != "refuted"

    def render(self) -> str:
        where = f"{self.span}: " if self.span else ""
        head = f"{where}check {self.label}: {self.status}"
        head += f" ({self.tier}: {self.detail})" if self.tier else f" ({self.detail})"
        lines = [head]
        if self.residual:
            lines.append("  residual, left - right:")
            shown = self.residual[:12]
            lines += [f"    {term}" for term in shown]
            if len(self.residual) > len(shown):
                lines.append(f"    ... {len(self.residual) - len(shown)} more terms")
        if self.counterexample is not None:
            lines.append("  " + self.counterexample.render())
        return "\n".join(lines)


def prove_all(program, dims=None, budgets: Mapping[str, Budget] | None = None
              ) -> list[Result]:
    """Results for every check of the program, in order. `budgets` maps a tier name
    (see budget.TIER_SECONDS) to its Budget, for those to change."""
    small = _small(program, dims)
    return [prove(program, check, small, budgets) for check in program.checks]


def prove(program, check: ir.Check, small=None, budgets=None) -> Result:
    start = time.perf_counter()
    budgets = {**{tier: Budget(seconds=s) for tier, s in TIER_SECONDS.items()},
               **(budgets or {})}
    result = _prove(program, check, small if small is not None else _small(program, None),
                    budgets)
    return Result(result.label, result.status, result.tier, result.detail, result.residual,
                  result.counterexample, time.perf_counter() - start, check.span)


def _small(program, dims, keep_up_to: int = 12):
    try:
        return numeric.small_program(program, dims, keep_up_to=keep_up_to)
    except TnError as e:
        return e  # the evaluation tiers report it when they are needed


def _prove(program, check: ir.Check, small, budgets) -> Result:
    label = check.label
    symbolic_budget = budgets["symbolic"].start()
    expander = symbolic.Expander(program, deadline=symbolic_budget.deadline)
    legs = tuple(leg.name for leg in check.legs)
    dims = {leg.name: leg.dim for leg in check.index_dims}
    residual = None
    try:
        lhs = expander.side(check.lhs, legs, dims)
        rhs = expander.side(check.rhs, legs, dims)
        residual = {k: lhs.get(k, 0) - rhs.get(k, 0) for k in set(lhs) | set(rhs)}
        residual = {k: c for k, c in residual.items() if c != 0}
        if not residual:
            return Result(label, "proven", "symbolic",
                          f"{len(lhs)} monomial{'s' if len(lhs) != 1 else ''} on each side, "
                          "equal in canonical form")
        symbolic_note = f"{len(residual)} monomial{'s' if len(residual) != 1 else ''} " \
                        "do not cancel"
    except symbolic.TooLarge:
        symbolic_note = f"stopped: the expansion exceeds {symbolic.MAX_MONOMIALS:,} monomials"
    except canon.TimeBudget:
        symbolic_note = f"stopped: over its time budget of {symbolic_budget.seconds:g} s"
    residual_text = tuple(symbolic.render_monomial(k, c, display=expander.display)
                          for k, c in sorted(residual.items(), key=repr)) if residual else ()
    boxes = _has_boxes(program, check)
    if isinstance(small, TnError):
        return Result(label, "unknown", "", f"symbolic: {symbolic_note}; no small sizes to "
                      f"evaluate at: {small.message}", residual_text)
    try:
        return _evaluate(program, check, small, budgets, boxes, residual, symbolic_note,
                         residual_text)
    except Stopped as first:
        # Over the memory budget at the usual small sizes (dims up to 12 keep theirs):
        # try once more with every dim shrunk, before giving up.
        smaller = _small(program, None, keep_up_to=2) if "entries" in first.reason else None
        if smaller is not None and not isinstance(smaller, TnError) \
                and smaller.sizes != small.sizes:
            try:
                return _evaluate(program, check, smaller, budgets, boxes, residual,
                                 symbolic_note, residual_text)
            except Stopped as second:
                first = second
        tier = "randomized exact" if not boxes else "numeric"
        return Result(label, "unknown", "", f"symbolic: {symbolic_note}; {first.tier or tier}: "
                      f"stopped: {first.reason}", residual_text)


def _evaluate(program, check, small, budgets, boxes, residual, symbolic_note,
              residual_text) -> Result:
    """The randomized exact tier, then the numeric one, at `small` sizes."""
    label = check.label
    small_check = next(c for c in small.checks if c.label == label)
    if not boxes:
        budget = budgets["randomized exact"].start()
        try:
            for seed in range(TRIALS):
                left, right = numeric.modular_sides(small, small_check, seed, budget)
                if not torch.equal(left, right):
                    example = numeric.counterexample(small, small_check, boxes=False,
                                                     budget=budgets["numeric"].start())
                    return Result(label, "refuted", "randomized exact",
                                  f"the sides differ modulo {numeric.PRIME:,} at small sizes; "
                                  f"symbolic: {symbolic_note}", residual_text, example)
        except ValueError as e:  # an irrational coefficient at these sizes
            modular_note = f"cannot run exactly ({e})"
        except Stopped as e:
            e.tier = "randomized exact"
            raise
        else:
            if residual is None:
                degree = _degree(program, check)
                bound = (degree / numeric.PRIME) ** TRIALS
                return Result(label, "proven", "randomized exact",
                              f"equal modulo {numeric.PRIME:,} at {TRIALS} random points at "
                              f"small sizes; degree ≤ {degree}, error probability ≤ {bound:.0e}"
                              f"; symbolic: {symbolic_note}")
            return Result(label, "unknown", "",
                          f"symbolic: {symbolic_note}; yet the sides agree exactly at the small "
                          f"sizes {_sizes(small)}, which may be special", residual_text)
    else:
        modular_note = "has boxes, so it is not a polynomial identity"

    try:
        example = numeric.counterexample(small, small_check, boxes=True,
                                         budget=budgets["numeric"].start())
    except Stopped as e:
        e.tier = "numeric"
        raise
    if example is not None:
        return Result(label, "refuted", "numeric",
                      f"float64 evaluation differs; symbolic: {symbolic_note}", residual_text,
                      example)
    return Result(label, "unknown", "",
                  f"symbolic: {symbolic_note}; randomized exact: {modular_note}; numeric: "
                  "float64 evaluation agrees at 5 random points to 1e-9 (evidence, not proof)",
                  residual_text)


def _sizes(program) -> str:
    return ", ".join(f"{k} = {v}" for k, v in program.sizes.items() if v is not None)


def _has_boxes(program, check: ir.Check) -> bool:
    equations = {eq.name: eq for eq in program.network.equations}
    seen: set[str] = set()
    stack = [check.lhs, check.rhs]
    while stack:
        node = stack.pop()
        if isinstance(node, (ir.Box, ir.Mask)):
            return True
        if isinstance(node, ir.Sum):
            for term in node.terms:
                stack.extend(term.factors)
        elif isinstance(node, ir.Ref) and node.name in equations and node.name not in seen:
            seen.add(node.name)
            stack.append(equations[node.name].rhs)
    return False


def _degree(program, check: ir.Check) -> int:
    """An upper bound on the polynomial degree of either side in the random values."""
    equations = {eq.name: eq for eq in program.network.equations}
    inputs = {t.name for t in program.network.tensors if t.onehot is None}
    memo: dict[str, int] = {}

    def of(node) -> int:
        if isinstance(node, ir.Ref):
            if node.name in equations:
                if node.name not in memo:
                    for eq in ir.dependency_order(program.network, [node.name]):
                        if eq.name not in memo:
                            memo[eq.name] = of(eq.rhs)
                return memo[node.name]
            return 1 if node.name in inputs else 0
        if isinstance(node, ir.Sum):
            return max((sum(of(f) for f in t.factors) for t in node.terms), default=0)
        return of(node.argument)

    return max(1, of(check.lhs), of(check.rhs))


def equivalent(program, a: str, b: str, legs: tuple[str, ...] | None = None) -> Result:
    """Whether two `.tn` expressions (or equation names) are equal in the program:
    `equivalent(program, "A[i, j] * B[j, k]", "C[i, k]")` or `equivalent(program, "x", "y")`.
    Free legs follow Einstein's convention unless `legs` names them."""
    own = {eq.name: eq.indices for eq in program.network.equations}
    rebound = {name.split("@")[0] for name in own if "@" in name}
    for e in (a, b):
        base = e.split("@")[0].split("[")[0].strip()
        if base in rebound:
            # The query is read at the end of the file, where `acc` means its last version.
            raise TnError(f"`{base}` is rebound in a loop, so `{e}` is ambiguous here",
                          hint="compare a name defined once (give the value a path such as "
                               "blocks.{l}.acc in the loop)")
    a, b = (f"{e}[{', '.join(own[e])}]" if e in own else e for e in (a, b))
    source = program.network.source
    explicit = f"[{', '.join(legs)}] " if legs is not None else ""
    text = f"{source.text}\ncheck equivalent: {explicit}{a} == {b}\n"
    sized = {k: v for k, v in program.sizes.items() if v is not None}
    extended = program.reparse(_overrides(program, sized), text, f"{source.name} + query")
    return prove(extended, extended.checks[-1])


def _overrides(program, sizes):
    # Only base dims may be given; derived ones follow.
    base = {d.name for d in program.network.dims if d.size is None or not d.size.free_symbols}
    return {k: v for k, v in sizes.items() if k in base}
