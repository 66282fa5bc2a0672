"""IR → DOT text in graphical tensor notation (Taylor; Elhage et al.).

Conventions (docs/figures.md): params are shaded rounded boxes, inputs and activations
circles, block instances plain rounded boxes; each wire is labelled with its dim (and
index with `indices=True`); open legs run to the figure's edge, the first on the left
and the others on the right; an index shared by three or more slots — or a free index
shared by two — is a small solid copy dot; an element-wise function, softmax, norm or
mask is a dashed rounded box around the sub-network it applies to; a sum is drawn as
its terms side by side joined by + / −, with coefficients other than 1 shown.

The text is deterministic: node ids are numbered in drawing order and nothing depends
on hashing. No Graphviz program is needed to produce it.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import sympy

from tndsl.lang import ir
from tndsl.lang.printer import format_box_argument
from tndsl.lang.errors import ResourceError, TnError
from tndsl.lang.text import dot_text, tex_math_name

PARAM_STYLE = 'shape=box, style="rounded,filled", fillcolor="#dce8f5", color="#1f4e79", ' \
              'penwidth=1.4, margin="0.06,0.03", height=0.42, width=0.5'
# A fixed tensor (rotary map, head grouping): a box like a param, unshaded, as its values
# are not learnt.
FIXED_STYLE = 'shape=box, style="rounded,filled", fillcolor="#f3f3f3", color="#555555", ' \
    'penwidth=1.4, height=0.42'
ACTIVATION_STYLE = 'shape=circle, color="#222222", penwidth=1.4, width=0.46, margin=0.02'
INSTANCE_STYLE = 'shape=box, style=rounded, color="#222222", penwidth=1.4, height=0.42'
COPY_STYLE = 'shape=point, width=0.09, color="#111111"'
PORT_STYLE = 'shape=point, width=0.01, style=invis'
FONT = "Times-Roman"


# ---- what is drawn: terms of factors, after expanding to the requested depth -------------

@dataclass
class _Tensor:
    name: str            # the IR name
    kind: str            # "param" | "input" | "activation" | "instance" | "ones"
    indices: tuple[str, ...]
    label: tuple[str, str, str]   # base, subscript, superscript


@dataclass
class _Box:
    label_html: str
    label_tex: str
    terms: list["_Term"]
    legs: tuple[str, ...]      # its free legs


@dataclass
class _Term:
    coefficient: sympy.Expr
    factors: list = field(default_factory=list)


class _Expander:
    def __init__(self, program, depth: int | None):
        self.program = program
        self.depth = depth
        self.tensors = {t.name: t for t in program.network.tensors}
        self.equations = {eq.name: eq for eq in program.network.equations}
        self.outputs = {inst.output: inst for inst in program.network.instances}
        self.dims: dict[str, str] = {}
        self.used: set[str] = set()
        self.visited = 0

    def fresh(self, index: str, dim: str) -> str:
        name = index
        while name in self.used:
            name += "′"
        self.used.add(name)
        self.dims[name] = dim
        return name

    def terms(self, expr: ir.Sum, subst: dict[str, str], dims, keep: set[str],
              depth: int | None) -> list[_Term]:
        out = []
        for term in expr.terms:
            local = dict(subst)
            for index in sorted(ir.indices(term)):
                if index not in local:
                    local[index] = self.fresh(index, dims[index])
            products = [_Term(term.coefficient)]
            for k, factor in enumerate(term.factors):
                options = self._factor(factor, ir.outside_of(term, k, keep), local, dims, depth)
                _check_drawable(len(products) * len(options),
                                sum(len(a.factors) for a in products) * len(options)
                                + sum(len(b.factors) for b in options) * len(products))
                products = [_Term(a.coefficient * b.coefficient, a.factors + b.factors)
                            for a in products for b in options]
            out.extend(products)
            _check_drawable(len(out), 0)
        return out

    def _factor(self, factor, outside, subst, dims, depth) -> list[_Term]:
        one = sympy.Integer(1)
        # Every factor visited, so that boxes nested in boxes (each holding a whole
        # expansion, as layer norms of a residual stream do) are bounded too.
        self.visited += 1
        _check_drawable(0, self.visited)
        if isinstance(factor, ir.Ref):
            indices = tuple(subst[i] for i in factor.indices)
            if factor.name == ir.ONES:
                return [_Term(one, [_Tensor("ones", "ones", (i,), ("", "", ""))
                                    for i in indices])]
            if factor.name in self.tensors:
                tensor = self.tensors[factor.name]
                return [_Term(one, [_Tensor(factor.name, tensor.kind, indices,
                                            math_label(factor.name))])]
            eq = self.equations[factor.name]
            inner_dims = {leg.name: leg.dim for leg in eq.index_dims}
            alias = _alias(eq)
            if alias is not None or (depth is None or depth > 0):
                next_depth = depth if (alias is not None or depth is None) else depth - 1
                return self.terms(eq.rhs, dict(zip(eq.indices, indices)), inner_dims,
                                  set(eq.indices), next_depth)
            if factor.name in self.outputs:
                inst = self.outputs[factor.name]
                base, sub, sup = math_label(inst.block)
                sup = sup or ",".join(re.findall(r"(?<=\.)\d+(?=\.|$)", "." + inst.path))
                return [_Term(one, [_Tensor(factor.name, "instance", indices,
                                            (base, sub, sup))])]
            return [_Term(one, [_Tensor(factor.name, "activation", indices,
                                        math_label(factor.name))])]
        if isinstance(factor, ir.Sum):  # a bracketed sum is drawn distributed
            legs = set(ir.free_legs(factor, outside))
            return self.terms(factor, {i: subst[i] for i in legs}, dims, legs, depth)
        legs = ir.free_legs(factor, outside)
        inner_subst = {i: subst[i] for i in legs}
        label_html, label_tex, argument = _box_label(factor, subst)
        terms = self.terms(argument, inner_subst, dims, set(legs), depth)
        return [_Term(one, [_Box(label_html, label_tex, terms,
                                 tuple(subst[i] for i in legs))])]


# Inlining distributes sums, so `--expand` on a deep residual stream doubles the terms
# per layer (GPT-2 small: 2^12 terms and millions of DOT lines); no figure that size is
# readable. Checked before each distribution, so the refusal costs nothing.
MAX_DRAWN_TERMS = 512
MAX_DRAWN_TENSORS = 10_000


class _TooLarge(Exception):
    """The figure would exceed MAX_DRAWN_TERMS or MAX_DRAWN_TENSORS."""


def _check_drawable(terms: int, tensors: int) -> None:
    if terms > MAX_DRAWN_TERMS or tensors > MAX_DRAWN_TENSORS:
        raise _TooLarge


def _alias(eq: ir.Equation):
    """`x[p, m] = resid[p, m]`: drawn as what it names, at no cost in depth."""
    if len(eq.rhs.terms) != 1:
        return None
    term = eq.rhs.terms[0]
    if term.coefficient == 1 and len(term.factors) == 1 and isinstance(term.factors[0], ir.Ref) \
            and term.factors[0].name != ir.ONES:
        return term.factors[0]
    return None


def _box_label(factor, subst) -> tuple[str, str, ir.Sum]:
    """HTML and LaTeX labels of a box, and the argument drawn inside it. A mask directly
    inside a softmax shares its box: softmax_s(mask(·))."""
    if isinstance(factor, ir.Mask):
        conds = " and ".join(f"{subst[c.left]} {_OPS_HTML[c.op]} {subst[c.right]}"
                             + _offset(c) for c in factor.conditions)
        tex = r" \wedge ".join(f"{_tex_index(subst[c.left])} {_OPS_TEX[c.op]} "
                               f"{_tex_index(subst[c.right])}" + _offset(c)
                               for c in factor.conditions)
        return f"mask({dot_text(conds)})", rf"$\mathrm{{mask}}({tex})$", factor.argument
    name = "σ" if factor.function == "sigmoid" else factor.function
    tex_name = (r"\sigma" if factor.function == "sigmoid"
                else rf"\mathrm{{{tex_math_name(name)}}}")
    legs = ",".join(subst[l] for l in factor.legs)
    label = dot_text(name) + (f"<sub><i>{dot_text(legs)}</i></sub>" if legs else "")
    tex = tex_name + (f"_{{{','.join(_tex_index(subst[l]) for l in factor.legs)}}}"
                      if legs else "")
    if factor.args:  # a box's parameters: softcap(30), topk(2)
        written = ", ".join(format_box_argument(a) for a in factor.args)
        label += dot_text(f"({written})")
        tex += rf"({written})"
    argument = factor.argument
    inner = argument.terms[0].factors[0] if (
        len(argument.terms) == 1 and argument.terms[0].coefficient == 1
        and len(argument.terms[0].factors) == 1
        and isinstance(argument.terms[0].factors[0], ir.Mask)) else None
    if inner is not None:
        label += "(mask(·))"
        tex += r"(\mathrm{mask}(\cdot))"
        argument = inner.argument
    return label, f"${tex}$", argument


def _offset(condition: ir.Condition) -> str:
    """` + Window` after the right-hand leg of an affine mask condition."""
    if condition.offset == 0:
        return ""
    text = str(condition.offset)
    return f" - {-condition.offset}" if text.startswith("-") else f" + {text}"


_OPS_HTML = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "=", "!=": "≠"}
_OPS_TEX = {"<": "<", "<=": r"\le", ">": ">", ">=": r"\ge", "==": "=", "!=": r"\ne"}


# ---- labels ------------------------------------------------------------------------------

def math_label(name: str) -> tuple[str, str, str]:
    """`blocks.1.attn.W_Q` -> ("W", "Q", "1"); `resid0` -> ("resid", "0", "")."""
    segments = name.split(".")
    layers = ",".join(s for s in segments if s.isdigit())
    last = segments[-1]
    if "_" in last:
        base, sub = last.split("_", 1)
    else:
        match = re.fullmatch(r"(.*?[^\d])(\d+)", last)
        base, sub = (match.group(1), match.group(2)) if match else (last, "")
    return base or last, sub, layers


def label_html(label: tuple[str, str, str]) -> str:
    base, sub, sup = (dot_text(part) for part in label)
    text = f"<i>{base}</i>" if len(label[0]) == 1 else base
    if sub:
        text += f"<sub>{sub}</sub>"
    if sup:
        text += f"<sup>{sup}</sup>"
    return text


def label_tex(label: tuple[str, str, str]) -> str:
    base, sub, sup = label
    text = tex_math_name(base) if len(base) == 1 else rf"\mathrm{{{tex_math_name(base)}}}"
    if sub:
        text += rf"_{{\mathrm{{{tex_math_name(sub)}}}}}"
    if sup:
        text += f"^{{{tex_math_name(sup)}}}"
    return f"${text}$"


def _tex_index(index: str) -> str:
    return tex_math_name(index.replace("′", "")) + "'" * index.count("′")


def coefficient_text(value: sympy.Expr) -> str:
    """One line, math-like: `1/√Head`, `2`, `(A + 1)/3`."""
    text = sympy.sstr(value)
    text = re.sub(r"sqrt\((\w+)\)", r"√\1", text)
    return text.replace("*", "·")


def coefficient_tex(value: sympy.Expr) -> str:
    """LaTeX for a coefficient; a dim named with characters LaTeX cannot set (`Größe`)
    is written through the same sanitiser as every other name."""
    names = {s: rf"\mathit{{{tex_math_name(s.name)}}}" for s in value.free_symbols
             if not re.fullmatch(r"[A-Za-z0-9_]+", s.name)}
    return sympy.latex(value, symbol_names=names)


# ---- DOT ---------------------------------------------------------------------------------

def to_dot(program, name: str | None = None, *, depth: int | None = 0,
           indices: bool = False) -> str:
    """DOT text for the network of equation `name` (default: the final equation).
    depth 0 draws named intermediates and block instances as single nodes; depth N
    inlines N levels of definitions (distributing sums); depth None inlines everything."""
    equations = {eq.name: eq for eq in program.network.equations}
    if name is None:
        final = program.final
        if final is None:
            raise TnError("the program has no equation to draw")
        name = final.name
    if name not in equations:
        from tndsl.lang.errors import UnknownNameError, did_you_mean
        raise UnknownNameError(f"no equation `{name}` to draw",
                               hint=did_you_mean(name, equations))
    eq = equations[name]
    expander = _Expander(program, depth)
    for index in eq.indices:
        expander.used.add(index)
    dims = {leg.name: leg.dim for leg in eq.index_dims}
    expander.dims.update({i: dims[i] for i in eq.indices})
    try:
        terms = expander.terms(eq.rhs, {i: i for i in eq.indices}, dims, set(eq.indices),
                               depth)
    except _TooLarge:
        raise ResourceError(f"the figure of `{name}` would draw more than "
                            f"{MAX_DRAWN_TERMS:,} terms or {MAX_DRAWN_TENSORS:,} tensors at "
                            f"this depth", eq.span,
                            hint="draw fewer levels of definitions: --depth N "
                                 "(default 0) instead of --expand") from None
    source = program.network.source
    origin = source.name.rsplit("/", 1)[-1] if source is not None else "<string>"
    return _Writer(expander.dims, indices).write(eq, terms, origin)


class _Writer:
    def __init__(self, dims: dict[str, str], show_indices: bool):
        self.dims = dims
        self.show_indices = show_indices
        self.lines: list[str] = []
        self.ids = itertools.count()
        self.clusters = itertools.count()

    def node(self, attrs: str, indent: str) -> str:
        node_id = f"n{next(self.ids)}"
        self.lines.append(f"{indent}{node_id} [{attrs}];")
        return node_id

    def wire_label(self, index: str) -> str:
        dim = dot_text(self.dims[index])
        text = f"<i>{dot_text(index)}</i>: <i>{dim}</i>" if self.show_indices else f"<i>{dim}</i>"
        tex = f"${_tex_index(index)}$: $\\mathit{{{tex_math_name(self.dims[index])}}}$" \
            if self.show_indices else f"$\\mathit{{{tex_math_name(self.dims[index])}}}$"
        return f'label=<{text}>, texlbl="{tex}"'

    def write(self, eq: ir.Equation, terms: list[_Term], origin: str) -> str:
        self.lines = [
            "digraph tndsl {",
            # Provenance, kept by Graphviz as an SVG comment and by tikz() as a TeX one.
            f'  comment="{dot_text(f"tndsl figure of {eq.name} from {origin}")}";',
            f'  graph [rankdir=LR, newrank=true, compound=true, nodesep=0.4, ranksep=0.6, '
            f'pad=0.05, margin=0, fontname="{FONT}", fontsize=16];',
            f'  node [fontname="{FONT}", fontsize=18, label=""];',
            f'  edge [dir=none, fontname="{FONT}", fontsize=14, fontcolor="#444444", '
            f'penwidth=1.3, color="#222222"];',
        ]
        previous = None
        for k, term in enumerate(terms):
            coefficient = term.coefficient
            if k > 0:
                sign = "−" if coefficient.could_extract_minus_sign() else "+"
                joiner = self.node(f'shape=plaintext, label="{sign}", fontsize=26, '
                                   f'texlbl="${"-" if sign == "−" else "+"}$", class="joiner"',
                                   "  ")
                self.lines.append(f"  {previous} -> {joiner} [style=invis, weight=100];")
                previous = joiner
            if k > 0 and coefficient.could_extract_minus_sign():
                coefficient = -coefficient
            first, last = self.term(term, coefficient, list(eq.indices), f"t{k}")
            if previous is not None:
                self.lines.append(f"  {previous} -> {first} [style=invis, weight=100];")
            previous = last
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def term(self, term: _Term, coefficient, free: list[str], tag: str) -> tuple[str, str]:
        cluster = f"cluster_{tag}"
        self.lines.append(f"  subgraph {cluster} {{")
        self.lines.append('    graph [style=invis, class="term"];')
        occurrences: dict[str, list[str]] = {}
        nodes: list[str] = []
        if coefficient != 1 or not term.factors:  # a term that is just `1` draws the 1
            nodes.append(self.coefficient(coefficient, "    "))
        self.factors(term.factors, occurrences, nodes, "    ")
        self.chain(nodes, "    ")
        # An open leg runs to the nearer edge: left if it leaves from the first half of
        # the term's drawing order, right otherwise.
        order = {node: k for k, node in enumerate(nodes)}
        ports_left, ports_right = [], []
        for index in free:
            port = self.node(f'{PORT_STYLE}, class="port"', "    ")
            first = min((order.get(n, len(nodes)) for n in occurrences.get(index, [])),
                        default=len(nodes))
            (ports_left if first < len(nodes) / 2 else ports_right).append((index, port))
        self.lines.append("  }")
        self.wires(occurrences, dict(ports_left), dict(ports_right))
        firsts = [p for _, p in ports_left] or nodes[:1]
        lasts = [p for _, p in ports_right] or nodes[-1:]
        return firsts[0], lasts[-1]

    def coefficient(self, value, indent: str) -> str:
        text = dot_text(coefficient_text(value))
        return self.node(f'shape=plaintext, label="{text}", fontsize=18, '
                         f'texlbl="${coefficient_tex(value)}$", class="coefficient"', indent)

    def chain(self, nodes: list[str], indent: str) -> None:
        """Invisible heavy edges through a term's nodes in writing order: dot then keeps
        them left to right and on one line where the wires allow."""
        for a, b in zip(nodes, nodes[1:]):
            self.lines.append(f"{indent}{a} -> {b} [style=invis, weight=4];")

    def factors(self, factors, occurrences, nodes, indent, *, ones_first: bool = True) -> None:
        # `ones` first where legs may leave to the left, so a broadcast leg does not
        # double back; last inside a box over a sum, whose legs all leave to the right.
        factors = sorted(factors, key=lambda f: (isinstance(f, _Tensor) and f.kind == "ones")
                         != ones_first)
        for factor in factors:
            if isinstance(factor, _Box):
                self.box(factor, occurrences, nodes, indent)
                continue
            if factor.kind == "ones":
                node = self.node(f'{COPY_STYLE}, class="ones"', indent)
            else:
                style = {"param": PARAM_STYLE, "input": ACTIVATION_STYLE,
                         "activation": ACTIVATION_STYLE, "instance": INSTANCE_STYLE,
                         "fixed": FIXED_STYLE}[factor.kind]
                node = self.node(f'{style}, label=<{label_html(factor.label)}>, '
                                 f'texlbl="{label_tex(factor.label)}", '
                                 f'class="tensor {factor.kind}", '
                                 f'tooltip="{dot_text(factor.name)}"', indent)
            nodes.append(node)
            for index in factor.indices:
                occurrences.setdefault(index, []).append(node)

    def box(self, box: _Box, occurrences, nodes, indent) -> None:
        tag = next(self.clusters)
        self.lines.append(f"{indent}subgraph cluster_box{tag} {{")
        self.lines.append(f'{indent}  graph [style="dashed,rounded", color="#555555", '
                          f'penwidth=1.3, label=<{box.label_html}>, texlbl="{box.label_tex}", '
                          f'labeljust=l, class="box"];')
        if len(box.terms) == 1:
            inner: dict[str, list[str]] = {}
            inner_nodes: list[str] = []
            if box.terms[0].coefficient != 1:
                inner_nodes.append(self.coefficient(box.terms[0].coefficient, indent + "  "))
            self.factors(box.terms[0].factors, inner, inner_nodes, indent + "  ")
            self.chain(inner_nodes, indent + "  ")
            nodes.extend(inner_nodes)
            # A leg of the box met twice inside it meets at a dot inside, and leaves the
            # box as one wire; legs that never leave are wired inside.
            for index, places in inner.items():
                if index in box.legs and len(places) >= 2:
                    dot = self.node(f'{COPY_STYLE}, class="copy"', indent + "  ")
                    for place in places:
                        self.lines.append(f"  {place} -> {dot} [{self.wire_label(index)}, "
                                          f"class=\"wire\"];")
                    occurrences.setdefault(index, []).append(dot)
                elif index in box.legs:
                    occurrences.setdefault(index, []).extend(places)
                else:
                    self.wires({index: places}, {}, {})
        else:
            # A sum inside a box: each term is wired to one point per leg of the box.
            ports = {leg: self.node(f'{COPY_STYLE}, width=0.05, class="boxleg"', indent + "  ")
                     for leg in box.legs}
            previous = None
            for k, term in enumerate(box.terms):
                inner: dict[str, list[str]] = {}
                inner_nodes: list[str] = []
                coefficient = term.coefficient
                if k > 0:
                    sign = "−" if coefficient.could_extract_minus_sign() else "+"
                    joiner = self.node(f'shape=plaintext, label="{sign}", fontsize=22, '
                                       f'texlbl="${"-" if sign == "−" else "+"}$", '
                                       f'class="joiner"', indent + "  ")
                    self.lines.append(f"{indent}  {previous} -> {joiner} [style=invis];")
                    previous = joiner
                    if coefficient.could_extract_minus_sign():
                        coefficient = -coefficient
                if coefficient != 1:
                    inner_nodes.append(self.coefficient(coefficient, indent + "  "))
                self.factors(term.factors, inner, inner_nodes, indent + "  ", ones_first=False)
                self.chain(inner_nodes, indent + "  ")
                if previous is not None and inner_nodes:
                    self.lines.append(f"{indent}  {previous} -> {inner_nodes[0]} [style=invis];")
                previous = inner_nodes[-1] if inner_nodes else previous
                for leg, port in ports.items():
                    inner.setdefault(leg, []).append(port)
                self.wires(inner, {}, {})
                nodes.extend(inner_nodes)
            for leg, port in ports.items():
                occurrences.setdefault(leg, []).append(port)
            nodes.extend(ports.values())
        self.lines.append(f"{indent}}}")

    def wires(self, occurrences, left: dict, right: dict) -> None:
        for index, places in occurrences.items():
            label = self.wire_label(index)
            ends = ([left[index]] if index in left else []) + places + \
                ([right[index]] if index in right else [])
            if len(ends) == 2:
                self.lines.append(f"  {ends[0]} -> {ends[1]} [{label}, class=\"wire\"];")
            elif len(ends) > 2:
                dot = self.node(f'{COPY_STYLE}, class="copy"', "  ")
                first, *rest = ends
                self.lines.append(f"  {first} -> {dot} [{label}, class=\"wire\"];")
                for end in rest:
                    self.lines.append(f"  {dot} -> {end} [{label}, class=\"wire\"];")
            elif len(ends) == 1:
                # A leg summed over with nothing else on it: a dangling end (only from
                # `ones` inside a box); draw it to an invisible point.
                port = self.node(f'{PORT_STYLE}, class="port"', "  ")
                self.lines.append(f"  {ends[0]} -> {port} [{label}, class=\"wire\"];")
