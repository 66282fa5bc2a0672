"""The surface syntax tree: what the user wrote, with spans, before any meaning.

Elaboration (`tndsl.lang.elaborate`) turns this into the IR; nothing after it sees these
classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from tndsl.lang.errors import Source, Span


@dataclass(frozen=True)
class Ident:
    name: str
    span: Span


@dataclass(frozen=True)
class LoopVar:
    """A `{l}` segment of a path, replaced by the loop's value when unrolled."""

    name: str
    span: Span


Segment = Union[str, int, LoopVar]


@dataclass(frozen=True)
class Path:
    segments: tuple[Segment, ...]
    span: Span

    @property
    def is_simple(self) -> bool:
        return len(self.segments) == 1

    def __str__(self) -> str:
        return ".".join("{" + s.name + "}" if isinstance(s, LoopVar) else str(s)
                        for s in self.segments)


# ---- expressions ---------------------------------------------------------------------

@dataclass(frozen=True)
class Number:
    text: str
    span: Span


@dataclass(frozen=True)
class BareName:
    """A path without legs: a dim used as a number, or a whole tensor passed to a block."""

    path: Path
    span: Span


@dataclass(frozen=True)
class TensorRef:
    path: Path
    indices: tuple[Ident, ...]
    span: Span


@dataclass(frozen=True)
class LegBox:
    """`softmax[s](...)`: a function applied along named legs."""

    function: Path
    legs: tuple[Ident, ...]
    argument: "Expr"
    span: Span
    options: tuple["Expr", ...] = ()  # scalar arguments after the first: an eps


@dataclass(frozen=True)
class Call:
    """`relu(x)`, `sqrt(Head)` or a block instantiation `Attention(x) as attn`."""

    function: Path
    arguments: tuple["Expr", ...]
    rename: tuple[Ident, ...] | None
    instance: Path | None
    span: Span


@dataclass(frozen=True)
class Binary:
    op: str  # one of + - * /
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Negate:
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Comparison:
    """Two affine expressions of index positions, numbers and dims: `p - s < Window`."""

    left: "Expr"
    op: str
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Where:
    """`expr where s <= p`: entries where a condition fails are masked out."""

    argument: "Expr"
    conditions: tuple[Comparison, ...]
    span: Span


Expr = Union[Number, BareName, TensorRef, LegBox, Call, Binary, Negate, Where]


# ---- statements ----------------------------------------------------------------------

@dataclass(frozen=True)
class LegDecl:
    name: Ident
    dim: Ident
    onehot: bool
    span: Span


@dataclass(frozen=True)
class DimDecl:
    name: Ident
    size: Expr | None
    span: Span


@dataclass(frozen=True)
class ConstDecl:
    """`const Eps = 1e-5`: a real number, used where a box or a fixed tensor takes one."""

    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True)
class FixedDecl:
    """`fixed R[p: Context, e: Head, f: Head] = rotary(Theta)`: a built-in tensor."""

    path: Path
    legs: tuple[LegDecl, ...]
    function: Ident
    args: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Init:
    name: Ident
    args: tuple[str, ...]
    span: Span


@dataclass(frozen=True)
class TensorDecl:
    kind: str  # "param" or "input"
    path: Path
    legs: tuple[LegDecl, ...]
    init: Init | None
    span: Span


@dataclass(frozen=True)
class Equation:
    target: Path
    indices: tuple[Ident, ...]
    rhs: Expr
    span: Span


@dataclass(frozen=True)
class BlockParam:
    name: Ident
    legs: tuple[LegDecl, ...]
    span: Span


@dataclass(frozen=True)
class BlockDef:
    name: Ident
    params: tuple[BlockParam, ...]
    out_legs: tuple[LegDecl, ...]
    body: tuple["Statement", ...]
    span: Span


@dataclass(frozen=True)
class Return:
    value: Expr
    span: Span


@dataclass(frozen=True)
class ForLoop:
    var: Ident
    start: Number | Ident
    stop: Number | Ident
    body: tuple["Statement", ...]
    span: Span


@dataclass(frozen=True)
class IfStmt:
    """`if l % 2 == 0 { ... } else { ... }`: decided when the file is unrolled."""

    conditions: tuple["Comparison", ...]
    body: tuple["Statement", ...]
    orelse: tuple["Statement", ...]
    span: Span


@dataclass(frozen=True)
class Check:
    label: Ident | None
    legs: tuple[Ident, ...] | None
    lhs: Expr
    rhs: Expr
    span: Span


Statement = Union[DimDecl, ConstDecl, FixedDecl, TensorDecl, Equation, BlockDef, ForLoop, IfStmt,
                  Check, Return]


@dataclass(frozen=True)
class Module:
    statements: tuple[Statement, ...]
    source: Source
