"""Circuits by path: an equation expanded into a sum over paths through the residual stream.

Elhage et al. read a transformer as a sum of paths: the logits are the direct path (the
embedding straight to the unembedding) plus one term per attention layer plus the
"virtual heads" that pass through two layers, and a layer-1 attention score splits into
no-, K-, Q- and K&Q-composition by which path each side reads. `expand_paths` derives
that expansion from the checked IR, so nobody writes the terms by hand:

- a definition is inlined only where it depends on the output of a chosen block
  instance (`through`; default: every instance whose output is added to a residual
  sum), so the embedding — which depends on none — stays whole;
- an equation with a box (softmax, layer norm, an element-wise function) is a given
  tensor, never inlined: attention patterns are fixed and paths run through the OV
  circuits (the QK/OV split of Elhage et al.);
- where a block sums over heads (a dim that a softmax in the block carries besides the
  legs it normalises over), that head leg is kept open, so one term holds the path of
  every head (and of every pair of heads, for virtual heads);
- each factor of the top-level equation that reads the residual stream is a "read";
  a term has one path per read (the query side and the key side of a score).

`PathExpansion.source` is the original `.tn` text followed by one named equation per
path and a `check` that the equation equals their sum, which `tndsl verify` proves.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Sequence

import sympy

from tndsl.lang import ir, printer
from tndsl.lang.errors import TnError, UnknownNameError, did_you_mean
from tndsl.lang.text import one_line

DIRECT = "direct"
FREEZABLE = ("norms",)
BIAS = "bias"
MAX_MONOMIALS = 4096  # paths double per layer: past this, ask for fewer blocks


@dataclass(frozen=True)
class HeadLeg:
    """An open leg of a path term: the heads of `instance` the path passes through."""

    index: str
    dim: str
    instance: str


@dataclass(frozen=True)
class Read:
    """One read of the residual stream by the expanded equation: its side (the output
    legs the reading factor carries, `p` for a query, `s` for a key) and the block
    instances the read passes through, earliest first (empty: the direct path)."""

    side: str
    path: tuple[str, ...]

    @property
    def label(self) -> str:
        return "->".join(self.path) if self.path else DIRECT


@dataclass(frozen=True)
class PathTerm:
    """One named equation of the expansion: `name[legs + head legs]`."""

    name: str
    reads: tuple[Read, ...]
    legs: tuple[str, ...]            # the expanded equation's legs, then the head legs
    heads: tuple[HeadLeg, ...]
    equation: str                    # its `.tn` text
    # For each product of `equation`, for each factor: (the side of the read it lies on,
    # the block instance it belongs to), None where it has none. Path patching reads it.
    owners: tuple[tuple[tuple[str | None, str | None], ...], ...] = ()
    bias: bool = False               # reads no stream while other terms do (b_U)
    variant: int = 1                 # >1: a further term of the same reads, other heads

    @property
    def label(self) -> str:
        """`direct`, `blocks.0.attn->blocks.1.attn`; with several reads
        `p: direct, s: blocks.0.attn`; `bias` for the terms that read no stream where
        others do (an unembedding bias, a frozen norm's bias through W_U)."""
        if self.bias:
            text = BIAS
        elif len(self.reads) <= 1:
            text = self.reads[0].label if self.reads else DIRECT
        else:
            text = ", ".join(f"{r.side}: {r.label}" for r in self.reads)
        return text + (f" #{self.variant}" if self.variant > 1 else "")

    def passes(self, side: str, instance: str) -> bool:
        """Whether the read on `side` passes through `instance`."""
        return any(r.side == side and instance in r.path for r in self.reads)


@dataclass(frozen=True)
class PathExpansion:
    name: str                        # the expanded equation
    indices: tuple[str, ...]         # its legs
    through: tuple[str, ...]         # the block instances paths may pass
    terms: tuple[PathTerm, ...]
    check: str                       # the label of the generated check
    section: str                     # the generated `.tn` text
    original: str                    # the file it extends
    dims: tuple[tuple[str, int], ...] = ()   # sizes given to the program, re-applied
    frozen: tuple = ()               # tndsl.interp.freeze.FrozenNorm, with --freeze norms
    span: object = field(default=None, compare=False)   # the expanded equation, in its file

    @property
    def source(self) -> str:
        """The original `.tn` text with the paths and their check appended."""
        return self.original.rstrip("\n") + "\n\n" + self.section

    def term(self, label: str) -> PathTerm:
        for term in self.terms:
            if term.label == label or term.name == label:
                return term
        raise UnknownNameError(f"no path `{label}` in the expansion of `{self.name}`",
                               hint=did_you_mean(label, [t.label for t in self.terms])
                               or "paths: " + ", ".join(t.label for t in self.terms))

    def program(self):
        """The checked program of `source`, at the sizes of the program expanded."""
        from tndsl.program import parse
        if "_program" not in self.__dict__:  # parsed once: patching asks several times
            self.__dict__["_program"] = parse(self.source, f"<paths of {self.name}>",
                                              dict(self.dims))
        return self.__dict__["_program"]

    def figure(self, **options):
        """`NAME = term + term + ...`, each term drawn as its network and labelled with its
        path (direct, L0H·, virtual L0H·→L1H·). `options` as Program.render's (width=...)."""
        from tndsl.program import parse
        total = f"{self.check}_figure"
        text = self.source + f"\n{total}[{', '.join(self.indices)}] = {self._sum_text()}\n"
        try:
            return parse(text, f"<paths of {self.name}>", dict(self.dims)).render(
                total, depth=1, lhs=self.name,
                term_labels=[figure_label(t) for t in self.terms], **options)
        except TnError as e:   # too wide, bad legs: said at the equation the user expanded
            if self.span is None or e.span is None:
                raise
            message = e.message.replace(f"the figure of `{total}`",
                                        f"the figure of the paths of `{self.name}`")
            hint = ("give a wider --width or a smaller --font-size, or draw fewer paths "
                    "(--through)") if "does not fit" in message else e.hint
            raise type(e)(message, self.span, hint=hint) from None

    def _sum_text(self) -> str:
        parts = []
        for term in self.terms:
            ones = "".join(f" * ones[{h.index}]" for h in term.heads)
            parts.append(f"{term.name}[{', '.join(term.legs)}]{ones}")
        return " + ".join(parts)


def figure_label(term: PathTerm) -> str:
    """A path as a figure labels it: `direct`, `L0H·` (heads of layer 0's attention,
    summed), `L0 MLP`, `virtual L0H·→L1H·`; with several reads, `p: direct, s: L0H·`."""
    def short(read: Read) -> str:
        steps = []
        for instance in read.path:
            match = re.fullmatch(r"(?:.*\.)?(\d+)\.(\w+)", instance)
            if match and "attn" in match.group(2):
                steps.append(f"L{match.group(1)}H·")
            elif match:
                steps.append(f"L{match.group(1)} {match.group(2).upper()}")
            else:
                steps.append(instance)
        text = "→".join(steps) or DIRECT
        return f"virtual {text}" if len(steps) > 1 else text
    if len(term.reads) <= 1:
        return short(term.reads[0]) if term.reads else DIRECT
    return ", ".join(f"{r.side}: {short(r)}" for r in term.reads)


# ---- the expansion -------------------------------------------------------------------

@dataclass(frozen=True)
class _Mono:
    """A product of leaf tensors (internal index names are unique across the expansion)."""

    coefficient: sympy.Expr
    factors: tuple[tuple[str, tuple[str, ...]], ...]
    heads: tuple[HeadLeg, ...] = ()
    owners: tuple = ()               # per factor: the instance it comes from ("" none),
                                     # then (side, instance) once `top` knows the sides

    def __post_init__(self):
        if len(self.owners) != len(self.factors):
            object.__setattr__(self, "owners", ("",) * len(self.factors))

    def times(self, other: "_Mono") -> "_Mono":
        return _Mono(self.coefficient * other.coefficient, self.factors + other.factors,
                     self.heads + other.heads, self.owners + other.owners)

    def owned(self, instance: str) -> "_Mono":
        """The factors no inner instance claimed, claimed by `instance`."""
        return _Mono(self.coefficient, self.factors, self.heads,
                     tuple(o or instance for o in self.owners))


_ONE = _Mono(sympy.Integer(1), ())


def default_through(network: ir.Network) -> tuple[str, ...]:
    """Instances whose output is added to a residual sum: a lone term of a sum of several."""
    outputs = {inst.output: inst.path for inst in network.instances}
    found = set()
    for eq in network.equations:
        if len(eq.rhs.terms) < 2:
            continue
        for term in eq.rhs.terms:
            if len(term.factors) == 1 and isinstance(term.factors[0], ir.Ref) \
                    and term.factors[0].name in outputs:
                found.add(outputs[term.factors[0].name])
    return tuple(inst.path for inst in network.instances if inst.path in found)


def head_dims(network: ir.Network, instance: str) -> set[str]:
    """The dims instance `instance` sums over heads by: those a softmax in it carries
    besides the legs it normalises over (`Heads`)."""
    dims: set[str] = set()
    for eq in network.equations:
        if eq.instance == instance or eq.instance.startswith(instance + "."):
            dims |= _softmax_batch_dims(eq)
    return dims


def opaque(eq: ir.Equation) -> bool:
    """Has a box or a mask: a given tensor for path expansion."""
    def walk(node) -> bool:
        if isinstance(node, (ir.Box, ir.Mask)):
            return True
        if isinstance(node, ir.Sum):
            return any(walk(t) for t in node.terms)
        if isinstance(node, ir.Term):
            return any(walk(f) for f in node.factors)
        return False
    return walk(eq.rhs)


def _softmax_batch_dims(eq: ir.Equation) -> set[str]:
    """Dims of a softmax equation's legs other than those it normalises over."""
    boxes = []

    def walk(node) -> None:
        if isinstance(node, ir.Box):
            if node.function == "softmax":
                boxes.append(node)
            walk(node.argument)
        elif isinstance(node, ir.Mask):
            walk(node.argument)
        elif isinstance(node, ir.Sum):
            for t in node.terms:
                walk(t)
        elif isinstance(node, ir.Term):
            for f in node.factors:
                walk(f)
    walk(eq.rhs)
    dims = {leg.name: leg.dim for leg in eq.index_dims or ()}
    found = set()
    for box in boxes:
        normalised = {dims[i] for i in box.legs if i in dims}
        found |= {leg.dim for leg in eq.legs or ()} - normalised
    return found


class _Expander:
    def __init__(self, program, through: tuple[str, ...]):
        network = program.network
        self.network = network
        self.equations = {eq.name: eq for eq in network.equations}
        self.tensors = {t.name: t for t in network.tensors}
        self.outputs = {inst.output: inst.path for inst in network.instances
                        if inst.path in through}
        self.head_dims: dict[str, set[str]] = {}
        for path in through:
            self.head_dims[path] = head_dims(network, path)
        self.inputs = {f"{inst.path}.{b.input}" for inst in network.instances
                       if inst.path in through for b in inst.bindings}
        self.dims: dict[str, str] = {}      # every index name in use → its dim
        self.counter = itertools.count()
        # A loop rebinds names (`resid`, `resid@1`, ...): text appended to the file sees
        # only the last version, by the plain name; earlier versions are inlined.
        latest: dict[str, tuple[int, str]] = {}
        for eq in network.equations:
            base, _, version = eq.name.partition("@")
            number = int(version) if version else 0
            if number >= latest.get(base, (-1, ""))[0]:
                latest[base] = (number, eq.name)
        self.spelling = {full: base for base, (_, full) in latest.items()}
        self.hidden = {eq.name for eq in network.equations} - set(self.spelling)
        self._depends: dict[str, bool] = {}

    def depends(self, name: str) -> bool:
        """Whether `name` is (or is a linear function of) a chosen instance's output."""
        if name in self._depends:
            return self._depends[name]
        result = False
        if name in self.outputs:
            result = True
        elif name in self.equations and not opaque(self.equations[name]):
            self._depends[name] = False  # the network is acyclic; guards recursion anyway
            result = any(self.depends(r.name) for r in ir.refs(self.equations[name].rhs))
        self._depends[name] = result
        return result

    def inside(self, name: str) -> bool:
        """An equation of a chosen instance: inlined so its path shows its weights."""
        eq = self.equations.get(name)
        return eq is not None and any(eq.instance == p or eq.instance.startswith(p + ".")
                                      for p in self.head_dims)

    def expandable(self, name: str) -> bool:
        if name in self.outputs or name in self.hidden:
            return True
        eq = self.equations.get(name)
        return eq is not None and not opaque(eq) and (self.depends(name) or self.inside(name))

    def read_point(self, name: str) -> bool:
        """Where the residual stream is read: a chosen instance's input, or anything that
        depends on a chosen instance's output."""
        return name in self.inputs or self.depends(name)

    def fresh(self, index: str, dim: str) -> str:
        name = f"{index}#{next(self.counter)}"
        self.dims[name] = dim
        return name

    def ref(self, name: str, indices: tuple[str, ...]) -> list[tuple[_Mono, list]]:
        """An expandable reference inlined: (monomial, reads), where reads lists the path
        of each read of the stream inside it (exactly one at a read point)."""
        eq = self.equations[name]
        instance = self.outputs.get(name)
        if opaque(eq) and name not in self.outputs:
            raise TnError(f"`{name}` is rebound later in its loop and has a box, so text after "
                          "the loop can neither name nor inline it", eq.span)
        if opaque(eq):  # a chosen instance returning a box: the path starts there
            return [(_Mono(sympy.Integer(1), ((name, indices),)), [(instance,)])]
        mapping = dict(zip(eq.indices, indices))
        for leg in eq.index_dims:
            if leg.name not in mapping:
                mapping[leg.name] = self.fresh(leg.name, leg.dim)
        collapse = instance is not None or self.read_point(name)
        result = []
        for mono, reads in self.sum(eq.rhs, mapping):
            if collapse:
                if len(reads) > 1:
                    raise TnError(f"`{name}` reads the residual stream {len(reads)} times in "
                                  "one product; paths through a block that is multilinear "
                                  "in its input are not supported", eq.span)
                path = reads[0] if reads else ()
                if instance is not None:
                    mono = self._open_heads(mono, set(indices), instance).owned(instance)
                    path = path + (instance,)
                reads = [path]
            result.append((mono, reads))
        return result

    def _open_heads(self, mono: _Mono, outer: set[str], instance: str) -> _Mono:
        opened = {h.index for h in mono.heads}
        new = []
        for _, indices in mono.factors:
            for index in indices:
                if index in outer or index in opened or index in {h.index for h in new}:
                    continue
                if self.dims[index] in self.head_dims[instance]:
                    new.append(HeadLeg(index, self.dims[index], instance))
        return _Mono(mono.coefficient, mono.factors, mono.heads + tuple(new), mono.owners)

    def sum(self, node: ir.Sum, mapping: dict[str, str]) -> list[tuple[_Mono, list]]:
        out = []
        for term in node.terms:
            out.extend(self.term(term, mapping))
        return out

    def term(self, term: ir.Term, mapping: dict[str, str]) -> list[tuple[_Mono, list]]:
        options = [[(_Mono(sympy.sympify(term.coefficient), ()), [])]]
        for factor in term.factors:
            options.append(self.factor(factor, mapping))
        self._bound(options, term)
        result = []
        for choice in itertools.product(*options):
            mono, reads = _ONE, []
            for m, r in choice:
                mono = mono.times(m)
                reads = reads + r
            result.append((mono, reads))
        return result

    def _bound(self, options: list[list], term: ir.Term) -> None:
        count = 1
        for option in options:
            count *= len(option)
        if count > MAX_MONOMIALS:
            raise TnError(f"the expansion has more than {MAX_MONOMIALS:,} paths", term.span,
                          hint="choose fewer blocks with --through")

    def factor(self, factor, mapping: dict[str, str]) -> list[tuple[_Mono, list]]:
        if isinstance(factor, ir.Sum):
            return self.sum(factor, mapping)
        if not isinstance(factor, ir.Ref):  # boxes live only in opaque equations
            raise TnError("internal: a box in an expanded equation")
        indices = tuple(mapping[i] for i in factor.indices)
        if self.expandable(factor.name):
            return self.ref(factor.name, indices)
        return [(_Mono(sympy.Integer(1), ((factor.name, indices),)), [])]

    def top(self, eq: ir.Equation) -> list[tuple[_Mono, tuple[Read, ...]]]:
        """The expanded equation's monomials, each with its reads labelled by side: the
        output legs the reading factor carries (`p`, `s`), or `r1, r2...` where those do
        not tell the reads apart."""
        mapping = {leg.name: leg.name for leg in eq.index_dims}
        for leg in eq.index_dims:
            self.dims[leg.name] = leg.dim
        result = []
        for term in eq.rhs.terms:
            options = [[(_Mono(sympy.sympify(term.coefficient), ()), [])]]
            labels = [""]
            for factor in term.factors:
                options.append(self.factor(factor, mapping))
                self._bound(options, term)
                labels.append("".join(i for i in factor.indices if i in eq.indices)
                              if isinstance(factor, ir.Ref) else "")
            for choice in itertools.product(*options):
                mono, reads, sides, spans = _ONE, [], [], []
                for (m, r), label in zip(choice, labels):
                    spans.append((len(mono.factors), len(m.factors), len(reads), len(r)))
                    mono = mono.times(m)
                    reads += r
                    sides += [label] * len(r)
                if len(set(sides)) != len(sides) or not all(sides):
                    sides = [f"r{k + 1}" for k in range(len(reads))]
                owners = list(mono.owners)
                for start, count, first, n in spans:  # a factor's read: its side, instance
                    for k in range(start, start + count):
                        owners[k] = (sides[first] if n == 1 else None, owners[k] or None)
                mono = _Mono(mono.coefficient, mono.factors, mono.heads, tuple(owners))
                result.append((mono, tuple(Read(side, tuple(path))
                                           for side, path in zip(sides, reads))))
        return result


def _identifier(read_path: tuple[str, ...]) -> str:
    return "__".join(p.replace(".", "_") for p in read_path) if read_path else DIRECT


def _constant_along(mono: _Mono, eq: ir.Equation) -> bool:
    """Whether some output leg of the product is carried by `ones` alone (a bias that an
    instance adds, `b_O[m] * ones[p]`): written as its own term it would have no dim."""
    carried = {i for name, indices in mono.factors if name != ir.ONES for i in indices}
    return any(i not in carried for i in eq.indices)


def _simplify(mono: _Mono, free: Sequence[str]) -> _Mono:
    """Drop `ones[i]` where it multiplies by 1 at every i: where another factor carries
    i and i stays a leg of the term without it (free, or carried twice more). A bias
    read through an attention pattern, `pattern[p, s] * b[e] * ones[s]`, keeps its
    `ones[s]`: it is the sum over s. Each factor keeps its owner (`_Mono.owners`)."""
    open_legs = set(free) | {h.index for h in mono.heads}
    keep = [True] * len(mono.factors)
    for k, (name, indices) in enumerate(mono.factors):
        if name != ir.ONES:
            continue
        rest = [i for j, (n, idx) in enumerate(mono.factors)
                if keep[j] and not (n == name and idx == indices) for i in idx]
        if all(i in rest and (i in open_legs or rest.count(i) >= 2) for i in indices):
            keep[k] = False
    return _Mono(mono.coefficient,
                 tuple(f for f, kept in zip(mono.factors, keep) if kept), mono.heads,
                 tuple(o for o, kept in zip(mono.owners, keep) if kept))


def expand_paths(program, name: str, through: Sequence[str] | None = None, *,
                 prefix: str | None = None, freeze: Sequence[str] = ()) -> PathExpansion:
    """The path expansion of equation `name` (see the module docstring). `through`
    chooses the block instances (default: `default_through`); `prefix` names the terms
    (`prefix.direct`, ...; default: the equation's last path segment). `freeze=("norms",)`
    first makes every layernorm / rmsnorm linear with a frozen per-position scale
    (`tndsl.interp.freeze`), so paths run through them; `.frozen` lists the scales."""
    freeze = tuple(freeze)
    for what in freeze:
        if what not in FREEZABLE:
            raise TnError(f"cannot freeze `{one_line(str(what))}`",
                          hint="what can be frozen: " + ", ".join(FREEZABLE))
    frozen = ()
    if "norms" in freeze:
        from tndsl.interp.freeze import freeze_norms
        program, frozen = freeze_norms(program)
    network = program.network
    equations = {eq.name: eq for eq in network.equations}
    if name not in equations:
        known = [eq.name for eq in network.equations]
        raise UnknownNameError(f"no equation `{name}` to expand",
                               hint=did_you_mean(name, known) or "equations: " +
                               ", ".join(eq.name for eq in program.outputs))
    instances = [inst.path for inst in network.instances]
    if through is None:
        through = default_through(network)
    else:
        through = tuple(through)
        for path in through:
            if path not in instances:
                raise UnknownNameError(f"no block instance `{path}`",
                                       hint=did_you_mean(path, instances) or
                                       "instances: " + (", ".join(instances) or "none"))
    expander = _Expander(program, tuple(through))
    eq = equations[{base: full for full, base in expander.spelling.items()}.get(name, name)]
    spelled = expander.spelling.get(eq.name, eq.name)
    if "@" in spelled:
        raise TnError(f"`{name}` is a version of `{spelled.partition('@')[0]}` that its loop "
                      "rebinds later, so text after the loop cannot name it", eq.span,
                      hint="expand an equation that holds the same value under its own name "
                           "(the block's output, such as `blocks.0.out`), or the last "
                           f"version, `{spelled.partition('@')[0]}`")
    name = spelled
    if opaque(eq):
        raise TnError(f"`{name}` applies a box (a nonlinearity, softmax or mask); paths split "
                      "linear networks: expand the equation inside the box instead", eq.span)
    monos = expander.top(eq)

    prefix = check_prefix(prefix) if prefix is not None else name.rsplit(".", 1)[-1]
    groups: dict[tuple, list[_Mono]] = {}
    # A product that reads no stream, or that only `ones` carries along an output leg (a
    # bias), joins the direct path where there is one: alone, such a leg would have no dim.
    direct = next((reads for _, reads in monos if reads and all(not r.path for r in reads)),
                  None)
    for mono, reads in monos:
        mono = _simplify(mono, eq.indices)
        if direct is not None and (not reads or (not mono.heads and _constant_along(mono, eq))):
            reads = direct
        key = (reads, tuple((h.dim, h.instance) for h in mono.heads))
        groups.setdefault(key, []).append(mono)
    per_label: dict[tuple, int] = {}
    terms = []
    taken = {t.name for t in network.tensors} | set(equations)
    any_reads = any(reads for reads, _ in groups)
    for (reads, _), members in groups.items():
        if len(reads) <= 1:
            ident = _identifier(reads[0].path) if reads else BIAS if any_reads else DIRECT
        else:
            ident = ".".join(f"{r.side}_{_identifier(r.path)}" for r in reads)
        count = per_label[reads] = per_label.get(reads, 0) + 1
        term_name = f"{prefix}.{ident}" + (f"_{count}" if count > 1 else "")
        if term_name in taken:
            raise TnError(f"`{term_name}` is already a name in this file",
                          hint="choose another prefix for the path terms (--prefix)")
        taken.add(term_name)
        terms.append(_emit(term_name, reads, eq, members, expander.spelling,
                           bias=not reads and any_reads, variant=count))

    label = name.replace(".", "_") + "_paths"
    sides = " + ".join(
        f"{t.name}[{', '.join(t.legs)}]" + "".join(f" * ones[{h.index}]" for h in t.heads)
        for t in terms) or "0"
    check = f"check {label}: {name}[{', '.join(eq.indices)}] == {sides}"
    header = [f"# ---- paths of {name} through {', '.join(through) or 'no block'} "
              f"(generated by `tndsl paths`) ----",
              "# Attention patterns and the embedding are given tensors; a head leg is kept open",
              "# where a block sums over heads."]
    body = []
    for term in terms:
        body.append(f"# {term.label}" + "".join(
            f"; {h.index}: heads of {h.instance}" for h in term.heads))
        body.append(term.equation)
    section = "\n".join(header) + "\n" + "\n".join(body) + "\n" + check + "\n"
    original = network.source.text if network.source is not None else ""
    # sizes of the dims not derived from others: given again, they reproduce the program
    dims = tuple((d.name, int(program.sizes[d.name])) for d in network.dims
                 if program.sizes.get(d.name) is not None
                 and (d.size is None or not d.size.free_symbols))
    return PathExpansion(name, eq.indices, tuple(through), tuple(terms), label, section,
                         original, dims, tuple(frozen), span=eq.span)


def _emit(term_name: str, reads, eq: ir.Equation, members: list[_Mono],
          spelling: dict[str, str], bias: bool = False, variant: int = 1) -> PathTerm:
    """One path equation, with readable index names: the equation's own legs, head legs
    `h1, h2...` (by their original name), summed indices by their original names."""
    outputs = tuple(eq.indices)
    used = set(outputs)
    head_names: dict[str, str] = {}
    heads = []
    for h in members[0].heads:
        base = h.index.split("#")[0]
        k = 1
        while f"{base}{k}" in used:
            k += 1
        head_names[h.index] = f"{base}{k}"
        used.add(f"{base}{k}")
        heads.append(HeadLeg(f"{base}{k}", h.dim, h.instance))
    ir_terms, owners = [], []
    for mono in members:
        owners.append(tuple(mono.owners))
        rename = dict(zip((h.index for h in mono.heads), (h.index for h in heads)))
        local = set(used)
        factors = []
        for tensor, indices in mono.factors:
            new = []
            for index in indices:
                if index in outputs:
                    new.append(index)
                    continue
                if index not in rename:
                    base = index.split("#")[0]
                    candidate, k = base, 2
                    while candidate in local:
                        candidate, k = f"{base}{k}", k + 1
                    rename[index] = candidate
                    local.add(candidate)
                new.append(rename[index])
            factors.append(ir.Ref(spelling.get(tensor, tensor), tuple(new)))
        ir_terms.append(ir.Term(mono.coefficient, tuple(factors)))
    legs = outputs + tuple(h.index for h in heads)
    text = f"{term_name}[{', '.join(legs)}] = {printer.expression(ir.Sum(tuple(ir_terms)))}"
    return PathTerm(term_name, reads, legs, tuple(heads), text, tuple(owners), bias, variant)


def check_prefix(prefix: str) -> str:
    """`prefix` if it is a `.tn` path (`paths`, `l1.paths`): it is written into the
    expansion's source as the start of each term's name, so anything else (a line
    break, a `#`, `[`) would change what the written file says. A TnError otherwise."""
    from tndsl.lang.syntax.parser import lark_parser  # the grammar's own NAME, keywords and all
    name = re.compile(lark_parser().get_terminal("NAME").pattern.to_regexp())
    segments = str(prefix).split(".")
    if not (name.fullmatch(segments[0]) and
            all(name.fullmatch(s) or (s.isascii() and s.isdigit()) for s in segments[1:])):
        raise TnError(f"the prefix `{one_line(prefix)}` is not a .tn name",
                      hint="it names the path terms (PREFIX.direct, ...): names of letters, "
                           "digits and `_`, not starting with a digit, not keywords, "
                           "joined by `.`")
    return prefix


def parse_through(text: str | None) -> tuple[str, ...] | None:
    """`--through a,b` as a tuple (None when not given)."""
    if text is None:
        return None
    return tuple(p.strip() for p in text.split(",") if p.strip())


__all__ = ["DIRECT", "HeadLeg", "PathExpansion", "PathTerm", "Read", "check_prefix",
           "default_through", "expand_paths", "head_dims", "opaque", "parse_through"]

