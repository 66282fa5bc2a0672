"""The residual stream of a checked program, read off its IR (no per-family table).

A transformer's residual stream is a running sum: the embedding, then each block
instance's output added in turn (`resid_mid = resid_pre + attn.out`). `residual_stream`
finds that sum in any `.tn` program:

- its **components** are the terms of the last such sum with every plain copy and sum
  inlined, down to the outputs of the instances added to it (`blocks.3.attn`, named by
  their path, with the loop index as their layer) and to products of params and inputs
  (the embedding `tokens * embed.W_E`, named `embed` after its param's path);
- its **states** are the equations whose value is the sum of the first k components
  (`resid`, `blocks.0.resid_mid`, ...), each with all its synonyms (`blocks.1.resid_pre`
  is `resid@1` is `blocks.0.out`);
- its **norms** are the layernorm / rmsnorm boxes that read a state (`blocks.0.ln1`,
  `ln_final`), with the axes they normalise;
- its **head results** are, for each added instance that sums over heads, the terms of
  its output that contract a head leg: kept open, they are the per-head outputs
  `result[p, h, m] = z[p, h, e] * W_O[h, e, m]`, the other terms its bias.

Everything here is IR; `tndsl.interp.cache` evaluates it on a batch.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy

from tndsl.lang import ir
from tndsl.lang.errors import TnError, UnknownNameError, did_you_mean
from tndsl.interp.freeze import DEFAULT_EPS, NORMS, boxes
from tndsl.interp.paths import default_through, head_dims, opaque



def layer_of(path: str) -> int | None:
    """The loop index of a name: its first all-digit segment (`blocks.3.attn.z` → 3); for
    a loop's rebound name `resid@k`, the iteration that wrote it (k - 1)."""
    base, _, version = path.partition("@")
    for segment in base.split("."):
        if segment.isdigit():
            return int(segment)
    if version.isdigit():
        return int(version) - 1
    return None


@dataclass(frozen=True)
class Component:
    """One term of the residual sum: the output of instance `name` (`term` None, the
    cached value of `source`), or a product `term` of equation `source`'s right-hand
    side (the embedding), evaluated from params, inputs and cached intermediates."""

    name: str
    layer: int | None
    source: str
    term: ir.Term | None = None
    indices: tuple[str, ...] = ()
    dims: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class State:
    """The residual stream after its first `count` components, and every equation that
    holds it (the first is its label)."""

    names: tuple[str, ...]
    count: int

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class Norm:
    """A layernorm or rmsnorm box reading a state: `argument` is the equation it
    normalises over `axes` (positions among the argument's legs)."""

    name: str                       # its instance path, or its equation at top level
    equation: str
    function: str
    argument: str
    axes: tuple[int, ...]
    eps: float
    state: int                      # index into ResidualStream.states


@dataclass(frozen=True)
class HeadResult:
    """The per-head output of an instance: terms `terms` of its output equation with the
    head index `index` kept open, as legs `indices` (the head leg before the last)."""

    instance: str
    layer: int | None
    equation: str
    terms: tuple[int, ...]
    index: str
    dim: str
    indices: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.instance}.result"


