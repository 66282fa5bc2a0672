"""Layout: where everything in a figure goes, in points, composed as TeX composes an
equation.

Each term is laid out on its own, as a box with a baseline on its main wire: its tensors
in a row on the baseline, in the order they are written (a factor that carries the
left open leg first, the right one last), so that a wire between neighbours is a
straight piece of the baseline and every other wire runs in a lane below (the nearest
free lane, like a line in an arc diagram), meeting its tensors at a copy dot where
three or more ends meet. A dashed box (a function, softmax, norm or mask) is drawn
around its row and its lanes, with at least BORDER pt between nested borders. Open legs
leave on their side, horizontally, and end at the term's edge.

The equation is then set like a displayed formula: terms, joiners (+, −, =) and
coefficients on one baseline, wrapped before a joiner into rows no wider than `width`.
Sizes follow the font size: wire labels are 0.9 of it, shapes sized to their labels.

In a hook map (tndsl.render.expand's `hooks`), a tensor's hook-point names stand in a
column above it (those hidden inside it first, its own last), its room widened to them,
and a region (an inlined equation) is a box whose label is its name. A lane's label that
a wire drawn after it would cross slides along its lane to a free place.

The result, a `Scene`, is plain frozen data (shapes, wires, texts, and the rows and
terms with their baselines), drawn by tndsl.render.dot and tndsl.render.tikz alike and
measured by the tests.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import sympy

from tndsl.lang.errors import ResourceError, TnError
from tndsl.render import expand
from tndsl.render.expand import coefficient_tex, coefficient_text, label_html, label_tex
from tndsl.render.fonts import Font
from tndsl.lang.text import dot_text, tex_text_name, tex_math_name

BORDER = 6.0            # pt between a box's border and anything inside it (nested boxes too)
MARGIN = 2.0            # pt around the whole figure
MIN_FONT_SIZE = 7.0     # pt: the smallest size a figure is shrunk to, to fit `width`
DEFAULT_FONT_SIZE = 10.0
MIN_SET_FONT_SIZE, MAX_FONT_SIZE = 4.0, 72.0   # pt: the sizes `font_size=` may ask for
# Layout cost: a figure with more shapes and wires than this is refused before layout
# (a figure that size cannot be read at any paper width).
MAX_LAYOUT_ITEMS = 2_000


class LayoutError(TnError):
    """A figure that cannot be laid out as asked: too wide for `width`, bad `legs`."""


# ---- the scene ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    kind: str        # param | fixed | input | activation | instance | copy | ones | box
    x: float         # centre
    y: float
    w: float
    h: float
    label: tuple[str, str, str] | None = None   # a tensor's (base, subscript, superscript)
    name: str = ""   # the IR name (a tooltip in SVG)
    cls: str = ""


@dataclass(frozen=True)
class Text:
    x: float         # centre (anchor "center") or left end (anchor "west")
    y: float         # vertical centre
    w: float
    size: float
    html: str        # for Graphviz
    tex: str         # for LaTeX
    cls: str         # wirelabel | joiner | coefficient | boxlabel | hook | hookinside |
                     # termlabel | sum
    italic: bool = False
    anchor: str = "center"


@dataclass(frozen=True)
class Wire:
    points: tuple[tuple[float, float], ...]
    index: str
    cls: str = "wire"   # wire | leg
    side: str = ""      # a leg's side: left | right


@dataclass(frozen=True)
class TermFrame:
    """Where one term (or the left-hand side) of a row sits: its legs end at x0 and x1."""
    x0: float
    x1: float
    bottom: float
    top: float
    baseline: float
    main_wire: float    # y of the row its tensors sit on


@dataclass(frozen=True)
class Row:
    baseline: float
    x0: float
    x1: float


@dataclass(frozen=True)
class Scene:
    width: float
    height: float
    font: Font
    font_size: float
    comment: str
    shapes: tuple[Shape, ...]
    wires: tuple[Wire, ...]
    texts: tuple[Text, ...]
    rows: tuple[Row, ...]
    terms: tuple[TermFrame, ...]


# ---- working structures ------------------------------------------------------------------

@dataclass(eq=False)
class _Leaf:
    kind: str
    name: str
    label: tuple[str, str, str] | None
    indices: tuple[str, ...]
    w: float
    h: float
    span: float                    # horizontal room it takes (hook labels may be wider)
    scope: "_Scope"
    hooks: tuple[str, ...] = ()    # the hook points it is, named above it
    inside: tuple[str, ...] = ()   # the hook points hidden inside it, listed above those
    x: float = 0.0
    summed: bool = False           # a `ones` on a contracted leg: a labelled sum


@dataclass(eq=False)
class _Mark:
    """A joiner or coefficient inside a box over a sum."""
    text: Text
    w: float
    x: float = 0.0


@dataclass(eq=False)
class _Dot:
    scope: "_Scope"
    cls: str
    x: float = 0.0
    y: float = 0.0


@dataclass(eq=False)
class _End:
    leaf: _Leaf | None = None
    dot: _Dot | None = None

    def point(self) -> tuple[float, float]:
        if self.leaf is not None:
            return self.leaf.x, -self.leaf.h / 2
        return self.dot.x, self.dot.y


@dataclass(eq=False)
class _Hyper:
    index: str
    ends: list[_End]
    dot: _Dot | None = None        # where three or more ends meet
    side: str = ""                 # an open leg's side
    straight: bool = False
    lane: float | None = None
    quiet: bool = False            # labelled once, by the wire it continues as outside
    summed: bool = False           # a sum over this leg (a `ones` on it): its dot is marked Σ


@dataclass(eq=False)
class _Scope:
    parent: "_Scope | None"
    legs: tuple[str, ...] = ()
    label_html: str = ""
    label_tex: str = ""
    label_w: float = 0.0
    hooks: tuple[str, ...] = ()    # a hook map's region: the equations it is
    children: list = field(default_factory=list)
    hypers: list[_Hyper] = field(default_factory=list)
    dots: list[_Dot] = field(default_factory=list)
    x0: float = 0.0
    x1: float = 0.0
    top: float = 0.0
    bottom: float = 0.0

    def ancestors(self):
        scope = self
        while scope is not None:
            yield scope
            scope = scope.parent


class _Sizes:
    def __init__(self, font: Font, size: float):
        self.font, self.fs = font, size
        self.wfs = round(size * 0.9, 2)          # wire labels
        self.node_h = 2.2 * size
        self.dot = max(3.0, 0.42 * size)
        self.pad = max(BORDER, 0.6 * size)
        self.gap = 1.2 * size                     # between neighbours with no label
        self.label_h = 1.2 * self.wfs
        self.lane_gap = self.label_h + 0.45 * size
        self.joiner = 1.3 * size
        # Hook-point names: legible in print, never under 7 pt.
        self.hook = max(MIN_FONT_SIZE, round(0.75 * size, 2))
        self.hook_line = 1.25 * self.hook

    def hook_lines(self, leaf) -> tuple[str, ...]:
        """A tensor's hook labels, top to bottom: those hidden inside it, then its own."""
        return leaf.inside + leaf.hooks

    def text(self, text: str, size: float | None = None, italic: bool = False) -> float:
        return self.font.width(text, size or self.fs, italic)

    def label(self, markup: str) -> float:
        """A box label's width (`softmax<sub><i>s</i></sub>`): its sub- and
        superscripts at 70%, as every format sets them."""
        return sum(self.text(text, 0.7 * self.fs if script else self.fs)
                   for script, text in _label_parts(markup))

    def tensor(self, label) -> float:
        base, sub, sup = label
        return self.text(base, italic=len(base) == 1) + max(
            self.text(sub, 0.7 * self.fs), self.text(sup, 0.7 * self.fs))


