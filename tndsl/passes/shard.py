"""Tensor parallelism from leg names: which params are sharded along which leg, and
where partial sums must be all-reduced.

Sharding a dim (`Heads`, `Hidden`, `Vocab`) over a 1-D mesh of N ranks splits every
param that has a leg of that dim along that leg. The placement of every value then
follows from the equations, the way Megatron-LM lays out a transformer by hand:

- a product term whose sharded index is *kept* is column-parallel: each rank computes
  its slice of the result, no communication (`q[p, h, e] = x[p, m] * W_Q[h, m, e]`);
- a product term whose sharded index is *contracted* is row-parallel: each rank holds
  a partial sum, and one all-reduce makes it whole (`out[p, m] = z[p, h, e] * W_O[h, e, m]`);
- element-wise boxes and masks keep a slice; a box that normalises over the sharded
  leg (`softmax[h]`, `layernorm[m]` with `Model` sharded) would need the whole leg on
  one rank, and a term meeting two differently sharded indices would need a gather:
  both are errors naming the equation.

A grouping fixed tensor (`group[h: Heads, g: KVHeads] = grouping`, grouped-query
attention) ties its two dims: sharding either shards both in contiguous blocks, so each
rank holds its query heads and exactly the KV heads they read, and a product through
`group` meets h and g without a gather (an error at the grouping if the KV heads do not
split evenly over the mesh).

A partial sum is reduced where it becomes an equation's value, before a box, or before
it meets a sharded factor. A one-hot lookup (`W_E[tokens]` in compiled code) into a
table sharded along the looked-up leg gathers the table, and a sharded output is
gathered at the end. Communication is counted per forward of one input of the declared
shape (leading batch dims multiply it, except for gathered tables), as sympy
expressions in the dim names.
The pass is pure: Program + dims → ShardPlan; `tndsl.parallel.distributed` applies a plan with
torch.distributed's own APIs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import sympy

from tndsl.lang import dims as dimmod, ir, printer
from tndsl.lang.errors import ErrorSink, Span, TnError, UnknownNameError, did_you_mean
from tndsl.passes.plan import format_bytes


class ShardError(TnError):
    """A dim that cannot be sharded the way the program uses it."""


@dataclass(frozen=True)
class ShardedParam:
    """A param split along one leg; `uses` says, per equation that reads it, whether the
    sharded leg is kept there (column-parallel) or contracted (row-parallel)."""

    name: str
    axis: int                      # position of the sharded leg
    leg: ir.Leg
    uses: tuple[tuple[str, str], ...]   # (equation, "column" | "row" | "lookup")


@dataclass(frozen=True)
class Collective:
    """One collective per forward: an all-reduce of a partial sum, the all-gather of a
    sharded output, or the all-gather of a table a lookup indexes. `legs` are the legs of
    the communicated value; a table's size does not grow with the batch (`per_input`)."""

    kind: str                      # "all-reduce" | "all-gather"
    equation: str
    where: str                     # "" for the equation's value, else "before gelu" etc.
    legs: tuple[ir.Leg, ...]
    contracted: str                # the sharded dim summed over (all-reduce); "" for gathers
    per_input: bool = True         # False: once per forward, whatever the batch

    @property
    def entries(self) -> sympy.Expr:
        return sympy.Mul(*(dimmod.symbol(leg.dim) for leg in self.legs))


@dataclass(frozen=True)
class Alignment:
    """A dim sharded because a grouping fixed tensor ties it to a sharded dim: with
    `group[h: Heads, g: KVHeads]` and `Heads` sharded, each rank holds the contiguous
    block of KV heads its contiguous block of query heads reads, so `KVHeads` is split
    too, and a product through `group` pairs local heads with local KV heads only."""

    dim: str        # the dim sharded along with ...
    partner: str    # ... this one
    through: str    # the grouping tensor that ties them


