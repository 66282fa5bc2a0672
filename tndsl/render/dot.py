"""Scene → DOT with every position pinned, for Graphviz's `neato -n2` (which draws nodes
and edges where they are given: no layout of its own), rendering SVG, PDF and PNG.

Shapes are nodes at their centres, sized exactly (`fixedsize`); text (wire labels,
joiners, coefficients, box labels) is a plaintext node of its own; each wire is an edge
between two invisible end points along the polyline the layout chose, written as a
B-spline with straight pieces. Node ids are numbered in drawing order and coordinates
have two decimals, so the same `.tn` gives byte-identical DOT.
"""
from __future__ import annotations

import re

from tndsl.lang.text import dot_text
from tndsl.render.expand import MAX_DRAWN_TENSORS, MAX_DRAWN_TERMS  # noqa: F401 (the guard)
from tndsl.render.layout import Scene, Shape, Text

PARAM = 'shape=box, style="rounded,filled", fillcolor="#dce8f5", color="#1f4e79"'
# A fixed tensor (rotary map, head grouping): a box like a param, in grey: its values
# are not learnt.
FIXED = 'shape=box, style="rounded,filled", fillcolor="#f3f3f3", color="#555555"'
ACTIVATION = 'shape=circle, color="#222222"'
INSTANCE = 'shape=box, style=rounded, color="#222222"'
DOT = 'shape=circle, style=filled, fillcolor="#111111", color="#111111"'
BOX = 'shape=box, style="dashed,rounded", color="#555555"'
# A hook map's region (an equation inlined, named after it): dotted, in the hook colour.
HOOK_REGION = 'shape=box, style="dotted,rounded", color="#1f4e79"'
STYLES = {"param": PARAM, "fixed": FIXED, "input": ACTIVATION, "activation": ACTIVATION,
          "instance": INSTANCE, "copy": DOT, "ones": DOT, "box": BOX}
TEXT_COLOURS = {"wirelabel": "#444444", "hook": "#1f4e79", "hookinside": "#5a7fa8",
                "termlabel": "#444444"}


def _in(points: float) -> str:
    return f"{points / 72:.4f}"


def label_html(label: tuple[str, str, str], size: float) -> str:
    """A tensor's name: the base (italic when one letter), its subscript and superscript
    stacked on each other at 70%."""
    base, sub, sup = (dot_text(part) for part in label)
    text = f"<I>{base}</I>" if len(label[0]) == 1 else base
    small = round(size * 0.7, 2)
    if sub and sup:
        return ('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>'
                f'<TD ROWSPAN="2">{text}</TD><TD ALIGN="LEFT" VALIGN="BOTTOM">'
                f'<FONT POINT-SIZE="{small}">{sup}</FONT></TD></TR><TR>'
                f'<TD ALIGN="LEFT" VALIGN="TOP"><FONT POINT-SIZE="{small}">{sub}</FONT>'
                '</TD></TR></TABLE>')
    if sub:
        text += f'<SUB><FONT POINT-SIZE="{small}">{sub}</FONT></SUB>'
    if sup:
        text += f'<SUP><FONT POINT-SIZE="{small}">{sup}</FONT></SUP>'
    return text