@dataclass(frozen=True)
class ResidualStream:
    final: str
    legs: tuple[ir.Leg, ...]
    components: tuple[Component, ...]
    states: tuple[State, ...]
    norms: tuple[Norm, ...]
    heads: tuple[HeadResult, ...]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({c.layer for c in self.components if c.layer is not None}))

    def count_before(self, layer: int | None) -> int:
        """How many components come before layer `layer` (None: all of them; negative
        counts from the end as in Python and TransformerLens: -1 is all)."""
        if layer is None:
            return len(self.components)
        if isinstance(layer, int) and layer < 0:
            layer += (max(self.layers) + 2) if self.layers else 1
        self._check_layer(layer, allow_end=True)
        return sum(1 for c in self.components if c.layer is None or c.layer < layer)

    def state_before(self, layer: int | None) -> State:
        count = self.count_before(layer)
        for state in self.states:
            if state.count == count:
                return state
        raise TnError(f"no equation holds the residual stream before layer {layer}",
                      hint="the states are " + ", ".join(s.name for s in self.states))

    def norm_reading(self, layer: int | None) -> Norm:
        """The first norm that reads the stream before `layer` (None: after the last)."""
        state = self.states.index(self.state_before(layer))
        for norm in self.norms:
            if norm.state == state:
                return norm
        raise TnError(f"no layernorm or rmsnorm reads the residual stream before "
                      f"{'the end' if layer is None else f'layer {layer}'}",
                      hint="norms: " + (", ".join(n.name for n in self.norms) or "none"))

    def norm(self, name: str) -> Norm:
        for norm in self.norms:
            if name in (norm.name, norm.equation):
                return norm
        raise UnknownNameError(f"no norm `{name}` reads the residual stream",
                               hint=did_you_mean(name, [n.name for n in self.norms])
                               or "norms: " + (", ".join(n.name for n in self.norms) or "none"))

    def heads_of(self, layer: int | None) -> tuple[HeadResult, ...]:
        if layer is not None:
            self._check_layer(layer)
        return tuple(h for h in self.heads if layer is None or h.layer == layer)

    def _check_layer(self, layer: int, allow_end: bool = False) -> None:
        layers = self.layers
        top = (max(layers) + 1) if layers else 0
        if not isinstance(layer, int) or layer < 0 or layer > top or \
                (layer == top and not allow_end):
            raise TnError(f"no layer {layer}: the layers are "
                          + (f"0..{top - 1}" if layers else "none"))


def residual_stream(program) -> ResidualStream:
    """The residual stream of `program` (see the module docstring); a TnError where the
    program adds no block's output to a sum."""
    network = program.network
    held = _ANALYSED.get(id(network))
    if held is None or held[0] is not network:
        if len(_ANALYSED) > 32:
            _ANALYSED.clear()
        held = _ANALYSED[id(network)] = (network, _analyse(network))
    return held[1]


_ANALYSED: dict[int, tuple[ir.Network, "ResidualStream"]] = {}