@dataclass(frozen=True)
class ShardPlan:
    dims: tuple[str, ...]
    ranks: int
    params: tuple[ShardedParam, ...]
    replicated: tuple[str, ...]                 # params every rank holds whole
    placements: Mapping[str, ir.Leg | None]     # equation -> its sharded leg (None: whole)
    collectives: tuple[Collective, ...]
    outputs: tuple[str, ...]
    sizes: Mapping[str, int | None]
    legs: Mapping[str, tuple[ir.Leg, ...]]      # equation -> its legs
    bytes_per_entry: int = 4
    aligned: tuple[Alignment, ...] = ()         # dims sharded along with `dims`

    def param(self, name: str) -> ShardedParam | None:
        return next((p for p in self.params if p.name == name), None)

    def pins(self) -> dict[str, tuple[int, int | None]]:
        """Equation -> (its number of legs, the position of its sharded leg, or None:
        whole on every rank), for the values whose placement is pinned where they are
        computed: sharded values (kept slices), and partial sums the plan all-reduces
        where they become the equation's value (else DTensor would carry them on lazily
        through linear ops, possibly into a larger tensor such as the logits). What
        `tndsl.parallel.distributed` and the method of `tndsl compile --shard` both apply.

        A pin is a hook, so the generated code materialises attention's scores and
        pattern instead of calling SDPA: needed on CPU, where DTensor has no sharding
        strategy for `_scaled_dot_product_flash_attention_for_cpu` (tried: without the
        pins on sharded values every sharded forward fails there)."""
        reduced = {c.equation for c in self.collectives
                   if c.kind == "all-reduce" and not c.where}
        table: dict[str, tuple[int, int | None]] = {}
        for name, leg in self.placements.items():
            if leg is None and name not in reduced:
                continue
            legs = [l.name for l in self.legs[name]]
            table[name] = (len(legs), None if leg is None else legs.index(leg.name))
        return table

    @property
    def split(self) -> dict[str, int | None]:
        """The dims split over the mesh — asked for, then those tied to them by a
        grouping — with their sizes."""
        return {name: self.sizes.get(name)
                for name in list(self.dims) + [a.dim for a in self.aligned]}

    def payload(self, collective: Collective) -> sympy.Expr:
        """Bytes of the communicated value (the whole tensor, as every rank ends up with it)."""
        return collective.entries * self.bytes_per_entry

    def traffic(self, collective: Collective) -> sympy.Expr:
        """Bytes each rank sends with the ring algorithms NCCL and gloo use: an all-reduce
        sends 2(N-1)/N of the payload, an all-gather (N-1)/N."""
        n = sympy.Integer(self.ranks)
        factor = 2 * (n - 1) / n if collective.kind == "all-reduce" else (n - 1) / n
        return sympy.expand(factor * self.payload(collective))

    @property
    def total_payload(self) -> sympy.Expr:
        return sympy.expand(sympy.Add(*(self.payload(c) for c in self.collectives)))

    @property
    def total_traffic(self) -> sympy.Expr:
        return sympy.expand(sympy.Add(*(self.traffic(c) for c in self.collectives)))

    def value(self, expr: sympy.Expr) -> sympy.Expr:
        return dimmod.evaluate(expr, self.sizes)

    def render(self) -> str:
        lines = [f"shard {', '.join(self.dims)} over {self.ranks} ranks"]
        for a in self.aligned:
            lines.append(f"  and {a.dim} with {a.partner}, through the grouping `{a.through}`")
        lines.append("")
        lines.append(f"sharded params ({len(self.params)}; {len(self.replicated)} replicated):")
        width = max((len(p.name) for p in self.params), default=0)
        for p in self.params:
            roles = describe_uses(p.uses)
            lines.append(f"  {p.name:<{width}}  Shard({p.axis}) along {p.leg.name}: "
                         f"{p.leg.dim}  {roles}")
        lines.append("")
        lines.append(f"communication per forward ({len(self.collectives)} collectives, "
                     f"{self.bytes_per_entry} bytes an entry):")
        for c in self.collectives:
            head = c.equation + (f" ({c.where})" if c.where else "")
            why = f", sums over {c.contracted}" if c.contracted else ""
            lines.append(f"  {c.kind:<10} {head}{printer.legs_decl(c.legs)}{why}")
            lines.append(f"      payload {_show(self.payload(c))} = "
                         f"{_bytes(self.value(self.payload(c)))}"
                         f"; each rank sends {_show(self.traffic(c))} = "
                         f"{_bytes(self.value(self.traffic(c)))}")
        lines.append("")
        lines.append(f"total payload  {_show(self.total_payload)} = "
                     f"{_bytes(self.value(self.total_payload))}")
        lines.append(f"sent per rank  {_show(self.total_traffic)} = "
                     f"{_bytes(self.value(self.total_traffic))}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({
            "dims": list(self.dims), "ranks": self.ranks,
            "aligned": [{"dim": a.dim, "with": a.partner, "through": a.through}
                        for a in self.aligned],
            "bytes_per_entry": self.bytes_per_entry,
            "params": [{"name": p.name, "axis": p.axis, "leg": p.leg.name, "dim": p.leg.dim,
                        "uses": [{"equation": e, "role": r} for e, r in p.uses]}
                       for p in self.params],
            "replicated": list(self.replicated),
            "collectives": [{"kind": c.kind, "equation": c.equation, "where": c.where,
                             "legs": [[l.name, l.dim] for l in c.legs],
                             "contracted": c.contracted, "per_input": c.per_input,
                             "payload": str(self.payload(c)),
                             "payload_value": _jsonable(self.value(self.payload(c))),
                             "traffic": str(self.traffic(c)),
                             "traffic_value": _jsonable(self.value(self.traffic(c)))}
                            for c in self.collectives],
            "total_payload": str(self.total_payload),
            "total_payload_value": _jsonable(self.value(self.total_payload)),
        }, indent=2)


