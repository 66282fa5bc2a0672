"""Proving `check A == B`: the tiers in order, and what a result says.

1. Symbolic: expand both sides to canonical monomials (`symbolic.py`), applying the
   lemmas of the fixed tensors, masks and boxes (`lemmas.py`, `masks.py`); if the
   difference is zero, the identity holds for every size and every value: proven.
2. Randomized exact, for identities without boxes (masks are exact): evaluate both
   sides modulo a prime on random values at small sizes, three times
   (`numeric.Modular`), fixed tensors at their built-in values where these are integers.
   A difference is confirmed by a concrete counterexample before it refutes; agreement
   proves with error probability at most (d / p)³ when the symbolic tier could not run.
3. Numeric, for identities with boxes or with fixed tensors whose values are not
   integers: float64 through the reference evaluator on random data, the fixed tensors
   at their built-in values. A difference beyond the evaluation's own round-off bound
   (`roundoff.py`) refutes; agreement is evidence, not proof: *supported*.

The soundness rule: a check is *refuted* only with a counterexample that is a real
instance of the file (its fixed tensors at their built-in values), and the
counterexample line is always printed; it is *proven* only by the symbolic tier (or the
randomized exact tier's bound, with no fixed tensor whose values it could not use).
Anything else is *supported* (it held on every evaluation tried) or *unknown*.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import sympy
import torch

from tndsl.lang import ir
from tndsl.lang.errors import Span, TnError
from tndsl.verify import canon, numeric, symbolic
from tndsl.verify.budget import TIER_SECONDS, Budget, Stopped

TRIALS = 3
STATUSES = ("proven", "refuted", "supported", "unknown")


@dataclass(frozen=True)
class Result:
    label: str
    status: str                  # "proven" | "refuted" | "supported" | "unknown"
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
    if small is None:
        small = _small(program, None)
    elif not isinstance(small, _Small):
        small = _Small(small, (), True)
    result = _prove(program, check, small, budgets)
    return Result(result.label, result.status, result.tier, result.detail, result.residual,
                  result.counterexample, time.perf_counter() - start, check.span)


@dataclass(frozen=True)
class _Small:
    """The program at the sizes the evaluation tiers use (or the error that prevented
    choosing them), what those sizes could not meet, and whether the user gave them."""
    program: object
    notes: tuple[str, ...]
    given: bool


def _small(program, dims, keep_up_to: int = 12, avoid=()) -> _Small:
    try:
        if dims:
            return _Small(numeric.small_program(program, dims), (), True)
        sizes, notes = numeric.small_sizes(program, keep_up_to=keep_up_to, avoid=avoid)
        return _Small(program.reparse(sizes), notes, False)
    except TnError as e:
        return _Small(e, (), bool(dims))  # the evaluation tiers report it when needed


def _lemma_note(expander) -> str:
    used = sorted(expander.lemmas.used)
    return f"; lemmas: {', '.join(used)}" if used else ""


def _prove(program, check: ir.Check, small: _Small, budgets) -> Result:
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
        residual = {k: sympy.expand(c) for k, c in residual.items()}
        residual = symbolic.complements({k: c for k, c in residual.items() if c != 0},
                                        set(legs), symbolic_budget.deadline, expander.lemmas,
                                        {leg: dims[leg] for leg in legs})
        if residual and symbolic.case_split(residual, {leg: dims[leg] for leg in legs},
                                            symbolic_budget.deadline, expander.lemmas):
            residual = {}
        if not residual:
            sides = f"{_count(len(lhs), 'monomial')} on each side" if len(lhs) == len(rhs) \
                else f"{_count(len(lhs), 'monomial')} on the left, {len(rhs)} on the right"
            return Result(label, "proven", "symbolic",
                          f"{sides}, equal in canonical form{_lemma_note(expander)}")
        symbolic_note = f"{_count(len(residual), 'monomial')} " \
                        f"{'does' if len(residual) == 1 else 'do'} not cancel"
    except symbolic.TooLarge:
        symbolic_note = f"stopped: the expansion exceeds {symbolic.MAX_MONOMIALS:,} monomials"
    except canon.TimeBudget:
        symbolic_note = f"stopped: over its time budget of {symbolic_budget.seconds:g} s"
    residual_text = tuple(symbolic.render_monomial(k, c, display=expander.display)
                          for k, c in sorted(residual.items(), key=repr)) if residual else ()
    fixed = _fixed_in(program, check)
    if fixed and residual:
        symbolic_note += " (fixed tensors " + ", ".join(f"`{n}`" for n in sorted(fixed)) + \
            " as arbitrary tensors, beyond the lemmas)"
    boxes = _has_boxes(program, check)
    if residual and not small.given and not isinstance(small.program, TnError) and any(
            numeric._vanishes(c, small.program.sizes) for c in residual.values()):
        # The small sizes are roots of the residual's coefficients: choose others.
        small = _small(program, None, avoid=tuple(residual.values()))
    if isinstance(small.program, TnError):
        return Result(label, "unknown", "", f"symbolic: {symbolic_note}; no small sizes to "
                      f"evaluate at: {small.program.message}", residual_text)
    try:
        return _evaluate(program, check, small, budgets, boxes, fixed, residual,
                         symbolic_note, residual_text)
    except NotImplementedError as e:
        return Result(label, "unknown", "", f"symbolic: {symbolic_note}; the reference "
                      f"evaluator cannot evaluate it: {e}", residual_text)
    except Stopped as first:
        # Over the memory budget at the usual small sizes (dims up to 12 keep theirs):
        # try once more with every dim shrunk, before giving up.
        smaller = _small(program, None, keep_up_to=2) if "entries" in first.reason and \
            not small.given else None
        if smaller is not None and not isinstance(smaller.program, TnError) \
                and smaller.program.sizes != small.program.sizes:
            try:
                return _evaluate(program, check, smaller, budgets, boxes, fixed, residual,
                                 symbolic_note, residual_text)
            except Stopped as second:
                first = second
            except NotImplementedError as e:
                return Result(label, "unknown", "", f"symbolic: {symbolic_note}; the "
                              f"reference evaluator cannot evaluate it: {e}", residual_text)
        tier = "randomized exact" if not boxes else "numeric"
        return Result(label, "unknown", "", f"symbolic: {symbolic_note}; {first.tier or tier}: "
                      f"stopped: {first.reason}", residual_text)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _evaluate(program, check, small: _Small, budgets, boxes, fixed, residual, symbolic_note,
              residual_text) -> Result:
    """The randomized exact tier, then the numeric one, at `small` sizes."""
    label = check.label
    at = small.program
    small_check = next(c for c in at.checks if c.label == label)
    notes = "".join(f"; note: {n}" for n in small.notes)
    if not boxes:
        budget = budgets["randomized exact"].start()
        try:
            for seed in range(TRIALS):
                left, right = numeric.modular_sides(at, small_check, seed, budget)
                if torch.equal(left, right):
                    continue
                comparison = numeric.compare(at, small_check, boxes=False, seeds=range(8),
                                             budget=budgets["numeric"].start(),
                                             fixed=bool(fixed))
                if comparison.example is not None:
                    return Result(label, "refuted", "randomized exact",
                                  f"the sides differ modulo {numeric.PRIME:,} at small sizes; "
                                  f"symbolic: {symbolic_note}", residual_text,
                                  comparison.example)
                return Result(label, "unknown", "",
                              f"symbolic: {symbolic_note}; randomized exact: the sides differ "
                              f"modulo {numeric.PRIME:,} (seed {seed}) at sizes {_sizes(at)}, "
                              "but no float64 counterexample was found on small integer data"
                              f"{notes}", residual_text)
        except ValueError as e:  # an irrational coefficient or fixed tensor at these sizes
            modular_note = f"cannot run exactly ({e})"
        except Stopped as e:
            e.tier = "randomized exact"
            raise
        else:
            with_fixed = (" with the fixed tensors' built-in values ("
                          + ", ".join(f"`{n}`" for n in sorted(fixed)) + ")") if fixed else ""
            if residual is None and not fixed:
                degree = _degree(program, check)
                bound = (degree / numeric.PRIME) ** TRIALS
                return Result(label, "proven", "randomized exact",
                              f"equal modulo {numeric.PRIME:,} at {TRIALS} random points at "
                              f"small sizes; degree ≤ {degree}, error probability ≤ {bound:.0e}"
                              f"; symbolic: {symbolic_note}")
            # The residual's coefficients do not vanish at these sizes, yet the sides
            # agree: the identity holds there (with probability 1 - (d/p)³), not proven
            # for every size.
            return Result(label, "supported", "randomized exact",
                          f"holds exactly{with_fixed} at sizes {_sizes(at)}: equal modulo "
                          f"{numeric.PRIME:,} at {TRIALS} random points; not proven for "
                          f"every size; symbolic: {symbolic_note}{notes}", residual_text)
    else:
        modular_note = "has boxes, so it is not a polynomial identity"

    size_sets = [at]
    if fixed:  # values that are not integers: several sizes and seeds
        other = _other_sizes(program, small)
        if other is not None:
            size_sets.append(other)
    doubtful, overflow = "", ""
    tried = []
    for sized in size_sets:
        sized_check = next(c for c in sized.checks if c.label == label)
        try:
            comparison = numeric.compare(sized, sized_check, boxes=True,
                                         budget=budgets["numeric"].start(), fixed=bool(fixed))
        except Stopped as e:
            e.tier = "numeric"
            raise
        if comparison.example is not None:
            if _has_norms(program, check):
                # A norm's eps (1e-5) breaks invariances that hold without it (scaling):
                # a difference that vanishes with eps = 0 is reported with that reason.
                without = numeric.compare(sized, sized_check, boxes=True, fixed=bool(fixed),
                                          budget=budgets["numeric"].start(), eps_scale=0.0)
                if without.example is None and not without.within_roundoff:
                    e = comparison.example
                    return Result(label, "unknown", "", f"symbolic: {symbolic_note}; numeric: "
                                  f"the sides differ by {abs(e.lhs - e.rhs):.3g} (at "
                                  f"{e.render()[len('counterexample at '):]}), and agree when "
                                  "the norms' eps is 0: the identity holds only as eps → 0"
                                  f"{notes}", residual_text)
            return Result(label, "refuted", "numeric",
                          f"float64 evaluation differs beyond its round-off bound; symbolic: "
                          f"{symbolic_note}", residual_text, comparison.example)
        doubtful = doubtful or comparison.within_roundoff
        overflow = overflow or comparison.overflowed
        tried.append(_sizes(sized))
    if doubtful:
        return Result(label, "unknown", "", f"symbolic: {symbolic_note}; randomized exact: "
                      f"{modular_note}; numeric: {doubtful}: neither refuted nor supported"
                      f"{notes}", residual_text)
    with_fixed = " with the fixed tensors' built-in values" if fixed else ""
    overflowed = f" ({overflow}: those entries were left out)" if overflow else ""
    return Result(label, "supported", "numeric",
                  f"holds numerically{with_fixed}: float64 evaluation agrees within its "
                  f"round-off bound at 5 random points at sizes {'; and at '.join(tried)}"
                  f"{overflowed} (evidence, not proof); symbolic: {symbolic_note}; randomized "
                  f"exact: {modular_note}{notes}", residual_text)


def _other_sizes(program, small: _Small):
    """The program at a second set of small sizes (each shrunk dim one larger)."""
    if small.given:
        return None
    sizes, _ = numeric.small_sizes(program)
    try:
        return program.reparse({n: v + 1 for n, v in sizes.items()}) if sizes else None
    except TnError:
        return None


def _reachable(program, check: ir.Check):
    """Every expression node of the check's sides, through the equations they refer to
    (each equation once)."""
    equations = {eq.name: eq for eq in program.network.equations}
    seen: set[str] = set()
    stack = [check.lhs, check.rhs]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ir.Box, ir.Mask)):
            stack.append(node.argument)
        elif isinstance(node, ir.Sum):
            for term in node.terms:
                stack.extend(term.factors)
        elif isinstance(node, ir.Ref) and node.name in equations and node.name not in seen:
            seen.add(node.name)
            stack.append(equations[node.name].rhs)


def _has_norms(program, check: ir.Check) -> bool:
    """Whether a layer norm or rms norm (with its eps) is reachable from the check."""
    return any(isinstance(node, ir.Box) and node.function in ("layernorm", "rmsnorm")
               for node in _reachable(program, check))


def _fixed_in(program, check: ir.Check) -> set[str]:
    """The fixed tensors a check uses, through the equations it refers to."""
    fixed = {t.name for t in program.network.tensors if t.kind == "fixed"}
    if not fixed:
        return set()
    equations = {eq.name: eq for eq in program.network.equations}
    seen: set[str] = set()
    found: set[str] = set()
    stack = [check.lhs, check.rhs]
    while stack:
        for ref in ir.refs(stack.pop()):
            if ref.name in fixed:
                found.add(ref.name)
            elif ref.name in equations and ref.name not in seen:
                seen.add(ref.name)
                stack.append(equations[ref.name].rhs)
    return found


def _sizes(program) -> str:
    return ", ".join(f"{k} = {v}" for k, v in program.sizes.items() if v is not None)


def _has_boxes(program, check: ir.Check) -> bool:
    # A mask is exact in every tier (its argument times 0 or 1); a box is not.
    return any(isinstance(node, ir.Box) for node in _reachable(program, check))


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