# ---- one term ----------------------------------------------------------------------------

class _TermLayout:
    """Lays out one term in local coordinates: baseline y = 0, left edge x = 0."""

    def __init__(self, term, legs: dict[str, str], dims: dict[str, str], sizes: _Sizes,
                 show_indices: bool):
        self.sizes = sizes
        self.dims = dims
        self.legs = legs                 # open leg -> side
        self.root = _Scope(None, tuple(legs))
        self.shapes: list[Shape] = []
        self.wires: list[Wire] = []
        self.texts: list[Text] = []
        self.labelled = self._labelled_indices(term, show_indices)
        self.lane_labels: list[tuple[int, list]] = []   # (text, the runs it may sit on)
        self._build(term.factors, self.root)
        self._connect_term()
        self._place()
        self._route(self.root)
        self._clear_lane_labels()
        self.width = self.root.x1

    # -- which legs carry their index name ------------------------------------------------
    def _labelled_indices(self, term, show_indices: bool) -> set[str]:
        if show_indices:
            return set(self.dims)
        # Legs of one dim with different indices are told apart by their names.
        per_dim: dict[str, set[str]] = {}
        for leg in self.legs:
            per_dim.setdefault(self.dims[leg], set()).add(leg)
        return {i for legs in per_dim.values() if len(legs) > 1 for i in legs}

    def wire_text(self, index: str) -> tuple[str, str, str]:
        dim = self.dims[index]
        if index in self.labelled:
            plain = f"{index}: {dim}"
            tex = (f"${expand._tex_index(index)}\\colon \\mathit{{{tex_math_name(dim)}}}$")
            html_text = f"<I>{dot_text(index)}</I>: <I>{dot_text(dim)}</I>"
        else:
            plain, tex = dim, f"$\\mathit{{{tex_math_name(dim)}}}$"
            html_text = f"<I>{dot_text(dim)}</I>"
        return plain, html_text, tex

    # -- structure ----------------------------------------------------------------------
    def _side_key(self, factor) -> int:
        legs = set(factor.legs if isinstance(factor, expand._Box) else factor.indices)
        if any(self.legs.get(i) == "left" for i in legs):
            return 0
        if any(self.legs.get(i) == "right" for i in legs):
            return 2
        return 1

    def _build(self, factors, scope: _Scope) -> None:
        s = self.sizes
        for factor in sorted(factors, key=self._side_key):
            if isinstance(factor, expand._Box):
                label_html_, label_tex_ = factor.label_html, factor.label_tex
                region = bool(factor.hooks)      # a hook map's region: named, no function
                if len(factor.terms) == 1 and factor.terms[0].coefficient != 1 and not region:
                    # One term with a coefficient: it is set after the box's label, out
                    # of the way of the wires.
                    value = factor.terms[0].coefficient
                    label_html_ += " &#8194; " + dot_text(coefficient_text(value))
                    label_tex_ = label_tex_[:-1] + r"\quad " + coefficient_tex(value) + "$"
                label_w = s.label(label_html_) if not region else \
                    sum(s.text(h, s.hook) for h in factor.hooks) + \
                    (len(factor.hooks) - 1) * s.fs
                box = _Scope(scope, factor.legs, label_html_, label_tex_, label_w,
                             factor.hooks)
                scope.children.append(box)
                for k, term in enumerate(factor.terms):
                    coefficient = term.coefficient
                    if len(factor.terms) > 1 and k > 0:
                        sign = "−" if coefficient.could_extract_minus_sign() else "+"
                        box.children.append(self._mark(sign, "$-$" if sign == "−" else "$+$",
                                                       "joiner", s.joiner))
                        if coefficient.could_extract_minus_sign():
                            coefficient = -coefficient
                    if coefficient != 1 and (len(factor.terms) > 1 or region):
                        box.children.append(self._mark(coefficient_text(coefficient),
                                                       f"${coefficient_tex(coefficient)}$",
                                                       "coefficient", s.fs))
                    self._build(term.factors, box)
                continue
            if factor.kind == "ones":
                leaf = _Leaf("ones", factor.name, None, factor.indices, s.dot, s.dot, s.dot,
                             scope)
            else:
                kind = factor.kind
                text_w = s.tensor(factor.label)
                if kind in ("input", "activation"):
                    w = h = max(s.node_h, text_w + 0.8 * s.fs)
                else:
                    w, h = max(2.4 * s.fs, text_w + 1.1 * s.fs), s.node_h
                lines = factor.inside + factor.hooks
                span = max([w] + [s.text(line, s.hook) + 0.4 * s.fs for line in lines])
                leaf = _Leaf(kind, factor.name, factor.label, factor.indices, w, h, span,
                             scope, factor.hooks, factor.inside)
            scope.children.append(leaf)

    def _mark(self, text: str, tex: str, cls: str, size: float) -> _Mark:
        w = self.sizes.text(text, size)
        space = 0.5 * self.sizes.fs if cls == "joiner" else 0.25 * self.sizes.fs
        return _Mark(Text(0, 0, w, size, dot_text(text), tex, cls), w + 2 * space)

    # -- wires: one hyperedge per index, per scope ---------------------------------------
    def _gather(self, scope: _Scope) -> dict[str, list[_End]]:
        occurrences: dict[str, list[_End]] = {}
        for child in scope.children:
            if isinstance(child, _Leaf):
                for index in child.indices:
                    occurrences.setdefault(index, []).append(_End(leaf=child))
            elif isinstance(child, _Scope):
                for index, ends in self._connect_box(child).items():
                    occurrences.setdefault(index, []).extend(ends)
        return occurrences

    def _connect_box(self, box: _Scope) -> dict[str, list[_End]]:
        """The box's wires inside it; for each of its legs, the ends it shows outside:
        a leg met twice or more inside meets at a dot inside and leaves as one wire."""
        shown = {}
        for index, ends in self._gather(box).items():
            if index in box.legs and len(ends) >= 2:
                dot = _Dot(box, "copy")
                box.dots.append(dot)
                box.hypers.append(_Hyper(index, ends, dot, quiet=True))
                shown[index] = [_End(dot=dot)]
            elif index in box.legs:
                shown[index] = ends
            else:
                box.hypers.append(self._summed(_Hyper(index, ends)))
        return shown

    def _summed(self, hyper: _Hyper) -> _Hyper:
        """A contracted leg with a `ones` on it is a sum over that leg: where two or more
        other ends meet, the ones goes and their copy dot is marked Σ; else the ones
        stays, as a dot marked Σ."""
        ones = [e for e in hyper.ends if e.leaf is not None and e.leaf.kind == "ones"
                and len(e.leaf.indices) == 1]
        others = [e for e in hyper.ends if e not in ones]
        if not ones:
            return hyper
        if len(others) >= 2:
            for end in ones:
                end.leaf.scope.children.remove(end.leaf)
            hyper.ends = others
            hyper.summed = True
        else:
            for end in ones:
                end.leaf.summed = True
        return hyper

    def _connect_term(self) -> None:
        for index, ends in self._gather(self.root).items():
            if index in self.legs:
                self.root.hypers.append(_Hyper(index, ends, side=self.legs[index]))
            else:
                self.root.hypers.append(self._summed(_Hyper(index, ends)))
        # Which wires are straight pieces of the baseline.
        leaves = [t for t in self._tokens(self.root) if isinstance(t, _Leaf)]
        self.leaves = leaves
        position = {id(leaf): k for k, leaf in enumerate(leaves)}
        east, west = set(), set()
        self.ports: dict[tuple[int, str], list[_Hyper]] = {}
        for scope in self._scopes(self.root):
            for hyper in scope.hypers:
                if hyper.side or hyper.dot is not None or len(hyper.ends) != 2:
                    continue
                a, b = hyper.ends
                if a.leaf is None or b.leaf is None:
                    continue
                pa, pb = position[id(a.leaf)], position[id(b.leaf)]
                if abs(pa - pb) != 1:
                    continue
                left, right = (a.leaf, b.leaf) if pa < pb else (b.leaf, a.leaf)
                if id(left) in east or id(right) in west or self._marks_between(left, right):
                    continue
                east.add(id(left))
                west.add(id(right))
                hyper.straight = True
                hyper.ends = [_End(leaf=left), _End(leaf=right)]
        for hyper in self.root.hypers:
            if not hyper.side or len(hyper.ends) != 1 or hyper.ends[0].leaf is None:
                continue
            leaf = hyper.ends[0].leaf
            if hyper.side == "left" and leaf is leaves[0] and id(leaf) not in west:
                hyper.straight = True
                self.ports.setdefault((id(leaf), "left"), []).append(hyper)
            elif hyper.side == "right" and leaf is leaves[-1] and id(leaf) not in east:
                hyper.straight = True
                self.ports.setdefault((id(leaf), "right"), []).append(hyper)

    def _marks_between(self, left: _Leaf, right: _Leaf) -> bool:
        tokens = self._tokens(self.root)
        a = next(k for k, t in enumerate(tokens) if t is left)
        b = next(k for k, t in enumerate(tokens) if t is right)
        return any(isinstance(t, _Mark) for t in tokens[a:b])

    def _tokens(self, scope: _Scope) -> list:
        out = []
        for child in scope.children:
            if isinstance(child, _Scope):
                out.append(("open", child))
                out.extend(self._tokens(child))
                out.append(("close", child))
            else:
                out.append(child)
        return out

    def _scopes(self, scope: _Scope):
        for child in scope.children:
            if isinstance(child, _Scope):
                yield from self._scopes(child)
        yield scope   # innermost first: a box's lanes are placed before its parent's

    # -- horizontal placement ------------------------------------------------------------
    def _straight_between(self, a, b) -> _Hyper | None:
        """The straight wire (or leg) drawn between solid tokens a and b."""
        if a == "edge" and isinstance(b, _Leaf):
            legs = self.ports.get((id(b), "left"), [])
            return legs[0] if legs else None
        if isinstance(a, _Leaf) and b == "edge":
            legs = self.ports.get((id(a), "right"), [])
            return legs[0] if legs else None
        if isinstance(a, _Leaf) and isinstance(b, _Leaf):
            for scope in self._scopes(self.root):
                for hyper in scope.hypers:
                    if hyper.straight and not hyper.side and hyper.ends[0].leaf is a \
                            and hyper.ends[1].leaf is b:
                        return hyper
        return None

    def _place(self) -> None:
        s = self.sizes
        tokens = ["edge"] + self._tokens(self.root) + ["edge"]
        solid = [k for k, t in enumerate(tokens) if not isinstance(t, tuple)]
        self.labels_at: dict[int, tuple[float, float]] = {}   # id(hyper) -> label x range
        depth = 0
        cursor = 0.0
        need_at_edge = {side: max((s.text(self.wire_text(h.index)[0], s.wfs, True)
                                   + 0.8 * s.fs for h in self.root.hypers if h.side == side),
                                  default=0.0) for side in ("left", "right")}
        self.edge_gap: dict = {}
        edge_ranges: dict = {}
        has_leg = {"left": any(h.side == "left" for h in self.root.hypers),
                   "right": any(h.side == "right" for h in self.root.hypers)}
        for n, k in enumerate(solid):
            token = tokens[k]
            if isinstance(token, _Leaf):
                token.x = cursor + token.span / 2
                cursor += token.span
            elif isinstance(token, _Mark):
                token.x = cursor + token.w / 2
                cursor += token.w
            if n + 1 == len(solid):
                break
            nxt = tokens[solid[n + 1]]
            borders = tokens[k + 1:solid[n + 1]]
            depths, d = [depth], depth
            for kind, _ in borders:
                d += 1 if kind == "open" else -1
                depths.append(d)
            wire = self._straight_between(token, nxt)
            if token == "edge" or nxt == "edge":
                side = "left" if token == "edge" else "right"
                base = s.gap if has_leg[side] else 0.0
            elif isinstance(token, _Mark) or isinstance(nxt, _Mark):
                base = 0.2 * s.fs
            else:
                base = s.gap
            widths = [s.pad if borders else base] * (len(borders) + 1)
            if not borders:
                widths = [base]
            chosen = None
            if wire is not None:
                need = s.text(self.wire_text(wire.index)[0], s.wfs, True) + 0.8 * s.fs
                outer = min(depths)
                chosen = max(j for j, dd in enumerate(depths) if dd == outer)
                widths[chosen] = max(widths[chosen], need)
            elif borders and (token == "edge" or nxt == "edge") and not has_leg[
                    "left" if token == "edge" else "right"]:
                widths[0 if token == "edge" else -1] = 0.0
            if token == "edge" or nxt == "edge":
                # Room at the edge for the label of every leg on this side.
                side = "left" if token == "edge" else "right"
                j = 0 if side == "left" else len(widths) - 1
                widths[j] = max(widths[j], need_at_edge[side])
                self.edge_gap[side] = j
            cursor += widths[0]
            start = cursor - widths[0]
            ranges = []
            for j, (kind, box) in enumerate(borders):
                if kind == "open":
                    box.x0 = cursor
                else:
                    cursor = max(cursor, box.x0 + box.label_w + 2 * s.pad)
                    box.x1 = cursor
                ranges.append((start, cursor))
                start = cursor
                cursor += widths[j + 1]
            ranges.append((start, cursor))
            if wire is not None:
                self.labels_at[id(wire)] = ranges[chosen]
            if token == "edge" or nxt == "edge":
                side = "left" if token == "edge" else "right"
                edge_ranges[side] = ranges[self.edge_gap[side]]
            depth = depths[-1]
        self.root.x0, self.root.x1 = 0.0, cursor
        self.edge_ranges = edge_ranges

    # -- wires and lanes ----------------------------------------------------------------
    def _route(self, scope: _Scope) -> None:
        for child in scope.children:
            if isinstance(child, _Scope):
                self._route(child)
        s = self.sizes
        straight = [h for h in scope.hypers if h.straight]
        for hyper in straight:
            self._draw_straight(hyper)
        routed = [h for h in scope.hypers if not h.straight and not self._dangling(h)]
        routed.sort(key=lambda h: self._extent(h, scope)[1] - self._extent(h, scope)[0])
        for hyper in routed:
            x0, x1 = self._extent(hyper, scope)
            transparent = {id(sc) for end in hyper.ends
                           for sc in (end.leaf.scope if end.leaf else end.dot.scope).ancestors()}
            skip = {id(end.dot) for end in hyper.ends if end.dot is not None}
            floor = min((bottom for a, b, bottom in self._obstacles(scope, transparent, skip)
                         if b > x0 - 2 and a < x1 + 2), default=-s.node_h / 2)
            lane = floor - s.lane_gap
            dots = [end.dot.y for end in hyper.ends if end.dot is not None]
            if dots:
                lane = min(lane, min(dots))
            if self._leaves_level(hyper, scope, transparent, skip):
                lane = hyper.ends[0].dot.y
            hyper.lane = lane
            self._draw_lane(hyper, scope, x0, x1)
        # The box (or term) around all of it.
        bottoms = [-c.h / 2 for c in scope.children if isinstance(c, _Leaf)]
        bottoms += [c.bottom for c in scope.children if isinstance(c, _Scope)]
        bottoms += [h.lane - (s.label_h + 2 if h.dot is not None and not self._has_run(h)
                              else 0) - (1.3 * s.fs if h.summed else 0) for h in routed]
        bottoms += [d.y - s.dot / 2 for d in scope.dots]
        tops = [c.h / 2 + (0.25 * s.fs + len(s.hook_lines(c)) * s.hook_line
                           if s.hook_lines(c) else 0) + (1.2 * s.fs if c.summed else 0)
                for c in scope.children if isinstance(c, _Leaf)]
        tops += [c.top for c in scope.children if isinstance(c, _Scope)]
        tops += [s.label_h + 1.5 for h in straight]
        tops += [0.6 * s.fs]
        if scope.parent is None:
            scope.bottom, scope.top = min(bottoms, default=-s.node_h / 2), max(tops)
        else:
            scope.bottom = min(bottoms, default=-s.node_h / 2) - s.pad
            scope.top = max(tops) + 1.2 * s.fs + 0.3 * s.fs
            self.shapes.append(Shape("box", (scope.x0 + scope.x1) / 2,
                                     (scope.top + scope.bottom) / 2, scope.x1 - scope.x0,
                                     scope.top - scope.bottom,
                                     cls="hookbox" if scope.hooks else "box"))
            y = scope.top - 0.3 * s.fs - 0.6 * s.fs
            if not scope.hooks:
                self.texts.append(Text(scope.x0 + s.pad, y, scope.label_w, s.fs,
                                       scope.label_html, scope.label_tex, "boxlabel",
                                       anchor="west"))
            x = scope.x0 + s.pad
            for hook in scope.hooks:   # a region's names, in a row
                self.texts.append(_hook_text(s, hook, x, y, "hook", anchor="west"))
                x += s.text(hook, s.hook) + s.fs

    def _leaves_level(self, hyper: _Hyper, scope: _Scope, transparent: set[int],
                      skip: set[int]) -> bool:
        """Whether an open leg that leaves a box from a dot inside it (the box's leg, met
        twice or more inside) can run level from that dot to the edge, through the box's
        side: nothing between the dot and the edge reaches down to the dot's height."""
        if not hyper.side or len(hyper.ends) != 1 or hyper.ends[0].dot is None:
            return False
        dot = hyper.ends[0].dot
        if hyper.side == "left":
            a, b = self.root.x0, dot.x - self.sizes.dot
        else:
            a, b = dot.x + self.sizes.dot, self.root.x1
        room = self.sizes.label_h + 2
        return all(bottom > dot.y + room for x0, x1, bottom in
                   self._obstacles(scope, transparent, skip) if x1 > a and x0 < b)

    def _dangling(self, hyper: _Hyper) -> bool:
        # A contracted leg met once (only `ones`): the dot is the whole drawing.
        return not hyper.side and hyper.dot is None and len(hyper.ends) == 1

    def _has_run(self, hyper: _Hyper) -> bool:
        xs = [end.point()[0] for end in hyper.ends]
        return hyper.dot is not None and (max(xs) - min(xs)) > 4 * self.sizes.fs

    def _extent(self, hyper: _Hyper, scope: _Scope) -> tuple[float, float]:
        xs = [end.point()[0] for end in hyper.ends]
        if hyper.side == "left":
            xs.append(self.root.x0)
        elif hyper.side == "right":
            xs.append(self.root.x1)
        return min(xs), max(xs)

    def _obstacles(self, scope: _Scope, transparent: set[int], skip: set[int]):
        s = self.sizes
        for child in scope.children:
            if isinstance(child, _Leaf):
                yield child.x - child.w / 2, child.x + child.w / 2, -child.h / 2
            elif isinstance(child, _Mark):
                yield child.x - child.w / 2, child.x + child.w / 2, -0.6 * s.fs
            elif id(child) in transparent:
                yield from self._obstacles(child, transparent, skip)
            else:
                yield child.x0, child.x1, child.bottom
        for hyper in scope.hypers:
            if hyper.lane is not None and not (hyper.dot is not None and id(hyper.dot) in skip):
                x0, x1 = self._extent(hyper, scope)
                yield x0, x1, hyper.lane - (1.3 * s.fs if hyper.summed else 0)

    def _dot_x(self, hyper: _Hyper, scope: _Scope) -> float:
        s = self.sizes
        xs = [end.point()[0] for end in hyper.ends]
        x = sum(xs) / len(xs)
        side = self.legs.get(hyper.index) if hyper.quiet or hyper.side else None
        if side == "left":     # where the leg leaves: its wire runs on straight from it
            x = min(xs) - (0 if hyper.quiet else s.fs)
        elif side == "right":
            x = max(xs) + (0 if hyper.quiet else s.fs)
        if scope.parent is not None:
            x = min(max(x, scope.x0 + s.pad + s.dot), scope.x1 - s.pad - s.dot)
        borders = sorted(b for sc in self._scopes(self.root) if sc.parent is not None
                         for b in (sc.x0, sc.x1))
        for border in borders:
            if abs(x - border) < s.dot + 3:
                x = border + (s.dot + 3 if x >= border else -(s.dot + 3))
        return x

    def _draw_straight(self, hyper: _Hyper) -> None:
        s = self.sizes
        plain, html_text, tex = self.wire_text(hyper.index)
        if hyper.side:
            leaf = hyper.ends[0].leaf
            legs = self.ports[(id(leaf), hyper.side)]
            offset = -0.28 * leaf.h * legs.index(hyper)
            x = self._attach(leaf, hyper.side, offset)
            edge = self.root.x0 if hyper.side == "left" else self.root.x1
            points = ((edge, offset), (x, offset)) if hyper.side == "left" else \
                ((x, offset), (edge, offset))
            self.wires.append(Wire(points, hyper.index, "leg", hyper.side))
            a, b = self.labels_at.get(id(hyper), (min(edge, x), max(edge, x)))
            if legs.index(hyper) == 0:
                self._wire_label(plain, html_text, tex, (a + b) / 2, offset)
            else:  # a second leg on one side: its label beside it, at the edge
                self._wire_label(plain, html_text, tex, (a + b) / 2,
                                 offset - s.label_h - 1.5)
            return
        left, right = hyper.ends[0].leaf, hyper.ends[1].leaf
        self.wires.append(Wire(((self._attach(left, "right", 0), 0.0),
                                (self._attach(right, "left", 0), 0.0)), hyper.index))
        a, b = self.labels_at.get(id(hyper), (left.x, right.x))
        self._wire_label(plain, html_text, tex, (a + b) / 2, 0.0)

    def _attach(self, leaf: _Leaf, side: str, dy: float) -> float:
        sign = -1 if side == "left" else 1
        if leaf.kind in ("input", "activation"):
            r = leaf.w / 2
            return leaf.x + sign * (max(r * r - dy * dy, 0) ** 0.5)
        return leaf.x + sign * leaf.w / 2

    def _wire_label(self, plain, html_text, tex, x, y, below: bool = False) -> None:
        s = self.sizes
        dy = -(s.label_h / 2 + 1.5) if below else s.label_h / 2 + 1.5
        self.texts.append(Text(x, y + dy, s.text(plain, s.wfs, True), s.wfs, html_text, tex,
                               "wirelabel", italic=True))

    def _draw_lane(self, hyper: _Hyper, scope: _Scope, x0: float, x1: float) -> None:
        s = self.sizes
        lane = hyper.lane
        plain, html_text, tex = self.wire_text(hyper.index)
        runs: list[tuple[float, float]] = []   # horizontal pieces on the lane

        def to(point, x_target):
            """From an end down to the lane, toward x_target."""
            px, py = point
            drop = py - lane
            if drop <= 0.5:
                return [(px, lane)]
            if abs(x_target - px) <= drop * 1.2:
                return [(px, py)]
            step = drop if x_target > px else -drop
            return [(px, py), (px + step, lane)]

        ends = sorted((end.point() for end in hyper.ends), key=lambda p: p[0])
        meet = None
        if hyper.dot is not None or len(ends) >= 3 or (hyper.side and len(ends) >= 2) \
                or hyper.summed:
            if hyper.dot is None:
                hyper.dot = _Dot(scope, "copy")
                scope.dots.append(hyper.dot)
            hyper.dot.x, hyper.dot.y = self._dot_x(hyper, scope), lane
            meet = (hyper.dot.x, lane)
            for point in ends:
                path = to(point, meet[0]) + [meet]
                self.wires.append(Wire(tuple(path), hyper.index))
                if path[-2][1] == lane:
                    runs.append((min(path[-2][0], meet[0]), max(path[-2][0], meet[0])))
            self.shapes.append(Shape("copy", meet[0], lane, s.dot, s.dot,
                                     cls=hyper.dot.cls))
            if hyper.summed:
                self.texts.append(Text(meet[0], lane - s.dot / 2 - 0.65 * s.fs, s.text("Σ"),
                                       s.fs, "Σ", r"$\Sigma$", "sum"))
        if hyper.side:
            edge = self.root.x0 if hyper.side == "left" else self.root.x1
            if meet is None:
                path = to(ends[0], edge)
                start = path[-1] if path[-1][1] == lane else (path[-1][0], lane)
                if path[-1][1] != lane:
                    path.append(start)
                points = path + [(edge, lane)]
            else:
                points = [meet, (edge, lane)]
            if hyper.side == "left":
                points = points[::-1]
            self.wires.append(Wire(tuple(points), hyper.index, "leg", hyper.side))
            runs.append((min(points[0][0], points[-1][0]), max(points[0][0], points[-1][0])))
        elif meet is None and len(ends) == 2:
            (ax, ay), (bx, by) = ends
            da, db = max(ay - lane, 0), max(by - lane, 0)
            mid = (ax + bx) / 2
            pa, pb = min(ax + da, mid), max(bx - db, mid)
            points = [(ax, ay), (pa, lane), (pb, lane), (bx, by)]
            self.wires.append(Wire(tuple(_dedupe(points)), hyper.index))
            runs.append((pa, pb))
        if hyper.quiet:
            return
        if hyper.side and hyper.side in self.edge_ranges:
            a, b = self.edge_ranges[hyper.side]
            self._wire_label(plain, html_text, tex, (a + b) / 2, lane)
            self.lane_labels.append((len(self.texts) - 1, runs))
        elif runs and max(b - a for a, b in runs) >= s.text(plain, s.wfs, True) + 2:
            a, b = max(runs, key=lambda r: r[1] - r[0])
            self._wire_label(plain, html_text, tex, (a + b) / 2, lane)
            self.lane_labels.append((len(self.texts) - 1, runs))
        else:  # no room along the lane: under the dot
            x = meet[0] if meet else (x0 + x1) / 2
            self._wire_label(plain, html_text, tex, x, lane - s.dot / 2, below=True)

    # -- labels clear of wires drawn later ----------------------------------------------
    def _clear_lane_labels(self) -> None:
        """A lane's label is placed when its lane is drawn; a wire drawn later (a longer
        lane's drop) may cross it. Such a label slides along its lane's horizontal runs
        to the place nearest where it was that no wire crosses and nothing else covers,
        above the lane or else under it (within the term); where there is none, it
        stays."""
        s = self.sizes
        for k, runs in self.lane_labels:
            label = self.texts[k]
            half = label.w / 2 + 1
            under = label.y - s.label_h - 3          # as far under the lane as it was over
            levels = [label.y] + ([under] if under - label.size / 2 >= self.root.bottom
                                  else [])
            # What the label could meet anywhere it may go, gathered once.
            region = (min([a for a, _ in runs] + [label.x]) - half, min(levels) - label.size,
                      max([b for _, b in runs] + [label.x]) + half, label.y + label.size)
            near = self._obstacles_in(region, k)
            if not _covered(_text_box(label), near):
                continue
            spots = []
            for a, b in runs:
                steps = max(int((b - a - 2 * half) // 2), 0)
                spots += [a + half + 2 * j for j in range(steps + 1) if a + half <= b - half]
            spots.sort(key=lambda x: (abs(x - label.x), x))
            for y in levels:
                moved = next((m for m in (Text(round(x, 2), y, label.w, label.size,
                                               label.html, label.tex, label.cls,
                                               label.italic, label.anchor) for x in spots)
                              if not _covered(_text_box(m), near)), None)
                if moved is not None:
                    self.texts[k] = moved
                    break

    def _obstacles_in(self, region, k: int):
        """What a label (text `k`) inside `region` could meet (term-local coordinates):
        (wire segments, rectangles it must not meet, box borders it must not cross)."""
        def near(box):
            return _meets(box, region)
        segments = [(p, q) for wire in self.wires for p, q in zip(wire.points, wire.points[1:])
                    if near((min(p[0], q[0]), min(p[1], q[1]), max(p[0], q[0]) + 0.01,
                             max(p[1], q[1]) + 0.01))]
        solids = [(leaf.x - leaf.w / 2, -leaf.h / 2, leaf.x + leaf.w / 2, leaf.h / 2)
                  for leaf in self.leaves]
        solids += [_text_box(other) for j, other in enumerate(self.texts) if j != k]
        borders = []
        for shape in self.shapes:
            box = (shape.x - shape.w / 2, shape.y - shape.h / 2,
                   shape.x + shape.w / 2, shape.y + shape.h / 2)
            (borders if shape.kind == "box" else solids).append(box)
        return (segments, [b for b in solids if near(b)], [b for b in borders if near(b)])

    # -- output -------------------------------------------------------------------------
    def emit(self, dx: float, dy: float, shapes, wires, texts, reach: float = 0.0) -> None:
        """Add the term's shapes, wires and texts at (dx, dy); its open legs reach `reach`
        pt further out, to the edge of the room the term takes (a wider term label)."""
        s = self.sizes
        for leaf in self.leaves:
            if leaf.kind == "ones":
                shapes.append(Shape("ones", leaf.x + dx, dy, leaf.w, leaf.h, None, leaf.name,
                                    "ones"))
                if leaf.summed:
                    texts.append(Text(leaf.x + dx, dy + leaf.h / 2 + 0.7 * s.fs,
                                      s.text("Σ"), s.fs, "Σ", r"$\Sigma$", "sum"))
                continue
            shapes.append(Shape(leaf.kind, leaf.x + dx, dy, leaf.w, leaf.h, leaf.label,
                                leaf.name, f"tensor {leaf.kind}"))
            lines = s.hook_lines(leaf)
            for k, hook in enumerate(reversed(lines)):   # upwards from the tensor
                texts.append(_hook_text(s, hook, leaf.x + dx, dy + leaf.h / 2 + 0.25 * s.fs
                                        + (k + 0.5) * s.hook_line,
                                        "hook" if hook in leaf.hooks else "hookinside"))
        for token in self._tokens(self.root):
            if isinstance(token, _Mark):
                t = token.text
                texts.append(Text(token.x + dx, dy, t.w, t.size, t.html, t.tex, t.cls))
        for shape in self.shapes:
            shapes.append(_moved(shape, dx, dy))
        for wire in self.wires:
            points = [(x + dx, y + dy) for x, y in wire.points]
            if wire.cls == "leg" and wire.side == "left":
                points[0] = (points[0][0] - reach, points[0][1])
            elif wire.cls == "leg":
                points[-1] = (points[-1][0] + reach, points[-1][1])
            wires.append(Wire(tuple(points), wire.index, wire.cls, wire.side))
        for text in self.texts:
            texts.append(Text(text.x + dx, text.y + dy, text.w, text.size, text.html, text.tex,
                              text.cls, text.italic, text.anchor))


def _hook_text(s: _Sizes, hook: str, x: float, y: float, cls: str,
               anchor: str = "center") -> Text:
    """A hook point's name (`blocks.0.attn.pattern`), upright in the figure's face: the
    same widths in every format."""
    return Text(x, y, s.text(hook, s.hook), s.hook, dot_text(hook), tex_text_name(hook),
                cls, anchor=anchor)


def _label_parts(markup: str) -> list[tuple[bool, str]]:
    """A box label's text in pieces: (whether a sub- or superscript, plain text)."""
    parts = []
    for match in re.finditer(r"<(sub|sup)>(.*?)</\1>|([^<]+)|<[^>]*>", markup):
        if match.group(2) is not None:
            parts.append((True, html.unescape(re.sub(r"<[^>]+>", "", match.group(2)))))
        elif match.group(3) is not None:
            parts.append((False, html.unescape(match.group(3))))
    return parts


def _text_box(text: Text) -> tuple[float, float, float, float]:
    """A text's extent: as wide as measured, as tall as its size, around its centre."""
    x0 = text.x if text.anchor == "west" else text.x - text.w / 2
    return x0, text.y - text.size / 2, x0 + text.w, text.y + text.size / 2


def _meets(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _segment_meets(r, p, q) -> bool:
    """Whether segment pq passes through rectangle r (Liang–Barsky clipping)."""
    (x0, y0), (x1, y1) = p, q
    t0, t1 = 0.0, 1.0
    for step, room in ((x0 - x1, x0 - r[0]), (x1 - x0, r[2] - x0),
                       (y0 - y1, y0 - r[1]), (y1 - y0, r[3] - y0)):
        if step == 0:
            if room < 0:
                return False
            continue
        t = room / step
        if step < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def _covered(r, obstacles) -> bool:
    """Whether rectangle `r` meets a wire segment or a solid, or crosses a box border."""
    segments, solids, borders = obstacles
    return any(_segment_meets(r, p, q) for p, q in segments) or \
        any(_meets(r, b) for b in solids) or \
        any(_meets(r, b) and not (b[0] <= r[0] and r[2] <= b[2] and b[1] <= r[1]
                                  and r[3] <= b[3]) for b in borders)


def _moved(shape: Shape, dx: float, dy: float) -> Shape:
    return Shape(shape.kind, shape.x + dx, shape.y + dy, shape.w, shape.h, shape.label,
                 shape.name, shape.cls)


def _dedupe(points):
    out = []
    for p in points:
        if not out or abs(out[-1][0] - p[0]) > 1e-6 or abs(out[-1][1] - p[1]) > 1e-6:
            out.append(p)
    return out


# ---- legs --------------------------------------------------------------------------------

def _first_meetings(term) -> dict[str, int]:
    """Index -> the position (in writing order, into boxes) of the first tensor it meets."""
    order: dict[str, int] = {}

    def walk(factors):
        for factor in factors:
            if isinstance(factor, expand._Box):
                for inner in factor.terms:
                    walk(inner.factors)
            else:
                position = walk.count
                walk.count += 1
                for index in factor.indices:
                    order.setdefault(index, position)
    walk.count = 0
    walk(term.factors)
    return order


def parse_legs(spec: str) -> dict[str, str]:
    """`--legs LEFT/RIGHT`: comma-separated indices leaving on each side ("p/m", "h,p/s",
    "/p,m", "p,m/"), as {index: "left" | "right"}. Only the syntax is checked here (an
    index on both sides, twice, or not a name); whether each is an open leg, when the
    equation is known (`leg_sides`)."""
    example = "e.g. p/m, h,p/s or /p,m"
    if spec.count("/") != 1:
        raise LayoutError(f"--legs `{spec}`: write LEFT/RIGHT, the open legs leaving on "
                          f"each side, comma-separated ({example})")
    sides: dict[str, str] = {}
    for side, names in zip(("left", "right"), spec.split("/")):
        items = [name.strip() for name in names.split(",")]
        if items == [""]:
            continue       # no leg on this side
        for name in items:
            if not re.fullmatch(r"[^\W\d]\w*'*", name):
                shown = f"`{name}` is not an index name" if name else "an empty name"
                raise LayoutError(f"--legs `{spec}`: {shown} ({example})")
            if name in sides:
                where = "on both sides" if sides[name] != side else "twice"
                raise LayoutError(f"--legs `{spec}`: `{name}` is given {where}; give each "
                                  f"open leg one side")
            sides[name] = side
    return sides


def leg_sides(legs: tuple[str, ...], spec, first_term=None, span=None) -> dict[str, str]:
    """Each open leg's side. Default: the first leg left, the others right. `spec`
    overrides it: "LEFT/RIGHT" with comma-separated indices ("p/m", "p,m/", "/p,m"), or
    a dict {index: "left" | "right"}. A bad spec is an error located at `span` (the
    equation drawn), listing the open legs."""
    if spec is None:
        # The first left, the last right; one between goes to the side nearer where the
        # first term first meets it (the same side in every term).
        order = _first_meetings(first_term) if first_term is not None else {}
        count = max(order.values(), default=0) + 1
        return {leg: "left" if k == 0 else "right" if k == len(legs) - 1 else
                ("left" if order.get(leg, count) < count / 2 else "right")
                for k, leg in enumerate(legs)}
    listed = f"the open legs are: {', '.join(legs) or 'none'}"
    if isinstance(spec, str):
        try:
            spec = parse_legs(spec)
        except LayoutError as e:
            raise LayoutError(e.message, span, hint=listed) from None
    sides = dict(spec)
    unknown = [i for i in sides if i not in legs]
    bad = [v for v in sides.values() if v not in ("left", "right")]
    if unknown or bad:
        what = (f"`{unknown[0]}` is not an open leg of the figure" if unknown
                else f"side `{bad[0]}` is not left or right")
        raise LayoutError(f"--legs: {what}; {listed}", span)
    missing = [i for i in legs if i not in sides]
    if missing:
        raise LayoutError(f"--legs: give a side to every open leg; missing: "
                          f"{', '.join(missing)} ({listed})", span)
    return {leg: sides[leg] for leg in legs}


# ---- the equation ------------------------------------------------------------------------

def count_items(drawing: expand.Drawing) -> int:
    """Shapes and wires the layout would draw: tensors, boxes and one wire per index
    occurrence, counted before anything is placed."""
    def factors(items):
        total = 0
        for factor in items:
            if isinstance(factor, expand._Box):
                total += 2 + sum(factors(t.factors) + 1 for t in factor.terms)
            else:
                total += 1 + len(factor.indices)
        return total
    return sum(factors(t.factors) + 2 for t in drawing.lhs + drawing.rhs)


def layout(drawing: expand.Drawing, font: Font, *, width: float | None = None,
           font_size: float | None = None, legs=None, indices: bool = False,
           term_labels=None, comment: str = "") -> Scene:
    """The scene of `drawing`. `width` (pt) wraps the sum into rows; when the font size
    is not given, a figure too wide at 10 pt is set smaller, down to 7 pt, to fit."""
    items = count_items(drawing)
    if items > MAX_LAYOUT_ITEMS:
        raise ResourceError(f"the figure of `{drawing.name}` would draw {items:,} shapes and "
                            f"wires (at most {MAX_LAYOUT_ITEMS:,} are laid out)", drawing.span,
                            hint="draw fewer levels of definitions (--depth N, default 0): "
                                 "a figure this size cannot be read at any --width")
    sides = leg_sides(drawing.legs, legs, (drawing.rhs + drawing.lhs or (None,))[0],
                      drawing.span)
    sizes = [font_size] if font_size is not None else \
        [DEFAULT_FONT_SIZE - 0.5 * k for k in range(int((DEFAULT_FONT_SIZE - MIN_FONT_SIZE)
                                                         / 0.5) + 1)]
    if font_size is not None and not MIN_SET_FONT_SIZE <= font_size <= MAX_FONT_SIZE:
        raise LayoutError(f"font size {font_size:g} pt is out of range "
                          f"({MIN_SET_FONT_SIZE:g} to {MAX_FONT_SIZE:g} pt)")
    for size in sizes:
        scene, widest = _compose(drawing, font, size, width, sides, indices, term_labels,
                                 comment)
        if scene is not None:
            return scene
    raise LayoutError(
        f"the figure of `{drawing.name}` does not fit in {width / 72:.2f} in: its widest "
        f"term needs {widest / 72:.2f} in at {sizes[-1]:g} pt", drawing.span,
        hint="draw fewer levels of definitions (--depth), give a wider --width, or a "
             "smaller --font-size")


def _compose(drawing, font, size, width, sides, indices, term_labels, comment):
    s = _Sizes(font, size)
    units = []        # (kind, payload, width, top, bottom, glue_to_next)
    one = sympy.Integer(1)

    def term_unit(term, label=None):
        laid = _TermLayout(term, sides, drawing.dims, s, indices)
        bottom = laid.root.bottom
        label_text = None
        if label:
            label_size = round(0.85 * size, 2)
            label_text = (label, s.text(label, label_size, True), label_size)
            bottom -= 1.5 * label_size
        return laid, max(laid.width, label_text[1] if label_text else 0), laid.root.top, \
            bottom, label_text

    if drawing.lhs:
        for k, term in enumerate(drawing.lhs):
            if k:
                units.append(_joiner(s, term.coefficient))
            if (term.coefficient if not k else abs(term.coefficient)) != one:
                units.append(_coefficient(s, term.coefficient if not k else
                                          abs(term.coefficient)))
            units.append(("term", *term_unit(term)))
        units.append(_joiner(s, None, "="))
    for k, term in enumerate(drawing.rhs):
        coefficient = term.coefficient
        if k or (drawing.lhs and coefficient.could_extract_minus_sign()):
            units.append(_joiner(s, coefficient))
            if coefficient.could_extract_minus_sign():
                coefficient = -coefficient
        if coefficient != 1 or not term.factors:
            units.append(_coefficient(s, coefficient))
        label = term_labels[k] if term_labels and k < len(term_labels) else None
        units.append(("term", *term_unit(term, label)))

    # Break before a joiner (as TeX does in displays); a coefficient stays with its term,
    # `=` with the left-hand side.
    groups, current = [], []
    for unit in units:
        if unit[0] == "joiner" and current and current[-1][0] != "joiner" and \
                unit[1][0].tex != "$=$":
            groups.append(current)
            current = []
        current.append(unit)
    if current:
        groups.append(current)
    limit = None if width is None else width - 2 * MARGIN
    widest = max(sum(u[2] for u in g) for g in groups)
    if limit is not None and widest > limit:
        return None, widest + 2 * MARGIN
    rows, row = [], []
    for group in groups:
        row_w = sum(u[2] for g in row for u in g)
        group_w = sum(u[2] for u in group)
        if row and limit is not None and row_w + group_w > limit:
            rows.append(row)
            row = []
        row.append(group)
    rows.append(row)

    shapes, wires, texts, row_geometry, terms = [], [], [], [], []
    baseline = 0.0
    previous_bottom = None
    for r, row in enumerate(rows):
        units_in_row = [u for g in row for u in g]
        top = max(u[3] for u in units_in_row)
        bottom = min(u[4] for u in units_in_row)
        if previous_bottom is not None:
            baseline = previous_bottom - 1.2 * size - top
        x = 0.0
        for unit in units_in_row:
            kind = unit[0]
            if kind == "term":
                laid, w, t_top, t_bottom, label = unit[1:]
                # Centred in its room (a term label may be wider), its legs reaching the
                # room's edges: the first term's left legs and the last one's right legs
                # end at the row's outer edges.
                shift = (w - laid.width) / 2
                laid.emit(x + shift, baseline, shapes, wires, texts, reach=shift)
                terms.append(TermFrame(x, x + w, baseline + t_bottom, baseline + t_top,
                                       baseline, baseline))
                if label is not None:
                    text, tw, ls = label
                    texts.append(Text(x + w / 2, baseline + t_bottom + 0.75 * ls, tw, ls,
                                      f"<I>{dot_text(text)}</I>",
                                      r"\textit{" + _tex_text(text) + "}", "termlabel",
                                      italic=True))
            else:
                text = unit[1][0]
                texts.append(Text(x + unit[2] / 2, baseline, text.w, text.size, text.html,
                                  text.tex, text.cls))
            x += unit[2]
        row_geometry.append((baseline, x))
        previous_bottom = baseline + bottom
    # Translate so the figure starts at (MARGIN, MARGIN).
    min_x = 0.0
    min_y = min([sh.y - sh.h / 2 for sh in shapes] + [t.y - t.size for t in texts]
                + [p[1] for w in wires for p in w.points] + [previous_bottom])
    max_y = max([sh.y + sh.h / 2 for sh in shapes] + [t.y + t.size for t in texts]
                + [p[1] for w in wires for p in w.points] + [0.0])
    max_x = max([x for _, x in row_geometry] + [t.x + t.w for t in texts if t.anchor == "west"])
    dx, dy = MARGIN - min_x, MARGIN - min_y
    r2 = lambda v: round(v, 2)  # noqa: E731 — two decimals: byte-stable output
    shapes = tuple(Shape(sh.kind, r2(sh.x + dx), r2(sh.y + dy), r2(sh.w), r2(sh.h), sh.label,
                         sh.name, sh.cls) for sh in shapes)
    wires = tuple(Wire(tuple((r2(x + dx), r2(y + dy)) for x, y in w.points), w.index, w.cls,
                       w.side) for w in wires)
    texts = tuple(Text(r2(t.x + dx), r2(t.y + dy), r2(t.w), t.size, t.html, t.tex, t.cls,
                       t.italic, t.anchor) for t in texts)
    rows_out = tuple(Row(r2(b + dy), r2(dx), r2(x + dx)) for b, x in row_geometry)
    terms = tuple(TermFrame(r2(t.x0 + dx), r2(t.x1 + dx), r2(t.bottom + dy), r2(t.top + dy),
                            r2(t.baseline + dy), r2(t.main_wire + dy)) for t in terms)
    scene = Scene(r2(max_x + dx + MARGIN), r2(max_y + dy + MARGIN), font, size, comment,
                  shapes, wires, texts, rows_out, terms)
    return scene, widest


def _joiner(s: _Sizes, coefficient, sign: str | None = None):
    if sign is None:
        sign = "−" if coefficient.could_extract_minus_sign() else "+"
    tex = {"−": "$-$", "+": "$+$", "=": "$=$"}[sign]
    w = s.text(sign, s.joiner)
    text = Text(0, 0, w, s.joiner, sign, tex, "joiner")
    return ("joiner", (text,), w + 1.6 * s.fs, 0.5 * s.joiner, -0.5 * s.joiner)


def _coefficient(s: _Sizes, value):
    plain = coefficient_text(value)
    w = max(s.text(plain), s.text(plain, italic=True))  # LaTeX sets its names in italics
    text = Text(0, 0, w, s.fs, dot_text(plain), f"${coefficient_tex(value)}$", "coefficient")
    return ("coefficient", (text,), w + 0.8 * s.fs, 0.6 * s.fs, -0.6 * s.fs)


def _tex_text(text: str) -> str:
    """Text-mode LaTeX for a path label: letters, digits and a few marks as they are."""
    out = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in " .,:()"):
            out.append(ch)
        elif ch == "→":
            out.append(r"$\to$")
        elif ch == "·":
            out.append(r"$\cdot$")
        elif ch in "->":
            out.append({"-": "-", ">": r"\textgreater{}"}[ch])
        elif ch == "_":
            out.append(r"\_")
        else:
            out.append("?")
    return "".join(out)