def shard_plan(program, dims: Sequence[str] | str, ranks: int = 2, *,
               outputs: Sequence[str] | None = None, bytes_per_entry: int = 4) -> ShardPlan:
    """The tensor-parallel plan for sharding `dims` over `ranks` ranks, for the equations
    `outputs` need (default: the final equation, as `Program.compile` does). Raises
    `ShardError` (all problems at once) where a dim cannot be sharded."""
    if isinstance(dims, str):
        dims = [d.strip() for d in dims.split(",") if d.strip()]
    dims = tuple(dict.fromkeys(dims))
    network = program.network
    declared = {d.name: d for d in network.dims}
    errors = ErrorSink()
    if not dims:
        raise ShardError("no dim to shard", hint="valid: " + ", ".join(declared))
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise ShardError(f"the mesh size must be a positive integer, not {ranks!r}")
    for name in dims:
        if name not in declared:
            hint = did_you_mean(name, declared)
            errors.add(UnknownNameError(f"cannot shard unknown dim `{name}`",
                                        hint=(hint + " " if hint else "") +
                                        "valid: " + ", ".join(declared)))
            continue
        size = program.sizes.get(name)
        if size is not None and size % ranks:
            errors.add(ShardError(f"dim `{name}` = {size} is not divisible by the mesh "
                                  f"size {ranks}", declared[name].span,
                                  hint=f"shard over a divisor of {size}, or another dim"))
    errors.raise_if_any()

    aligned = _aligned(program, dims, ranks, errors)
    errors.raise_if_any()
    sharded = set(dims) | {a.dim for a in aligned}
    groupings = {t.name for t in program.network.tensors if t.kind == "fixed"
                 and t.fixed.function == "grouping" and {l.dim for l in t.legs} <= sharded}
    params: dict[str, tuple[int, ir.Leg]] = {}
    replicated: list[str] = []
    for tensor in program.params:
        axes = [k for k, leg in enumerate(tensor.legs) if leg.dim in sharded]
        if len(axes) > 1:
            errors.add(ShardError(
                f"param `{tensor.name}` has {len(axes)} legs on sharded dims ("
                + ", ".join(f"{tensor.legs[k].name}: {tensor.legs[k].dim}" for k in axes)
                + "); a 1-D mesh splits one leg", tensor.span,
                hint="shard fewer dims"))
        elif axes:
            params[tensor.name] = (axes[0], tensor.legs[axes[0]])
        else:
            replicated.append(tensor.name)
    errors.raise_if_any()

    wanted = list(outputs) if outputs is not None else (
        [program.final.name] if program.final is not None else None)
    names = [eq.name for eq in network.equations]
    for name in wanted or ():
        if name not in names:
            errors.add(UnknownNameError(f"no equation `{name}` to compute",
                                        hint=did_you_mean(name, names)))
    errors.raise_if_any()
    order = ir.dependency_order(network, wanted)
    walker = _Walker(params, {t.name: t for t in network.tensors}, errors, groupings)
    for eq in order:
        walker.equation(eq)
    errors.raise_if_any()
    out_names = tuple(wanted) if wanted is not None else tuple(eq.name for eq in order)
    collectives = list(walker.collectives)
    for name in out_names:
        leg = walker.placements.get(name)
        if leg is not None:  # a sharded output is gathered so every rank returns it whole
            eq = next(e for e in order if e.name == name)
            collectives.append(Collective("all-gather", name, "output", eq.legs, ""))
    uses = walker.uses
    return ShardPlan(
        dims, ranks,
        tuple(ShardedParam(name, axis, leg, tuple(uses.get(name, ())))
              for name, (axis, leg) in params.items()),
        tuple(replicated), dict(walker.placements), tuple(collectives), out_names,
        dict(program.sizes), dict(walker.legs_of), bytes_per_entry, tuple(aligned))


