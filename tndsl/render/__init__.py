"""Figures: the IR drawn in graphical tensor notation through Graphviz.

    fig = tndsl.load("examples/attention_head.tn").render("out", expand=True)
    fig.save("head.pdf")          # .svg .pdf .png .dot .tex
    fig                           # shows inline in Jupyter
"""
from __future__ import annotations

from pathlib import Path

import graphviz

from tndsl.render.dot import to_dot
from tndsl.render.output import FORMATS, RenderError, render_bytes, write

__all__ = ["FORMATS", "Figure", "RenderError", "figure", "to_dot"]


class Figure(graphviz.Source):
    """A `graphviz.Source` holding the figure's DOT text (`.source`), with tndsl's own
    outputs: `save(path)` for every format, and inline SVG in notebooks."""

    def save(self, path: str | Path, *, dpi: int = 300, outline: bool = True) -> Path:
        return write(self.source, path, dpi=dpi, outline=outline)

    def _repr_svg_(self) -> str:
        return render_bytes(self.source, "svg", outline=False).decode()

    def _repr_mimebundle_(self, include=None, exclude=None, **_):
        return {"image/svg+xml": self._repr_svg_()}


def figure(program, name: str | None = None, *, expand: bool = False, depth: int = 0,
           indices: bool = False) -> Figure:
    """The figure of equation `name` (default: the final one). `expand` inlines every
    definition down to params and inputs; `depth` inlines that many levels."""
    return Figure(to_dot(program, name, depth=None if expand else depth, indices=indices))
