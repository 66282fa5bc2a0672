"""The registry of fixed tensors: built-in tensors whose values are a function of their
legs' positions, declared with `fixed NAME[legs] = FUNCTION(args)`.

A fixed tensor is an ordinary tensor to the checker, the verifier (an arbitrary tensor
of its shape, so what is proven holds for its actual values too) and figures (a node).
Only the back ends that run a model need its values: the reference evaluator builds
the dense tensor (`tndsl.verify.fixed_values`), and the code generator applies it in a
cheap form (`tndsl.codegen.fixed`: cos/sin for a rotary map, `repeat_interleave` for a
grouping) and never materialises it.

Only names, leg shapes and argument rules live here, as in `tndsl.lang.boxes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from tndsl.lang import ir
from tndsl.lang.errors import LegError, SizeError, Span, UnknownNameError, did_you_mean


@dataclass(frozen=True)
class FixedKind:
    name: str
    legs: str           # what the legs are, in order, for messages and docs
    arguments: str      # what the arguments are
    summary: str
    options: tuple[str, ...] = ()  # flags written by name among the arguments


_KINDS = [
    FixedKind("rotary", "[position, out, in] (out and in of one dim, the head)",
              "(base) or (base, fraction), and `interleaved` last if wanted: the rotary "
              "base θ; the fraction of the head that rotates (default 1; GPT-NeoX's "
              "rotary_pct)",
              "rotary position embedding: out = R[p] in, rotating the pairs (i, i + d/2) "
              "of the first d = int(fraction · head) entries (rounded down to even) by the "
              "angle p θ^(-2i/d), as Llama and GPT-NeoX do; the rest pass through. "
              "`interleaved`: the pairs (2i, 2i + 1) instead, as GPT-J does",
              ("interleaved",)),
    FixedKind("alibi", "[head, query position, key position] (the two positions of one "
              "dim)", "none",
              "ALiBi's position bias (BLOOM): slope_h · (key − query), the slopes "
              "2^(-8(h+1)/n) for n heads a power of two (else those of the power of two "
              "below, then every other one of twice that), as Press et al. and BLOOM"),
    FixedKind("grouping", "[head, group] (head's size a multiple of group's)", "none",
              "1 where head // (heads / groups) == group: query heads sharing a key/value "
              "head (grouped-query attention)"),
]

FIXED: dict[str, FixedKind] = {kind.name: kind for kind in _KINDS}


def validate(function: str, legs: tuple[ir.Leg, ...], args: tuple[float, ...],
             sizes: Mapping[str, int | None], span: Span | None,
             function_span: Span | None = None, options: tuple[str, ...] = ()) -> None:
    """Raise a located error if the legs or arguments do not fit the function."""
    if function not in FIXED:
        hint = did_you_mean(function, FIXED)
        raise UnknownNameError(f"unknown fixed tensor `{function}`", function_span or span,
                               hint=(hint + " " if hint else "") + "valid: " + ", ".join(FIXED))
    kind = FIXED[function]
    for option in options:
        if option not in kind.options:
            raise UnknownNameError(
                f"`{function}` has no option `{option}`", span,
                hint=("valid: " + ", ".join(kind.options)) if kind.options
                else f"`{function}` takes {kind.arguments}")
    if len(set(options)) != len(options):
        raise SizeError(f"an option of `{function}` is given twice", span)
    if function == "rotary":
        if len(legs) != 3 or legs[1].dim != legs[2].dim:
            raise LegError(f"`rotary` has legs {kind.legs}", span)
        if len(args) not in (1, 2):
            raise SizeError(f"`rotary` takes {kind.arguments}; got {len(args)} arguments", span)
        if args[0] <= 0:
            raise SizeError(f"the rotary base must be positive, not {args[0]:g}", span)
        if len(args) == 2 and not 0 < args[1] <= 1:
            raise SizeError(f"the rotated fraction is in (0, 1], not {args[1]:g}", span)
    elif function == "alibi":
        if len(legs) != 3 or legs[1].dim != legs[2].dim:
            raise LegError(f"`alibi` has legs {kind.legs}", span)
        if args:
            raise SizeError("`alibi` takes no arguments", span)
    elif function == "grouping":
        if len(legs) != 2:
            raise LegError(f"`grouping` has legs {kind.legs}", span)
        if args:
            raise SizeError("`grouping` takes no arguments", span)
        heads, groups = sizes.get(legs[0].dim), sizes.get(legs[1].dim)
        if heads is not None and groups is not None and heads % groups:
            raise SizeError(f"{heads} heads ({legs[0].dim}) cannot be shared equally by "
                            f"{groups} groups ({legs[1].dim})", span)


def rotated(tensor: ir.Tensor, sizes: Mapping[str, int | None]) -> int:
    """How many leading entries of a rotary map's head dim rotate: int(fraction · head)
    rounded down to even, as pairs rotate (exact for checkpoints, where it is even)."""
    args = tensor.fixed.args
    head = sizes[tensor.legs[1].dim]
    # (rounded to 1e-9 first: RotaryDim / Head may come back a hair under a whole number)
    count = int(round(head * args[1], 9)) if len(args) > 1 else head
    return count - count % 2


def interleaved(tensor: ir.Tensor) -> bool:
    """Whether a rotary map turns the pairs (2i, 2i + 1) (GPT-J) rather than (i, i + d/2)."""
    return "interleaved" in tensor.fixed.options


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's per-head slopes (Press et al.; BLOOM's `build_alibi_tensor`): for n heads a
    power of two, 2^(-8k/n) for k = 1..n; else those of the power of two p below n, then
    2^(-4(2k-1)/p) for k = 1..n-p (every other slope of 2p heads)."""
    power = 1 << (heads.bit_length() - 1)
    slopes = [2.0 ** (-8 * k / power) for k in range(1, power + 1)]
    slopes += [2.0 ** (-4 * (2 * k - 1) / power) for k in range(1, heads - power + 1)]
    return slopes


def group_size(tensor: ir.Tensor, sizes: Mapping[str, int | None]) -> int:
    """Query heads per group of a grouping tensor."""
    return sizes[tensor.legs[0].dim] // sizes[tensor.legs[1].dim]


def partner(operands, contracted: str, result: str, layout, indices=lambda op: op.indices,
            must_have: str | None = None):
    """The one operand of a term that a fixed tensor is applied to, if the rewrite is
    exact: the only operand with `contracted`, which it has once and not `result`
    (and `must_have` once, if given: a rotary map's position leg), with `contracted`
    not kept in the output `layout`. `indices` reads an operand's index names. The
    compiler (codegen/fixed.py) and the cost model (passes/cost.py) share this rule."""
    if contracted in layout:
        return None
    having = [op for op in operands if contracted in indices(op)]
    if len(having) != 1:
        return None
    found = indices(having[0])
    if found.count(contracted) != 1 or result in found:
        return None
    if must_have is not None and found.count(must_have) != 1:
        return None
    return having[0]