def to_dot(scene, name: str | None = None, **options) -> str:
    """The DOT of a scene; given a program instead, of its figure of equation `name`
    (options as tndsl.render.figure's)."""
    if not isinstance(scene, Scene):
        from tndsl.render import figure
        return figure(scene, name, **options).source
    line = max(0.6, round(scene.font_size * 0.08, 2))
    lines = [
        "digraph tndsl {",
        f'  comment="{dot_text(scene.comment)}";',
        "  // Positions are pinned, in points: draw with `neato -n2` (tndsl render does).",
        f'  graph [layout=neato, bb="0,0,{scene.width:.2f},{scene.height:.2f}", pad=0, '
        f'margin=0, outputorder=edgesfirst, splines=true];',
        f'  node [fontname="{dot_text(scene.font.graphviz_name)}", '
        f'fontsize={scene.font_size:g}, fixedsize=true, label="", margin=0, '
        f'penwidth={line:g}];',
        f'  edge [dir=none, penwidth={line:g}, color="#222222", arrowhead=none];',
    ]
    ids = iter(range(10 ** 9))
    # Two invisible corners: Graphviz takes the drawing's extent from its nodes.
    for x, y in ((0.0, 0.0), (scene.width, scene.height)):
        lines.append(f'  n{next(ids)} [shape=point, style=invis, width=0.01, '
                     f'pos="{x:.2f},{y:.2f}!"];')
    # Boxes first, outermost first, so they lie under what they hold.
    for shape in sorted((s for s in scene.shapes if s.kind == "box"), key=lambda s: -s.w * s.h):
        lines.append(_shape(shape, next(ids), scene.font_size))
    for shape in scene.shapes:
        if shape.kind != "box":
            lines.append(_shape(shape, next(ids), scene.font_size))
    for text in scene.texts:
        lines.append(_text(text, next(ids)))
    for wire in scene.wires:
        a, b = next(ids), next(ids)
        (x0, y0), (x1, y1) = wire.points[0], wire.points[-1]
        lines.append(f'  n{a} [shape=point, style=invis, width=0.01, pos="{x0:.2f},{y0:.2f}!"];')
        lines.append(f'  n{b} [shape=point, style=invis, width=0.01, pos="{x1:.2f},{y1:.2f}!"];')
        lines.append(f'  n{a} -> n{b} [pos="{_spline(wire.points)}", class="{wire.cls}", '
                     f'tooltip="{dot_text(wire.index)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _shape(shape: Shape, node: int, size: float) -> str:
    style = HOOK_REGION if shape.cls == "hookbox" else STYLES[shape.kind]
    attrs = [style, f'pos="{shape.x:.2f},{shape.y:.2f}!"',
             f"width={_in(shape.w)}", f"height={_in(shape.h)}", f'class="{shape.cls}"']
    if shape.label is not None:
        attrs.append(f"label=<{label_html(shape.label, size)}>")
    if shape.name:
        attrs.append(f'tooltip="{dot_text(shape.name)}"')
    return f"  n{node} [{', '.join(attrs)}];"


def _scripts(html: str, size: float) -> str:
    """A label's sub- and superscripts (`softmax<sub><i>s</i></sub>`, `layernorm<sup>0
    </sup>`) at 70% of its size, as a tensor's and as TeX sets them (Graphviz keeps
    them at full size otherwise)."""
    small = round(size * 0.7, 2)
    for tag in ("sub", "sup"):
        html = re.sub(rf"<{tag}>(.*?)</{tag}>",
                      rf'<{tag.upper()}><FONT POINT-SIZE="{small:g}">\1</FONT></{tag.upper()}>',
                      html)
    return html


def _text(text: Text, node: int) -> str:
    x = text.x + text.w / 2 if text.anchor == "west" else text.x
    colour = TEXT_COLOURS.get(text.cls)
    body = _scripts(text.html, text.size)
    body = f"<I>{body}</I>" if text.italic and not body.startswith("<I>") else body
    font = f'<FONT POINT-SIZE="{text.size:g}"' + (f' COLOR="{colour}"' if colour else "") + ">"
    if "<" in body or colour:
        label = f"label=<{font}{body}</FONT>>"
    else:  # plain text (joiners, coefficients): a plain label at its size
        label = f'label="{body}", fontsize={text.size:g}'
    return (f'  n{node} [shape=plaintext, pos="{x:.2f},{text.y:.2f}!", '
            f"width={_in(text.w + 2)}, height={_in(text.size * 1.2)}, "
            f'{label}, class="{text.cls}"];')


def _spline(points) -> str:
    """A polyline as a B-spline: each straight piece with its control points on it."""
    out = [points[0]]
    for (ax, ay), (bx, by) in zip(points, points[1:]):
        out += [(ax + (bx - ax) / 3, ay + (by - ay) / 3),
                (ax + 2 * (bx - ax) / 3, ay + 2 * (by - ay) / 3), (bx, by)]
    return " ".join(f"{x:.2f},{y:.2f}" for x, y in out)
