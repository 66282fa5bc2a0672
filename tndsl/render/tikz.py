"""Scene → TikZ, at the same coordinates as every other format.

Coordinates are in PostScript points (TeX's `bp`), as in the other formats.
`snippet` is a `tikzpicture` a paper `\\input`s after `\\usepackage{tikz}`, with nothing
else in its preamble: no macros of its own, colours written inline, labels set in the
paper's fonts at the figure's sizes in pt (so the shapes, sized for those sizes, fit
them). `document` wraps it in a standalone LaTeX document exactly the figure's size,
set in Times (mathptmx), or Latin Modern for `font="Latin Modern Roman"`.
"""
from __future__ import annotations

import html

from tndsl.lang.text import tex_comment
from tndsl.render.expand import label_tex
from tndsl.render.layout import Scene, Shape

# Colours as xcolor's inline rgb model, which tikz loads: no \definecolor needed.
_RGB = {"param": "{rgb,255:red,220;green,232;blue,245}",
        "paramedge": "{rgb,255:red,31;green,78;blue,121}",
        "fixed": "{rgb,255:red,243;green,243;blue,243}",
        "fixededge": "{rgb,255:red,85;green,85;blue,85}",
        "ink": "{rgb,255:red,34;green,34;blue,34}",
        "label": "{rgb,255:red,68;green,68;blue,68}",
        "hook": "{rgb,255:red,31;green,78;blue,121}",
        "hookinside": "{rgb,255:red,90;green,127;blue,168}",
        "box": "{rgb,255:red,85;green,85;blue,85}"}


def _font(size: float) -> str:
    return rf"\fontsize{{{size:g}}}{{{round(size * 1.2, 2):g}}}\selectfont"


def snippet(scene: Scene) -> str:
    """A tikzpicture to `\\input` into a paper (needs only `\\usepackage{tikz}`)."""
    line = max(0.6, round(scene.font_size * 0.08, 2))
    out = [
        "% " + tex_comment(html.unescape(scene.comment)),
        rf"% \input this after \usepackage{{tikz}}: {scene.width:.0f} x "
        rf"{scene.height:.0f} pt, labels in the paper's fonts.",
        rf"\begin{{tikzpicture}}[x=1bp, y=1bp, line width={line:g}bp, line cap=round, "
        rf"line join=round, draw={_RGB['ink']}, every node/.style={{inner sep=0pt, "
        rf"outer sep=0pt, anchor=center}}]",
        rf"\useasboundingbox (0,0) rectangle ({scene.width:.2f},{scene.height:.2f});",
    ]
    for shape in sorted((s for s in scene.shapes if s.kind == "box"), key=lambda s: -s.w * s.h):
        out.append(_shape(shape))
    for wire in scene.wires:
        out.append(r"\draw " + " -- ".join(f"({x:.2f},{y:.2f})" for x, y in wire.points) + ";")
    for shape in scene.shapes:
        if shape.kind != "box":
            out.append(_shape(shape))
            if shape.label is not None:
                out.append(rf"\node[font={_font(scene.font_size)}] at ({shape.x:.2f},"
                           rf"{shape.y:.2f}) {{{label_tex(shape.label)}}};")
    for text in scene.texts:
        colour = {"wirelabel": "label", "termlabel": "label", "hook": "hook",
                  "hookinside": "hookinside"}.get(text.cls)
        options = [f"font={_font(text.size)}"]
        if colour:
            options.append(f"text={_RGB[colour]}")
        if text.anchor == "west":
            options.append("anchor=west")
        out.append(rf"\node[{', '.join(options)}] at ({text.x:.2f},{text.y:.2f}) "
                   rf"{{{text.tex}}};")
    out.append(r"\end{tikzpicture}")
    return "\n".join(out) + "\n"


def _shape(shape: Shape) -> str:
    x0, y0 = shape.x - shape.w / 2, shape.y - shape.h / 2
    x1, y1 = shape.x + shape.w / 2, shape.y + shape.h / 2
    corners = f"({x0:.2f},{y0:.2f}) rectangle ({x1:.2f},{y1:.2f})"
    radius = min(shape.w, shape.h) / 2
    if shape.kind in ("copy", "ones"):
        return rf"\fill[fill={_RGB['ink']}] ({shape.x:.2f},{shape.y:.2f}) circle ({radius:.2f});"
    if shape.kind in ("input", "activation"):
        return rf"\draw[fill=white] ({shape.x:.2f},{shape.y:.2f}) circle ({radius:.2f});"
    if shape.kind == "param":
        return (rf"\draw[fill={_RGB['param']}, draw={_RGB['paramedge']}, rounded corners="
                rf"{min(radius, 5):.2f}bp] {corners};")
    if shape.kind == "fixed":
        return (rf"\draw[fill={_RGB['fixed']}, draw={_RGB['fixededge']}, rounded corners="
                rf"{min(radius, 5):.2f}bp] {corners};")
    if shape.kind == "instance":
        return rf"\draw[fill=white, rounded corners={min(radius, 5):.2f}bp] {corners};"
    if shape.cls == "hookbox":   # a hook map's region: dotted, in the hook colour
        return (rf"\draw[draw={_RGB['hook']}, dash pattern=on 0.8bp off 1.6bp, "
                rf"rounded corners={min(radius, 6):.2f}bp] {corners};")
    return (rf"\draw[draw={_RGB['box']}, dash pattern=on 3bp off 2bp, rounded corners="
            rf"{min(radius, 6):.2f}bp] {corners};")


def document(scene: Scene, font_package: str) -> str:
    """A standalone LaTeX document exactly the figure's size (pdflatex, xelatex)."""
    w, h = f"{scene.width:.2f}bp", f"{scene.height:.2f}bp"   # PostScript points, as the layout
    return "\n".join([
        r"\documentclass{article}",
        "% " + tex_comment(html.unescape(scene.comment)),
        r"\usepackage{tikz}",
        font_package,
        rf"\paperwidth={w} \paperheight={h}",
        r"\ifdefined\pdfpagewidth \pdfpagewidth=\paperwidth \pdfpageheight=\paperheight \fi",
        r"\hoffset=-1in \voffset=-1in \oddsidemargin=0pt \evensidemargin=0pt \topmargin=0pt",
        rf"\headheight=0pt \headsep=0pt \footskip=0pt \textwidth={w} \textheight={h}",
        r"\parindent=0pt \pagestyle{empty}",
        r"\begin{document}",
        snippet(scene).split("\n", 1)[1].rstrip("\n"),
        r"\end{document}",
    ]) + "\n"