def _analyse(network: ir.Network) -> ResidualStream:
    equations = {eq.name: eq for eq in network.equations}
    order = {eq.name: k for k, eq in enumerate(network.equations)}
    through = default_through(network)
    outputs = {inst.output: inst.path for inst in network.instances if inst.path in through}
    inside = lambda name: any(equations[name].instance == p or
                              equations[name].instance.startswith(p + ".") for p in through)
    final = None
    for eq in network.equations:
        if not inside(eq.name) and any(_single_ref(t, eq) in outputs for t in eq.rhs.terms):
            final = eq
    if final is None:
        raise TnError("this model has no residual stream: no equation adds a block's output "
                      "to a sum (`resid_mid[p, m] = resid_pre[p, m] + Attention(...) as attn`)")

    memo: dict[str, tuple[Component, ...]] = {}

    def expand(name: str) -> tuple[Component, ...]:
        if name in memo:
            return memo[name]
        memo[name] = ()  # acyclic; guards recursion anyway
        eq = equations[name]
        found: list[Component] = []
        for k, term in enumerate(eq.rhs.terms):
            ref = _single_ref(term, eq)
            if ref in outputs:
                found.append(Component(outputs[ref], layer_of(outputs[ref]), ref))
            elif ref in equations and not opaque(equations[ref]) and not inside(ref):
                found.extend(expand(ref))
            else:
                found.append(Component(_term_name(term, eq, k), None, eq.name, term,
                                       eq.indices, tuple(_dims(eq).items())))
        memo[name] = tuple(found)
        return memo[name]

    components = tuple(sorted(expand(final.name), key=lambda c: order[c.source]))
    keys = [_key(c) for c in components]
    legs = tuple(leg.dim for leg in final.legs)
    by_count: dict[int, list[str]] = {}
    for eq in network.equations:
        if opaque(eq) or inside(eq.name) or tuple(l.dim for l in eq.legs) != legs:
            continue
        mine = [_key(c) for c in expand(eq.name)]
        if mine and len(set(mine)) == len(mine) and set(mine) == set(keys[:len(mine)]):
            by_count.setdefault(len(mine), []).append(eq.name)
    states = tuple(State(tuple(names), count) for count, names in sorted(by_count.items()))
    synonyms = {name: k for k, state in enumerate(states) for name in state.names}

    norms = []
    for eq in network.equations:
        for box in boxes(eq.rhs):
            if box.function not in NORMS or len(box.argument.terms) != 1:
                continue
            term = box.argument.terms[0]
            if len(term.factors) != 1 or not isinstance(term.factors[0], ir.Ref) \
                    or term.coefficient != 1:
                continue
            ref = term.factors[0]
            if ref.name not in synonyms or not set(box.legs) <= set(ref.indices):
                continue
            axes = tuple(ref.indices.index(i) for i in box.legs)
            norms.append(Norm(eq.instance or eq.name, eq.name, box.function, ref.name, axes,
                              box.eps if box.eps is not None else DEFAULT_EPS,
                              synonyms[ref.name]))

    heads = []
    for inst in network.instances:
        if inst.path not in through:
            continue
        dims = head_dims(network, inst.path)
        out = equations[inst.output]
        index_dims = _dims(out)
        picked, index = [], None
        for k, term in enumerate(out.rhs.terms):
            open_heads = {i for f in term.factors if isinstance(f, ir.Ref) for i in f.indices
                          if i not in out.indices and index_dims.get(i) in dims}
            if len(open_heads) == 1 and (index is None or open_heads == {index}):
                index = open_heads.pop()
                picked.append(k)
        if index is not None:
            indices = out.indices[:-1] + (index,) + out.indices[-1:]
            heads.append(HeadResult(inst.path, layer_of(inst.path), out.name, tuple(picked),
                                    index, index_dims[index], indices))
    return ResidualStream(final.name, final.legs, components, states, tuple(norms),
                          tuple(heads))


PLACEHOLDER = "normalized#"   # not a .tn name: cannot clash with the program's