def _aligned(program, dims: Sequence[str], ranks: int, errors: ErrorSink) -> list[Alignment]:
    """The dims a grouping fixed tensor `G[h: A, g: B]` (A = B · queries per group, query
    head h reading group h // (A / B)) ties to a sharded dim: sharding either shards both,
    in contiguous blocks, so that rank r's query heads read exactly rank r's groups. That
    needs B divisible by the mesh size (then A is too); else the grouping cannot be split
    evenly, an error at its declaration."""
    sharded = list(dims)
    aligned: list[Alignment] = []
    groupings = [t for t in program.network.tensors
                 if t.kind == "fixed" and t.fixed.function == "grouping"]
    changed = True
    while changed:  # a chain of groupings ties dims transitively
        changed = False
        for tensor in groupings:
            heads, groups = (leg.dim for leg in tensor.legs)
            if (heads in sharded) == (groups in sharded):
                continue
            partner, dim = (heads, groups) if heads in sharded else (groups, heads)
            sizes = program.sizes
            if sizes.get(groups) is not None and sizes[groups] % ranks:
                errors.add(ShardError(
                    f"the grouping `{tensor.name}` cannot be split evenly over {ranks} ranks: "
                    f"sharding {partner} shards {dim} with it (rank r's block of {heads} "
                    f"reads rank r's block of {groups}), and {groups} = {sizes[groups]} is "
                    f"not divisible by {ranks}", tensor.span,
                    hint=f"shard over a divisor of {sizes[groups]}, or do not shard {partner}"))
                return aligned
            sharded.append(dim)
            aligned.append(Alignment(dim, partner, tensor.name))
            changed = True
    return aligned


# A placement while walking an expression: None (whole on every rank), ("shard", index)
# or PARTIAL (each rank holds a summand).
PARTIAL = ("partial", "")


