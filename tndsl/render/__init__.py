"""Figures: the IR drawn in graphical tensor notation, laid out as a typeset equation.

    fig = tndsl.load("examples/attention_head.tn").render("out", expand=True, width="6.75in")
    fig.save("head.pdf")          # .svg .pdf .png .dot .tex .tikz
    fig                           # shows inline in Jupyter
    fig.scene                     # every position, in points (tndsl.render.layout.Scene)

Stages: tndsl.render.expand (what is drawn), layout (where, in pt), dot and tikz (the
same coordinates as DOT for Graphviz and as TikZ), output (files), fonts (the face).

May import: the front end (tndsl.lang), sympy, the graphviz package (and `dot` as a
program), fontTools. Never torch, passes, codegen, verify or anything above them: a
figure is drawn from the IR alone.
"""
from __future__ import annotations

import re
from pathlib import Path

import graphviz

from tndsl.render import expand as _expansion
from tndsl.render.dot import to_dot
from tndsl.render.fonts import FontError, font as resolve_font
from tndsl.render.layout import LayoutError, Scene, layout
from tndsl.render.output import FORMATS, RenderError, render_bytes, write

__all__ = ["FORMATS", "Figure", "FontError", "LayoutError", "RenderError", "Scene",
           "check_figure", "figure", "parse_length", "to_dot"]

_UNITS = {"pt": 1.0, "in": 72.0, "cm": 72 / 2.54, "mm": 72 / 25.4, "bp": 1.0, "pc": 12.0}


def parse_length(value) -> float | None:
    """A length in pt: a number (pt) or text with a unit: `3.25in`, `17cm`, `480pt`."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        points = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(pt|in|cm|mm|bp|pc)?\s*", str(value))
        if match is None:
            raise LayoutError(f"width `{value}` is not a length: write a number with a "
                              f"unit, e.g. 3.25in, 6.75in, 17cm, 480pt "
                              f"(units: {', '.join(_UNITS)})")
        points = float(match.group(1)) * _UNITS[match.group(2) or "pt"]
    if not 36 <= points <= 14_400:
        raise LayoutError(f"width {points:g} pt is out of range: 0.5 in to 200 in")
    return points


class Figure(graphviz.Source):
    """A laid-out figure: `.scene` (positions in pt), `.source` (its pinned DOT), and
    `save(path)` for every format; shows inline in notebooks."""

    def __init__(self, scene: Scene):
        super().__init__(to_dot(scene), engine="neato")
        self.scene = scene

    def save(self, path: str | Path, *, dpi: int = 300, outline: bool = True) -> Path:
        return write(self.scene, path, dpi=dpi, outline=outline)

    def _repr_svg_(self) -> str:
        return render_bytes(self.scene, "svg", outline=False).decode()

    def _repr_mimebundle_(self, include=None, exclude=None, **_):
        return {"image/svg+xml": self._repr_svg_()}


def _origin(program) -> str:
    source = program.network.source
    return source.name.rsplit("/", 1)[-1] if source is not None else "<string>"


def figure(program, name: str | None = None, *, expand: bool = False, depth: int = 0,
           indices: bool = False, width=None, font_size: float | None = None,
           font: str | None = None, legs=None, hooks: bool = False, lhs: bool = False,
           term_labels=None) -> Figure:
    """The figure of equation `name` (default: the final one). `expand` inlines every
    definition down to params and inputs; `depth` inlines that many levels. `width`
    (pt, or "3.25in") wraps the sum into rows that wide; `font_size` (pt, default 10,
    shrunk to 7 at the least to fit `width` when not given); `font` a face other than
    Times; `legs` the sides of the open legs ("p/m"); `hooks` draws the hook map
    (`name = ...` with every hook point the equation is computed from named where it is:
    docs/figures.md); `lhs` draws `name = ...`; `term_labels` one label under each term
    of the sum."""
    drawing = _expansion.drawing(program, name, depth=None if expand else depth,
                                 lhs_name=lhs, hooks=hooks)
    return Figure(layout(drawing, resolve_font(font), width=parse_length(width),
                         font_size=font_size, legs=legs, indices=indices,
                         term_labels=term_labels,
                         comment=f"tndsl figure of {drawing.name} from {_origin(program)}"))


def check_figure(program, label: str, *, expand: bool = False, depth: int = 0,
                 indices: bool = False, width=None, font_size: float | None = None,
                 font: str | None = None, legs=None) -> Figure:
    """Check `label` drawn as `lhs = rhs`."""
    drawing = _expansion.check_drawing(program, label, depth=None if expand else depth)
    return Figure(layout(drawing, resolve_font(font), width=parse_length(width),
                         font_size=font_size, legs=legs, indices=indices,
                         comment=f"tndsl figure of check {label} from {_origin(program)}"))
