"""Source positions and the one error tree every stage raises.

Every mistake in a `.tn` file becomes a `TnError` with a `Span`, rendered like a
compiler message::

    model.tn:3:18: error: unknown tensor `W_q`
        3 | y[p] = x[p, m] * W_q[m, n]
          |                  ^^^
      hint: did you mean `W_Q`?

Stages that can find several independent mistakes collect them and raise one
`TnErrors`, itself a `TnError`, so callers only ever catch `TnError`.
"""
from __future__ import annotations

import bisect
import difflib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Sequence

from tndsl.lang.text import printable, terminal


@dataclass(frozen=True, eq=False)
class Source:
    """The text of one `.tn` file and the name it is reported under."""

    name: str
    text: str

    @cached_property
    def _line_starts(self) -> list[int]:
        starts = [0]
        starts.extend(i + 1 for i, ch in enumerate(self.text) if ch == "\n")
        return starts

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def line_text(self, line: int) -> str:
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start:] if end < 0 else self.text[start:end]


@dataclass(frozen=True)
class Span:
    """A half-open range of characters in a source."""

    source: Source = field(repr=False, compare=False)
    start: int
    end: int

    @property
    def line(self) -> int:
        return self.source.line_col(self.start)[0]

    @property
    def col(self) -> int:
        return self.source.line_col(self.start)[1]

    def __str__(self) -> str:
        return f"{terminal(self.source.name)}:{self.line}:{self.col}"

    def to(self, other: "Span") -> "Span":
        """The span covering both."""
        return Span(self.source, min(self.start, other.start), max(self.end, other.end))


# The most characters of a source line an error shows: a longer line is cut to a window
# around the caret, marked `...` where it is cut (a one-line 3 MB file must not be
# echoed whole).
EXCERPT_WIDTH = 160


def excerpt(span: Span) -> str:
    """The source line of a span with a caret line under it; a long line is cut to
    EXCERPT_WIDTH characters around the caret, and a character a terminal would act on
    (ESC, `\\r`, ...) is shown as its escape, the caret still under its place."""
    line, col = span.source.line_col(span.start)
    text = span.source.line_text(line)
    end_line, end_col = span.source.line_col(max(span.start, span.end - 1))
    width = (end_col - col + 1) if end_line == line else len(text) - col + 1
    width = max(1, min(width, EXCERPT_WIDTH))
    start = 0
    if len(text) > EXCERPT_WIDTH:  # a window holding the caret's start, ends marked
        start = max(0, min(col - 1 - EXCERPT_WIDTH // 4, len(text) - EXCERPT_WIDTH))
        shown = text[start:start + EXCERPT_WIDTH]
        width = min(width, start + EXCERPT_WIDTH - (col - 1))
        text = ("..." if start else "") + shown + \
            ("..." if start + EXCERPT_WIDTH < len(text) else "")
        col = col - start + (3 if start else 0)
    cells = [printable(ch.expandtabs(1)) for ch in text]  # each character as shown
    gutter = str(line)
    pad = " " * len(gutter)
    before = sum(len(c) for c in cells[:col - 1])
    under = sum(len(c) for c in cells[col - 1:col - 1 + width])
    return (f"    {gutter} | {''.join(cells)}\n"
            f"    {pad} | {' ' * before}{'^' * max(1, under)}")


@dataclass(frozen=True)
class Note:
    """A secondary location attached to an error (`first defined here`)."""

    span: Span
    message: str


class TnError(Exception):
    """Root of every error tndsl reports about a user's program."""

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, *, hint: str | None = None,
                 notes: Sequence[Note] = ()):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = tuple(notes)

    def render(self) -> str:
        return _render(self.kind, self.message, self.span, self.hint, self.notes)

    def __str__(self) -> str:
        return self.render()


def _render(kind: str, message: str, span: Span | None, hint: str | None,
            notes: Sequence[Note]) -> str:
    parts = [f"{span}: {kind}: {message}" if span else f"{kind}: {message}"]
    if span is not None:
        parts.append(excerpt(span))
    if hint:
        parts.append(f"  hint: {hint}")
    for note in notes:
        parts.append(f"{note.span}: note: {note.message}")
        parts.append(excerpt(note.span))
    return "\n".join(parts)


class TnSyntaxError(TnError):
    """The text does not follow the grammar."""


class UnknownNameError(TnError):
    """A tensor, dim, block, box or loop variable that is not defined."""


class LegError(TnError):
    """Legs that do not agree: counts, dims, free legs of sums, box legs."""


class RedefinitionError(TnError):
    """A name defined twice in one scope."""


class CycleError(TnError):
    """Definitions that depend on themselves."""


class BlockError(TnError):
    """A block used or defined wrongly: arguments, paths, misplaced statements."""


class SizeError(TnError):
    """A dimension size that is not a positive integer, or is unknown where needed."""


class ArgumentError(TnError, ValueError):
    """An argument of the Python API outside its domain (`context=2.5`, a budget of 0
    bytes): a TnError, and a ValueError as Python callers expect."""


class ResourceError(TnError):
    """A program or intermediate larger than the configured limits."""


class TnErrors(TnError):
    """Several independent errors found in one run, in source order."""

    def __init__(self, errors: Iterable[TnError]):
        self.errors = sorted(errors, key=_position)
        first = self.errors[0]
        super().__init__(first.message, first.span, hint=first.hint, notes=first.notes)

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


def _position(error: TnError) -> tuple[str, int]:
    return (error.span.source.name, error.span.start) if error.span else ("", -1)


@dataclass(frozen=True)
class TnWarning:
    """Something legal but probably unintended, such as an unused param."""

    message: str
    span: Span | None = None
    hint: str | None = None

    def render(self) -> str:
        return _render("warning", self.message, self.span, self.hint, ())


class ErrorSink:
    """Collects independent errors so a stage can report all of them at once."""

    def __init__(self) -> None:
        self.errors: list[TnError] = []

    def add(self, error: TnError) -> None:
        # An unrolled loop repeats a mistake once per iteration; report it once.
        key = (type(error), error.message, error.span)
        if all((type(e), e.message, e.span) != key for e in self.errors):
            self.errors.append(error)

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise TnErrors(self.errors)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidates, or None if nothing is close."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not matches:
        return None
    return "did you mean " + " or ".join(f"`{m}`" for m in matches) + "?"
