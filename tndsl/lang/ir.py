"""The typed intermediate representation: the contract between every stage.

Elaboration produces it with blocks instantiated under full paths and loops unrolled,
so no later stage sees surface syntax. The checker fills in the legs of equations.
Nodes are frozen; spans are excluded from equality so that two networks that mean the
same thing compare equal wherever they were written.

An expression is always a `Sum` of `Term`s; a term is a coefficient (a sympy
expression in dim symbols) times a product of factors; a factor is a tensor
reference, a box around a sum, a mask around a sum, or a parenthesised sum.
Index names are local to an equation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import sympy

from tndsl.lang.errors import Source, Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Dim:
    name: str
    size: sympy.Expr | None  # None: supplied at load time
    span: Span | None = _span()


@dataclass(frozen=True)
class Leg:
    name: str
    dim: str


@dataclass(frozen=True)
class Init:
    name: str
    args: tuple[float, ...] = ()


@dataclass(frozen=True)
class Fixed:
    """What a fixed tensor holds: a built-in function of its legs' positions
    (`tndsl.lang.fixed`), with its real-valued arguments (a rotary base, a rotated count)."""

    function: str
    args: tuple[float, ...] = ()
    options: tuple[str, ...] = ()  # named flags (`rotary(Theta, interleaved)`)


@dataclass(frozen=True)
class Tensor:
    """A param (learnt), an input (given at run time) or a fixed tensor (built-in values,
    such as a rotary map: to the checker, verifier and figures an ordinary tensor)."""

    name: str
    kind: str  # "param" | "input" | "fixed"
    legs: tuple[Leg, ...]
    onehot: str | None = None  # an input leg given as integer ids
    init: Init | None = None
    span: Span | None = _span()
    fixed: Fixed | None = None  # for kind "fixed"


# The built-in all-ones tensor, `ones[p]`: broadcasting made explicit (a bias added at
# every position is `b[m] * ones[p]`). Its legs take their dims from the equation.
ONES = "ones"


@dataclass(frozen=True)
class Ref:
    """A use of a tensor or equation, its legs bound positionally to index names."""

    name: str
    indices: tuple[str, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Box:
    """A function applied to a whole sub-network, contracted first."""

    function: str
    legs: tuple[str, ...]  # for softmax / layernorm / rmsnorm; empty when element-wise
    argument: "Sum"
    span: Span | None = _span()
    eps: float | None = None  # layernorm / rmsnorm: None is the default, 1e-5
    args: tuple[float, ...] = ()  # the box's parameters (`BoxKind.parameters`): softcap's c


@dataclass(frozen=True)
class Condition:
    """`position(left) op position(right) + offset`; the offset is an expression in dims
    (`p - s < Window` is `p < s + Window`)."""

    left: str
    op: str
    right: str
    offset: sympy.Expr = sympy.Integer(0)

    def text(self, left: str | None = None, right: str | None = None) -> str:
        """`s <= p`, `p < s + Window`, with the legs renamed if given."""
        right_side = right or self.right
        if self.offset != 0:
            offset = str(self.offset)
            right_side += f" - {str(-self.offset)}" if offset.startswith("-") \
                else f" + {offset}"
        return f"{left or self.left} {self.op} {right_side}"


@dataclass(frozen=True)
class Mask:
    """Keeps entries where every condition on index positions holds; zero elsewhere
    (and probability zero when directly inside a softmax)."""

    conditions: tuple[Condition, ...]
    argument: "Sum"
    span: Span | None = _span()


Factor = Union[Ref, Box, Mask, "Sum"]


@dataclass(frozen=True)
class Term:
    coefficient: sympy.Expr
    factors: tuple[Factor, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Sum:
    terms: tuple[Term, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Equation:
    """`name[indices] = rhs`. `legs` (the output legs with their dims) and
    `index_dims` (every index used) are filled in by the checker."""

    name: str
    indices: tuple[str, ...]
    rhs: Sum
    span: Span | None = _span()
    legs: tuple[Leg, ...] | None = None
    index_dims: tuple[Leg, ...] | None = None
    instance: str = ""  # the block instance it belongs to, "" at top level


@dataclass(frozen=True)
class Binding:
    """A block argument: the block's input name bound to a tensor of the caller."""

    input: str
    tensor: str
    legs: tuple[Leg, ...]  # the legs the block declares for this input


