"""Repeated child modules as one `nn.ModuleList` iterated in `forward`.

A run of calls `G.0(x)`, `G.1(...)`, ... of the same generated class, each followed by
the same copies of its result into versions of one name (`resid@1 = blocks.0.out`),
where each call reads the previous iteration's value (and otherwise only values fixed
before the run), becomes

    for block, hook_resid in zip(self.blocks, self.hook_resid_versions):
        resid = hook_resid(block(resid))

so the generated source does not grow with the loop count. A run that does not fit is
unrolled, and `find_loops` says why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from tndsl.lang import ir

VERSION = re.compile(r"^(.*)@(\d+)$")


@dataclass(frozen=True)
class Call:
    """A call of a child module (its own generated class)."""

    path: str                        # relative to the calling class
    instance: ir.Instance
    bindings: tuple[ir.Equation, ...]  # argument equations, relative to the caller
    output: str                      # relative name of the child's result

    @property
    def name(self) -> str:
        return self.output

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(r.name for eq in self.bindings for r in ir.refs(eq.rhs))


@dataclass(frozen=True)
class Loop:
    group: str                        # the ModuleList's path ("blocks")
    calls: tuple[Call, ...]
    copies: tuple[tuple[ir.Equation, ...], ...]  # per iteration, the versions written
    carry: int                        # which argument is the carried value
    first: str                        # the value the first iteration reads
    fixed: tuple[str | None, ...]     # per argument: a value read by every iteration
    versions: tuple[tuple[str, int], ...]  # per copy: name stem and the first number

    @property
    def name(self) -> str:
        return self.last

    @property
    def last(self) -> str:
        return self.copies[-1][-1].name if self.copies[-1] else self.calls[-1].output

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.first,) + tuple(f for f in self.fixed if f)


def _copy_of(eq: ir.Equation) -> str | None:
    """The name `eq` copies unchanged (`y[p, m] = x[p, m]`), if that is all it does."""
    if len(eq.rhs.terms) != 1:
        return None
    term = eq.rhs.terms[0]
    if term.coefficient != 1 or len(term.factors) != 1 or not isinstance(term.factors[0], ir.Ref):
        return None
    ref = term.factors[0]
    return ref.name if tuple(ref.indices) == tuple(eq.indices) else None


def _group_index(path: str) -> tuple[str, int] | None:
    group, _, last = path.rpartition(".")
    return (group, int(last)) if group and last.isdigit() else None


def find_loops(items: tuple, class_of, keep: frozenset[str], members) -> tuple[tuple, dict]:
    """Items with runs of calls replaced by `Loop`s; and, for runs left unrolled, the
    reason by group. `class_of(call)` names a call's class; `members(group)` lists the
    paths under `group` that this class owns (the run must cover exactly them)."""
    result, reasons, k = [], {}, 0
    while k < len(items):
        item = items[k]
        found = _group_index(item.path) if isinstance(item, Call) else None
        if found is None or found[1] != 0:
            result.append(item)
            k += 1
            continue
        loop, end, reason = _match(items, k, found[0], class_of, keep, members)
        if loop is None:
            reasons[found[0]] = reason
            result.append(item)
            k += 1
        else:
            result.append(loop)
            k = end
    return tuple(result), reasons


def _arguments(call: Call) -> list[str] | None:
    names = []
    for eq in call.bindings:
        source = _copy_of(eq)
        if source is None:
            return None
        names.append(source)
    return names


def _match(items, start, group, class_of, keep, members):
    calls, copies, k = [], [], start
    cls = class_of(items[start])
    while k < len(items) and isinstance(items[k], Call) and \
            items[k].path == f"{group}.{len(calls)}" and class_of(items[k]) == cls:
        call = items[k]
        previous = (copies[-1][-1].name if copies[-1] else calls[-1].output) if calls else None
        arguments = _arguments(call)
        if arguments is None:
            return None, 0, f"`{call.path}` takes an argument that is computed, not a value"
        if calls and previous not in arguments:
            break
        k += 1
        chain, last = [], call.output
        while k < len(items) and isinstance(items[k], ir.Equation) and \
                _copy_of(items[k]) == last and (not copies or len(chain) < len(copies[0])):
            chain.append(items[k])
            last = items[k].name
            k += 1
        if copies and len(chain) != len(copies[0]):
            return None, 0, f"iteration {len(calls)} writes different values"
        calls.append(call)
        copies.append(tuple(chain))
    if len(calls) < 2:
        return None, 0, "it runs once"
    if sorted(members(group)) != sorted(c.path for c in calls):
        return None, 0, f"`{group}` holds more than the repeated modules"
    first_args = _arguments(calls[0])
    later = [_arguments(c) for c in calls[1:]]
    carry = None
    for position in range(len(first_args)):
        carried = all(args[position] == (copies[i][-1].name if copies[i] else calls[i].output)
                      for i, args in enumerate(later))
        if carried:
            if carry is not None:
                return None, 0, "it carries more than one value"
            carry = position
    if carry is None:
        return None, 0, "no value is carried from one iteration to the next"
    fixed = []
    for position, name in enumerate(first_args):
        if position == carry:
            fixed.append(None)
        elif all(args[position] == name for args in later):
            fixed.append(name)
        else:
            return None, 0, f"argument {position + 1} changes between iterations"
    versions = []
    for j in range(len(copies[0])):
        parts = [VERSION.match(copies[i][j].name) for i in range(len(calls))]
        if not all(parts) or len({p.group(1) for p in parts}) != 1 or \
                any(int(p.group(2)) != int(parts[0].group(2)) + i for i, p in enumerate(parts)):
            return None, 0, "its per-iteration values are not numbered versions of one name"
        versions.append((parts[0].group(1), int(parts[0].group(2))))
    loop = Loop(group, tuple(calls), tuple(copies), carry, first_args[carry], tuple(fixed),
                tuple(versions))
    inside = {c.output for c in calls} | {e.name for chain in copies for e in chain}
    inside.discard(loop.last)
    for item in items[k:]:
        reads = [r.name for r in ir.refs(item.rhs)] if isinstance(item, ir.Equation) \
            else list(getattr(item, "reads", ()))
        if inside & set(reads):
            return None, 0, f"`{sorted(inside & set(reads))[0]}` is read after the loop"
    if inside & keep:
        return None, 0, f"`{sorted(inside & keep)[0]}` is an output"
    return loop, k, None