class _Walker:
    def __init__(self, params: Mapping[str, tuple[int, ir.Leg]],
                 tensors: Mapping[str, ir.Tensor], errors: ErrorSink,
                 groupings: Iterable[str] = ()):
        self.params = params
        self.tensors = tensors
        self.errors = errors
        self.groupings = frozenset(groupings)  # grouping tensors whose two dims are sharded
        self.placements: dict[str, ir.Leg | None] = {}
        self.collectives: list[Collective] = []
        self.uses: dict[str, list[tuple[str, str]]] = {}
        self.legs_of: dict[str, tuple[ir.Leg, ...]] = {}

    def equation(self, eq: ir.Equation) -> None:
        self.eq = eq
        self.contracted = ""
        self.legs_of[eq.name] = eq.legs
        self.dims = {leg.name: leg.dim for leg in eq.index_dims}
        # A mixture of experts' routing (a `topk` box): its boxes over the sharded
        # `Experts` leg read the router's scores gathered whole (tokens × experts, small)
        self.routing = {leg for box in _boxes(eq.rhs) if box.function == "topk"
                        for leg in box.legs}
        placement = self._sum(eq.rhs, list(eq.indices))
        if placement == PARTIAL:
            self._reduce("", eq.legs)
            placement = None
        if placement is None:
            self.placements[eq.name] = None
        else:
            self.placements[eq.name] = eq.legs[list(eq.indices).index(placement[1])]

    def _reduce(self, where: str, legs: Iterable[ir.Leg]) -> None:
        self.collectives.append(Collective("all-reduce", self.eq.name, where, tuple(legs),
                                           self.contracted))

    def _legs(self, indices: Iterable[str]) -> tuple[ir.Leg, ...]:
        return tuple(ir.Leg(i, self.dims[i]) for i in indices)

    def _error(self, message: str, span: Span | None, hint: str) -> None:
        self.errors.add(ShardError(message, span or self.eq.span, hint=hint))

    def _sum(self, expr: ir.Sum, layout: list[str]):
        placements = [self._term(term, layout) for term in expr.terms]
        shards = {p for p in placements if p is not None and p != PARTIAL}
        if len(shards) > 1:
            self._error(f"`{self.eq.name}` adds terms sharded along different legs ("
                        + ", ".join(f"{i}: {self.dims[i]}" for _, i in sorted(shards))
                        + "); adding them would need a gather", expr.span or self.eq.span,
                        "a 1-D mesh splits one index of a sum; shard another dim")
            return None
        if PARTIAL in placements and shards:
            # a sharded term cannot be added to a partial sum: reduce the partial terms
            self._reduce("before adding sharded terms", self._legs(layout))
            return next(iter(shards))
        if PARTIAL in placements:
            return PARTIAL  # whole terms join the sum on one rank (DTensor does the same)
        return next(iter(shards)) if shards else None

    def _term(self, term: ir.Term, layout: list[str]):
        placements, partial_legs = [], []
        gathered = self._lookups(term, layout)
        for k, factor in enumerate(term.factors):
            if isinstance(factor, ir.Ref):
                placements.append(None if k in gathered else self._ref(factor))
                continue
            legs = list(ir.free_legs(factor, ir.outside_of(term, k, set(layout))))
            placements.append(self._composite(factor, legs))
            if placements[-1] == PARTIAL:
                partial_legs.append(legs)
        shards = {p[1] for p in placements if p is not None and p != PARTIAL}
        split = self._split_indices(term, shards)
        if len(split) > 1:
            self._error(f"`{self.eq.name}` multiplies factors sharded along different legs ("
                        + ", ".join(f"{i}: {self.dims[i]}" for i in sorted(shards))
                        + "); contracting them would need a gather", term.span,
                        "a 1-D mesh splits one index of a product; shard another dim")
            return None
        partial = len(partial_legs)
        if partial and (shards or partial > 1):  # a partial sum is linear in one factor only
            for legs in partial_legs:
                self._reduce("before a product", self._legs(legs))
            partial = 0
        if shards:
            indices = next(iter(split))
            kept = [i for i in layout if i in indices]
            if len(kept) > 1:
                self._error(f"`{self.eq.name}` keeps two legs split together through a "
                            "grouping (" + ", ".join(f"{i}: {self.dims[i]}" for i in kept)
                            + "); its value would be sharded along both", term.span,
                            "a 1-D mesh splits one leg of a value; sum over one of them")
                return None
            role = "column" if kept else "row"
            for factor in term.factors:
                if isinstance(factor, ir.Ref) and factor.name in self.params:
                    axis, _ = self.params[factor.name]
                    if factor.indices[axis] in indices:
                        use = (self.eq.name, role)
                        if use not in self.uses.setdefault(factor.name, []):
                            self.uses[factor.name].append(use)
            if kept:
                return ("shard", kept[0])
            self.contracted = self.dims[min(shards)]
            return PARTIAL
        return PARTIAL if partial == 1 else None

    def _split_indices(self, term: ir.Term, shards: set[str]) -> set[frozenset[str]]:
        """The sharded indices of a product, as sets split together: a grouping factor
        `group[h, g]` whose dims are both sharded ties h to g (rank r's query heads read
        rank r's KV heads only), so factors sharded along h and g meet without a gather,
        and a term sharded along g alone is sharded along h where h is kept."""
        classes = {i: {i} for i in shards}
        for factor in term.factors:
            if isinstance(factor, ir.Ref) and factor.name in self.groupings:
                joined = set(factor.indices)
                for i in factor.indices:
                    joined |= classes.get(i, set())
                for i in joined:
                    classes[i] = joined
        return {frozenset(classes[i]) for i in shards}

    def _lookups(self, term: ir.Term, layout: list[str]) -> set[int]:
        """Positions of params that compiled code indexes with a one-hot input's ids
        (`W_E[tokens]`, as `passes.cost` counts them) along their sharded leg. DTensor
        gathers such a table whole before indexing it: the plan says so, once per
        forward, and the lookup's result is then whole on every rank."""
        gathered: set[int] = set()
        for factor in term.factors:
            tensor = self.tensors.get(factor.name) if isinstance(factor, ir.Ref) else None
            if tensor is None or tensor.onehot is None:
                continue
            leg = factor.indices[[l.name for l in tensor.legs].index(tensor.onehot)]
            partners = [k for k, other in enumerate(term.factors) if other is not factor
                        and isinstance(other, ir.Ref) and leg in other.indices] + [
                k for k, other in enumerate(term.factors)
                if not isinstance(other, ir.Ref) and leg in ir.indices(other)]
            if leg in layout or len(partners) != 1:
                continue
            table = term.factors[partners[0]]
            if not isinstance(table, ir.Ref) or table.name not in self.params:
                continue
            axis, _ = self.params[table.name]
            if table.indices[axis] != leg:
                continue
            gathered.add(partners[0])
            use = (self.eq.name, "lookup")
            if use not in self.uses.setdefault(table.name, []):
                self.uses[table.name].append(use)
            self.collectives.append(Collective(
                "all-gather", self.eq.name, f"table {table.name} for a lookup",
                self.tensors[table.name].legs, "", per_input=False))
        return gathered

    def _ref(self, ref: ir.Ref):
        if ref.name in self.params:
            return ("shard", ref.indices[self.params[ref.name][0]])
        leg = self.placements.get(ref.name)
        if leg is None:
            return None  # inputs, `ones`, whole values
        legs = [l.name for l in self.legs_of[ref.name]]
        return ("shard", ref.indices[legs.index(leg.name)])

    def _composite(self, factor, legs: list[str]):
        if isinstance(factor, ir.Sum):
            return self._sum(factor, legs)
        inner = self._sum(factor.argument, legs)
        if isinstance(factor, ir.Mask):
            return inner  # zeroing entries is linear and keeps any slice
        name = factor.function + (f"[{', '.join(factor.legs)}]" if factor.legs else "")
        if inner == PARTIAL:
            self._reduce(f"before {name}", self._legs(legs))
            return None
        if inner is not None and inner[1] in factor.legs and inner[1] in self.routing:
            self.collectives.append(Collective("all-gather", self.eq.name, f"before {name}",
                                               self._legs(legs), ""))
            return None   # the routing gates are whole on every rank
        if inner is not None and inner[1] in factor.legs:
            self._error(f"`{self.eq.name}` applies {name} over the sharded leg "
                        f"{inner[1]}: {self.dims[inner[1]]}; it would need a gather inside "
                        "the box", factor.span, f"do not shard {self.dims[inner[1]]}")
            return None
        return inner