def readout(program, norm: "Norm | State", target: str
            ) -> tuple[tuple[ir.Term, ...], tuple[ir.Term, ...]]:
    """Equation `target` (the logits) as linear terms in the value of `norm`'s box: every
    equation between them inlined, the box replaced by the tensor `PLACEHOLDER` with the
    legs of the norm's argument. Returns (the terms holding it, the rest: the biases), in
    `target`'s indices; a TnError where `target` is not linear in the box. Given a
    `State` instead (a model with no final norm), the state itself is the placeholder."""
    network = program.network
    if isinstance(norm, State):
        stops = set(norm.names)
        norm = Norm(norm.name, norm.name, "", norm.name, (), 0.0, -1)
    else:
        stops = set()
    equations = {eq.name: eq for eq in network.equations}
    if target not in equations:
        raise UnknownNameError(f"no equation `{target}`",
                               hint=did_you_mean(target, equations) or "")
    counter = iter(range(10 ** 9))
    depends: dict[str, bool] = {}

    def reaches(name: str) -> bool:
        if name not in depends:
            depends[name] = False
            eq = equations.get(name)
            depends[name] = name == norm.equation or name in stops or (
                eq is not None and not opaque(eq) and any(reaches(r.name) for r in ir.refs(eq.rhs)))
        return depends[name]

    def inline(name: str, indices: tuple[str, ...]) -> list[ir.Term]:
        eq = equations[name]
        mapping = dict(zip(eq.indices, indices))
        for leg in eq.index_dims or ():
            mapping.setdefault(leg.name, f"{leg.name}#{next(counter)}")
        return [t for term in eq.rhs.terms for t in expand_term(term, mapping, name)]

    def expand_term(term: ir.Term, mapping: dict[str, str], owner: str) -> list[ir.Term]:
        options: list[list[ir.Term]] = [[ir.Term(term.coefficient, ())]]
        for factor in term.factors:
            if isinstance(factor, ir.Box) and owner == norm.equation and \
                    factor.function == norm.function:
                arg = factor.argument.terms[0].factors[0]
                options.append([ir.Term(1, (ir.Ref(PLACEHOLDER, tuple(
                    mapping[i] for i in arg.indices)),))])
            elif isinstance(factor, ir.Ref):
                indices = tuple(mapping.get(i, i) for i in factor.indices)
                if factor.name in stops:
                    options.append([ir.Term(1, (ir.Ref(PLACEHOLDER, indices),))])
                elif factor.name == norm.equation or (factor.name in equations and reaches(factor.name)):
                    options.append(inline(factor.name, indices))
                else:
                    options.append([ir.Term(1, (ir.Ref(factor.name, indices),))])
            elif isinstance(factor, ir.Sum):
                options.append([t for sub in factor.terms for t in expand_term(sub, mapping, owner)])
            else:
                raise TnError(f"`{target}` is not linear in the output of `{norm.name}`",
                              getattr(factor, "span", None))
        result = []
        for choice in itertools.product(*options):
            coefficient = 1
            factors: tuple = ()
            for t in choice:
                coefficient = coefficient * t.coefficient
                factors += t.factors
            result.append(ir.Term(sympy.sympify(coefficient), factors))
        return result

    eq = equations[target]
    if not reaches(target):
        raise TnError(f"`{target}` does not read `{norm.name}` linearly", eq.span)
    terms = inline(target, eq.indices)
    holding = tuple(t for t in terms if any(f.name == PLACEHOLDER for f in t.factors))
    rest = tuple(t for t in terms if t not in holding)
    if any(sum(f.name == PLACEHOLDER for f in t.factors) != 1 for t in holding):
        raise TnError(f"`{target}` is not linear in the output of `{norm.name}`", eq.span)
    return holding, rest


def index_dims(program, terms) -> dict[str, str]:
    """Index → dim for the (renamed) indices of inlined terms: `m#3` has `m`'s dim where
    some equation declares it; resolved through the tensors' and equations' legs."""
    legs: dict[str, str] = {}
    declared = {t.name: t.legs for t in program.network.tensors}
    declared.update({eq.name: eq.legs for eq in program.network.equations})
    for term in terms:
        for factor in term.factors:
            for index, leg in zip(factor.indices, declared.get(factor.name, ())):
                legs.setdefault(index, leg.dim)
    return legs


def _single_ref(term: ir.Term, eq: ir.Equation) -> str | None:
    """The name a term copies unchanged (`x[p, m]` in an equation with legs p, m)."""
    if term.coefficient == 1 and len(term.factors) == 1 and isinstance(term.factors[0], ir.Ref) \
            and term.factors[0].indices == eq.indices:
        return term.factors[0].name
    return None


def _term_name(term: ir.Term, eq: ir.Equation, k: int) -> str:
    """A product's name: the path its params share, less their last segment (`embed`
    for `tokens * embed.W_E`), else the equation's name and the term's place."""
    ref = _single_ref(term, eq)
    if ref is not None and "." not in ref:
        return ref
    prefixes = {f.name.rpartition(".")[0] for f in term.factors
                if isinstance(f, ir.Ref) and "." in f.name and f.name != ir.ONES}
    if len(prefixes) == 1 and next(iter(prefixes)):
        return prefixes.pop()
    return f"{eq.name}.term{k}"


def _key(component: Component) -> tuple:
    return (component.source, component.term)


def _dims(eq: ir.Equation) -> dict[str, str]:
    return {leg.name: leg.dim for leg in eq.index_dims or eq.legs or ()}


__all__ = ["Component", "HeadResult", "Norm", "ResidualStream", "State", "layer_of",
           "readout", "residual_stream"]
