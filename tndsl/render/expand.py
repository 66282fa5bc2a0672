"""What a figure draws: an equation expanded to the requested depth, as terms of
tensors and boxes (an element-wise function, softmax, norm or mask around what it
applies to), with the math labels of names and coefficients.

With `hooks`, the figure is a hook map: every equation (a hook point of the compiled
model) is named where it is drawn. A drawn intermediate carries its name and the names
of the equations that only rename it (`blocks.0.resid_pre` on `resid`); an equation
inlined at this depth is a region (a dotted box) named after it instead of being
distributed; and the equations hidden inside a drawn intermediate (the attention
pattern inside `Attention⁰`) are listed on it, so the figure names exactly the hook
points a model compiled for the equation exposes.

Pure: no layout and no Graphviz. `tndsl.render.layout` places what this returns.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy

from tndsl.lang import ir
from tndsl.lang.errors import ResourceError, TnError, UnknownNameError, did_you_mean
from tndsl.lang.printer import format_box_argument
from tndsl.lang.text import dot_text, tex_math_name



# ---- what is drawn: terms of factors, after expanding to the requested depth -------------

@dataclass
class _Tensor:
    name: str            # the IR name
    kind: str            # "param" | "input" | "activation" | "instance" | "ones"
    indices: tuple[str, ...]
    label: tuple[str, str, str]   # base, subscript, superscript
    hooks: tuple[str, ...] = ()   # hook points it is (its own name and those renaming it)
    inside: tuple[str, ...] = ()  # hook points hidden inside it, in computation order


@dataclass
class _Box:
    label_html: str
    label_tex: str
    terms: list["_Term"]
    legs: tuple[str, ...]      # its free legs
    hooks: tuple[str, ...] = ()   # a hook map's region: the equations it is


@dataclass
class _Term:
    coefficient: sympy.Expr
    factors: list = field(default_factory=list)


class _Expander:
    def __init__(self, program, depth: int | None, hooks: bool = False):
        self.program = program
        self.depth = depth
        self.hooks = hooks
        self.tensors = {t.name: t for t in program.network.tensors}
        self.equations = {eq.name: eq for eq in program.network.equations}
        self.outputs = {inst.output: inst for inst in program.network.instances}
        self.dims: dict[str, str] = {}
        self.used: set[str] = set()
        self.visited = 0
        self.within: list[str] = []      # the equations being inlined, outermost first
        self.paths = sorted((inst.path for inst in program.network.instances),
                            key=lambda p: -len(p))

    def instance_mark(self) -> str:
        """The layer numbers (or, without any, the instance path) of the innermost
        equation being inlined that belongs to a block instance; "" at the top."""
        for name in reversed(self.within):
            for path in self.paths:
                if name.startswith(path + "."):
                    layers = [seg for seg in path.split(".") if seg.isdigit()]
                    return ",".join(layers) or path
        return ""

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
            own = (eq.name,) if self.hooks else ()
            if alias is not None or (depth is None or depth > 0):
                next_depth = depth if (alias is not None or depth is None) else depth - 1
                self.within.append(eq.name)
                try:
                    terms = self.terms(eq.rhs, dict(zip(eq.indices, indices)), inner_dims,
                                       set(eq.indices), next_depth)
                finally:
                    self.within.pop()
                if not self.hooks:
                    return terms
                if alias is not None:   # the same tensor under another name: named on it
                    drawn = terms[0].factors[0]
                    drawn.hooks = drawn.hooks + own
                    return terms
                # Inlined: a region named after the equation, its sum kept inside it.
                return [_Term(one, [_Box("", "", terms, tuple(dict.fromkeys(indices)), own)])]
            if factor.name in self.outputs:
                inst = self.outputs[factor.name]
                base, sub, sup = math_label(inst.block)
                sup = sup or ",".join(re.findall(r"(?<=\.)\d+(?=\.|$)", "." + inst.path))
                return [_Term(one, [_Tensor(factor.name, "instance", indices,
                                            (base, sub, sup), own)])]
            return [_Term(one, [_Tensor(factor.name, "activation", indices,
                                        math_label(factor.name), own)])]
        if isinstance(factor, ir.Sum):  # a bracketed sum is drawn distributed
            legs = set(ir.free_legs(factor, outside))
            return self.terms(factor, {i: subst[i] for i in legs}, dims, legs, depth)
        legs = ir.free_legs(factor, outside)
        inner_subst = {i: subst[i] for i in legs}
        label_html, label_tex, argument = _box_label(factor, subst)
        mark = self.instance_mark()
        if mark:  # which instance's norm or function this is: layernorm⁰, layernorm (ln_final)
            if mark.replace(",", "").isdigit():
                label_html += f"<sup>{dot_text(mark)}</sup>"
                label_tex = label_tex[:-1] + f"^{{{tex_math_name(mark)}}}$"
            else:
                label_html += f" ({dot_text(mark)})"
                label_tex = label_tex[:-1] + rf"\ (\mathrm{{{tex_math_name(mark)}}})$"
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
    """(base, subscript, superscript). One convention for layer numbers: a number is a
    superscript, whether it is a segment of the path or ends the name:
    `blocks.1.attn.W_Q` -> ("W", "Q", "1"); `resid0` -> ("resid", "", "0");
    `blocks.1.x2` -> ("x", "", "1,2")."""
    segments = name.split(".")
    layers = [s for s in segments[:-1] if s.isdigit()]
    last = segments[-1]
    match = re.fullmatch(r"(.*?[^\d_])_?(\d+)", last)
    if match and not last.isdigit():
        last, number = match.group(1), match.group(2)
        layers.append(number)
    base, _, sub = last.partition("_")
    return base or last, sub, ",".join(layers)


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
    return text.replace("**", "^").replace("*", "·")


def coefficient_tex(value: sympy.Expr) -> str:
    """LaTeX for a coefficient, inline as the figure sets it: `1/\\sqrt{\\mathit{Head}}`
    (a dim name is one italic word, not a product of letters). Every name goes through
    the sanitiser, so a dim named with characters LaTeX cannot set (`Größe`) is safe."""
    out = []
    for token in re.findall(r"√|\d+(?:\.\d+)?|\w+|\S", coefficient_text(value)):
        if token == "√":
            out.append(r"\sqrt")
        elif token[0].isdigit():
            out.append(token)
        elif re.fullmatch(r"\w+", token):
            out.append(rf"\mathit{{{tex_math_name(token)}}}")
        else:
            out.append({"·": r"\cdot ", "^": "^", "-": "-", "+": "+", "/": "/", "(": "(",
                        ")": ")"}.get(token, ""))
    # \sqrt and ^ take the next token as their argument: brace it.
    text = "".join(out)
    text = re.sub(r"(\\sqrt|\^)(\\mathit\{[^}]*\}|\d+)", r"\1{\2}", text)
    return text


# ---- entry points ------------------------------------------------------------------------

@dataclass(frozen=True)
class Drawing:
    """What one figure draws: `lhs` (empty for an equation's right-hand side alone) and
    `rhs` as terms, over the open legs `legs`; `dims` maps every index drawn to its dim."""

    name: str
    span: object
    legs: tuple[str, ...]
    lhs: tuple[_Term, ...]
    rhs: tuple[_Term, ...]
    dims: dict


def _too_large(name: str, span) -> ResourceError:
    return ResourceError(f"the figure of `{name}` would draw more than {MAX_DRAWN_TERMS:,} "
                         f"terms or {MAX_DRAWN_TENSORS:,} tensors at this depth", span,
                         hint="draw fewer levels of definitions: --depth N (default 0) "
                              "instead of --expand")


def drawing(program, name: str | None = None, *, depth: int | None = 0,
            lhs_name: bool | str = False, hooks: bool = False) -> Drawing:
    """Equation `name` (default: the final equation) expanded to `depth` (None: down to
    params and inputs). With `lhs_name` the figure reads `name = ...` (or, given a
    string, `that = ...`). With `hooks`, a hook map (see the module's docstring): it
    reads `name = ...`, and names every equation `name` is computed from."""
    equations = {eq.name: eq for eq in program.network.equations}
    if name is None:
        final = program.final
        if final is None:
            raise TnError("the program has no equation to draw")
        name = final.name
    if name not in equations:
        raise UnknownNameError(f"no equation `{name}` to draw",
                               hint=did_you_mean(name, equations))
    eq = equations[name]
    expander = _Expander(program, depth, hooks)
    expander.used.update(eq.indices)
    dims = {leg.name: leg.dim for leg in eq.index_dims}
    expander.dims.update({i: dims[i] for i in eq.indices})
    try:
        terms = expander.terms(eq.rhs, {i: i for i in eq.indices}, dims, set(eq.indices),
                               depth)
    except _TooLarge:
        raise _too_large(name, eq.span) from None
    lhs = ()
    if lhs_name or hooks:
        shown = lhs_name if isinstance(lhs_name, str) else name
        lhs = (_Term(sympy.Integer(1), [_Tensor(shown, "activation", tuple(eq.indices),
                                                 math_label(shown),
                                                 (name,) if hooks else ())]),)
    if hooks:
        _list_hidden_hooks(program, name, lhs, terms)
    return Drawing(name, eq.span, tuple(eq.indices), lhs, tuple(terms), expander.dims)


def _drawn(terms):
    """Every tensor and box drawn, in drawing order (into boxes)."""
    for term in terms:
        for factor in term.factors:
            yield factor
            if isinstance(factor, _Box):
                yield from _drawn(factor.terms)


def _list_hidden_hooks(program, name: str, lhs, terms) -> None:
    """Give each drawn intermediate the hook points hidden inside it: the equations it is
    computed from that are drawn nowhere, reached without passing another drawn one;
    each listed once, on the first intermediate (in drawing order) that hides it, in the
    order the forward pass computes them."""
    equations = {eq.name: eq for eq in program.network.equations}
    order = [eq.name for eq in ir.dependency_order(program.network, [name])]
    drawn = list(_drawn(terms))
    shown = {hook for item in list(_drawn(lhs)) + drawn for hook in item.hooks}
    listed: set[str] = set()
    for item in drawn:
        if not isinstance(item, _Tensor) or item.kind not in ("activation", "instance") \
                or item.name not in equations or not item.hooks:
            continue
        reached, stack = set(), [item.name]
        while stack:
            for ref in ir.refs(equations[stack.pop()].rhs):
                if ref.name in equations and ref.name not in shown \
                        and ref.name not in reached:
                    reached.add(ref.name)
                    stack.append(ref.name)
        hidden = reached - listed
        if hidden:
            item.inside = tuple(hook for hook in order if hook in hidden)
            listed |= hidden


def check_drawing(program, label: str, *, depth: int | None = 0) -> Drawing:
    """Check `label` drawn as `lhs = rhs`, each side expanded to `depth`."""
    checks = {c.label: c for c in program.network.checks}
    if label not in checks:
        raise UnknownNameError(f"no check `{label}` to draw",
                               hint=did_you_mean(label, checks) or
                               ("checks: " + ", ".join(checks) if checks
                                else "the file has no checks"))
    check = checks[label]
    legs = tuple(leg.name for leg in check.legs or ())
    dims = {leg.name: leg.dim for leg in check.index_dims or ()}
    dims.update({leg.name: leg.dim for leg in check.legs or ()})
    expander = _Expander(program, depth)
    expander.used.update(legs)
    expander.dims.update({i: dims[i] for i in legs})
    try:
        sides = [expander.terms(side, {i: i for i in legs}, dims, set(legs), depth)
                 for side in (check.lhs, check.rhs)]
    except _TooLarge:
        raise _too_large(label, check.span) from None
    return Drawing(label, check.span, legs, tuple(sides[0]), tuple(sides[1]), expander.dims)