def _boxes(node):
    """Every box inside an expression."""
    if isinstance(node, ir.Sum):
        for term in node.terms:
            for factor in term.factors:
                yield from _boxes(factor)
    elif isinstance(node, (ir.Box, ir.Mask)):
        if isinstance(node, ir.Box):
            yield node
        yield from _boxes(node.argument)


def describe_uses(uses) -> str:
    """`column-parallel in a, b; row-parallel in c`: a sharded param's roles."""
    if not uses:
        return "(unused by the outputs)"
    groups: dict[str, list[str]] = {}
    for equation, role in uses:
        groups.setdefault(role, []).append(equation)
    described = {"column": "column-parallel", "row": "row-parallel",
                 "lookup": "gathered for a lookup"}
    return "; ".join(f"{described[role]} in {', '.join(eqs)}" for role, eqs in groups.items())


def _show(expr: sympy.Expr) -> str:
    return sympy.sstr(expr, order="grevlex")


def _bytes(value: sympy.Expr) -> str:
    """A byte count in binary units (`passes.plan.format_bytes`), or `?` while symbolic;
    a ring's per-rank share, fractional, rounds up."""
    if not value.is_Number:
        return "?"
    return format_bytes(int(sympy.ceiling(value)))


def _jsonable(value: sympy.Expr):
    return int(value) if value.is_Integer else str(value)