@dataclass(frozen=True)
class Instance:
    """One instantiation of a block under a path (`blocks.0.attn`)."""

    path: str
    block: str
    bindings: tuple[Binding, ...]
    output: str  # the equation holding the block's return value
    out_legs: tuple[Leg, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Check:
    """`check lhs == rhs`; `legs` are the free legs both sides share (filled by the checker
    unless written explicitly)."""

    label: str
    lhs: Sum
    rhs: Sum
    legs: tuple[Leg, ...] | None = None
    explicit_legs: tuple[str, ...] | None = None
    span: Span | None = _span()
    index_dims: tuple[Leg, ...] | None = None


@dataclass(frozen=True)
class Network:
    dims: tuple[Dim, ...]
    tensors: tuple[Tensor, ...]
    equations: tuple[Equation, ...]
    instances: tuple[Instance, ...]
    checks: tuple[Check, ...]
    source: Source | None = field(default=None, compare=False, repr=False)


def refs(node: Sum | Term | Factor):
    """Every tensor reference inside an expression, depth first, left to right."""
    if isinstance(node, Ref):
        yield node
    elif isinstance(node, Sum):
        for term in node.terms:
            yield from refs(term)
    elif isinstance(node, Term):
        for factor in node.factors:
            yield from refs(factor)
    else:  # Box, Mask
        yield from refs(node.argument)


def indices(node: Sum | Term | Factor) -> set[str]:
    """Every index name that occurs syntactically inside an expression."""
    found: set[str] = set()
    _collect_indices(node, found)
    return found


def _collect_indices(node, found: set[str]) -> None:
    if isinstance(node, Ref):
        found.update(node.indices)
    elif isinstance(node, Sum):
        for term in node.terms:
            _collect_indices(term, found)
    elif isinstance(node, Term):
        for factor in node.factors:
            _collect_indices(factor, found)
    elif isinstance(node, Box):
        found.update(node.legs)
        _collect_indices(node.argument, found)
    elif isinstance(node, Mask):
        for c in node.conditions:
            found.update((c.left, c.right))
        _collect_indices(node.argument, found)


def map_refs(node, fn):
    """The same expression with every `Ref` replaced by `fn(ref)`."""
    if isinstance(node, Ref):
        return fn(node)
    if isinstance(node, Sum):
        return Sum(tuple(map_refs(t, fn) for t in node.terms), node.span)
    if isinstance(node, Term):
        return Term(node.coefficient, tuple(map_refs(f, fn) for f in node.factors), node.span)
    if isinstance(node, Box):
        return Box(node.function, node.legs, map_refs(node.argument, fn), node.span, node.eps,
                   node.args)
    if isinstance(node, Mask):
        return Mask(node.conditions, map_refs(node.argument, fn), node.span)
    raise TypeError(f"not an expression node: {node!r}")


def free_legs(factor: Factor, outside: set[str]) -> tuple[str, ...]:
    """The legs of a box, mask or bracketed sum as a factor of a checked term: the
    indices of its argument it shares with `outside` (the term's other factors and the
    legs kept around it), plus a box's own legs. Sorted, so the result is canonical."""
    argument = factor if isinstance(factor, Sum) else factor.argument
    keep = set(outside)
    if isinstance(factor, Box):
        keep.update(factor.legs)
    return tuple(sorted(indices(argument) & keep))


def outside_of(term: Term, position: int, keep: set[str]) -> set[str]:
    """The indices seen from factor `position` of a term: kept ones and the other factors'."""
    seen = set(keep)
    for k, other in enumerate(term.factors):
        if k != position:
            seen |= indices(other)
    return seen


def dependency_order(network: Network, wanted: list[str] | None = None) -> list[Equation]:
    """Equations in an order where each comes after those it uses. With `wanted`, only the
    equations those names need. The network must be checked (so it has no cycles)."""
    equations = {eq.name: eq for eq in network.equations}
    order: list[Equation] = []
    done: set[str] = set()
    roots = wanted if wanted is not None else list(equations)
    for root in roots:
        stack = [(root, False)]
        while stack:  # iterative: long chains of layers must not hit the recursion limit
            name, expanded = stack.pop()
            if name in done or name not in equations:
                continue
            if expanded:
                done.add(name)
                order.append(equations[name])
                continue
            stack.append((name, True))
            for ref in reversed(list(refs(equations[name].rhs))):
                if ref.name not in done:
                    stack.append((ref.name, False))
    return order
