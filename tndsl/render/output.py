"""Writing figures: DOT text as SVG, PDF, PNG, DOT or standalone TikZ.

Everything but `.dot` runs Graphviz's `dot` program. SVG is rendered through cairo,
which writes glyphs as paths, so the file looks the same without its fonts installed
(`outline=False` keeps real, selectable text); PDF comes from cairo with its fonts
embedded; PNG takes a DPI. TikZ is built from Graphviz's own layout (`dot -Tjson`):
every node, wire and box at the coordinates Graphviz chose, with labels set by LaTeX in
the paper's fonts.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

from tndsl.lang.errors import TnError
from tndsl.lang.text import terminal, tex_comment

FORMATS = (".svg", ".pdf", ".png", ".dot", ".tex")
# PNG resolution, dots per inch: Graphviz clamps a larger bitmap to 32767 pixels a side
# (minutes of work for a picture nobody asked for), and a dpi below 1 means nothing.
MIN_DPI, MAX_DPI = 1, 1200
INSTALL_HINT = ("install Graphviz, which provides it: `apt-get install graphviz` (Debian, "
                "Ubuntu), `brew install graphviz` (macOS), or https://graphviz.org/download/")


class RenderError(TnError):
    """A figure that cannot be written: an unknown format, or no Graphviz."""


def run_dot(dot_text: str, *args: str) -> bytes:
    executable = shutil.which("dot")
    if executable is None:
        raise RenderError(f"Graphviz's `dot` program is not installed; {INSTALL_HINT}")
    result = subprocess.run([executable, *args], input=dot_text.encode(), capture_output=True)
    if result.returncode != 0:
        raise RenderError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def render_bytes(dot_text: str, fmt: str, *, dpi: int = 300, outline: bool = True) -> bytes:
    """The figure in `fmt` ("svg", "pdf", "png", "dot" or "tex")."""
    if fmt == "dot":
        return dot_text.encode()
    if fmt == "svg":
        return run_dot(dot_text, "-Tsvg:cairo" if outline else "-Tsvg")
    if fmt == "pdf":
        return run_dot(dot_text, "-Tpdf:cairo")
    if fmt == "png":
        check_dpi(dpi)
        return run_dot(dot_text, f"-Gdpi={dpi}", "-Tpng:cairo")
    if fmt == "tex":
        return tikz(dot_text).encode()
    raise RenderError(f"unknown figure format `{fmt}`; valid: {', '.join(FORMATS)}")


def check_dpi(dpi) -> None:
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not MIN_DPI <= dpi <= MAX_DPI:
        raise RenderError(f"the PNG resolution must be a whole number of dots per inch from "
                          f"{MIN_DPI} to {MAX_DPI}, got {terminal(repr(dpi))}")


def write(dot_text: str, path: str | Path, *, dpi: int = 300, outline: bool = True) -> Path:
    path = Path(path)
    if path.suffix not in FORMATS:
        raise RenderError(f"cannot write `{terminal(path.name)}`: unknown figure format "
                          f"`{terminal(path.suffix or '(none)')}`; valid: {', '.join(FORMATS)}")
    data = render_bytes(dot_text, path.suffix[1:], dpi=dpi, outline=outline)
    try:
        path.write_bytes(data)
    except OSError as e:
        raise RenderError(f"cannot write {terminal(path)}: {e.strerror}") from None
    return path


# ---- TikZ ----------------------------------------------------------------------------

def tikz(dot_text: str) -> str:
    """A standalone LaTeX document drawing the figure with TikZ at Graphviz's layout."""
    layout = json.loads(run_dot(dot_text, "-Tjson"))
    lines = [
        # standalone crops to the picture; where it is missing (it is in TeX Live's
        # latex-extra), a plain page still compiles.
        r"\IfFileExists{standalone.cls}{\documentclass[tikz,border=2pt]{standalone}"
        r"\newcommand\tndslfigure[1]{##1}}"
        r"{\documentclass{article}\usepackage{tikz,graphicx}\pagestyle{empty}"
        r"\newcommand\tndslfigure[1]{\noindent\resizebox{\linewidth}{!}{##1}}}",
        "% " + tex_comment(html.unescape(layout.get("comment", ""))),
        r"\usepackage{amsmath}",
        r"\definecolor{param}{HTML}{DCE8F5}",
        r"\definecolor{paramedge}{HTML}{1F4E79}",
        r"\definecolor{wirelabel}{HTML}{444444}",
        r"\begin{document}",
        r"\tndslfigure{\begin{tikzpicture}[x=1pt, y=1pt, line width=0.8pt, line cap=round]",
    ]
    for graph in layout.get("objects", []):
        if "bb" not in graph or not graph.get("name", "").startswith("cluster_box"):
            continue  # the objects with a bounding box are clusters; only boxes are drawn
        x0, y0, x1, y1 = (float(v) for v in graph["bb"].split(","))
        lines.append(rf"\draw[dashed, rounded corners=6pt, gray] ({x0:.2f},{y0:.2f}) "
                     rf"rectangle ({x1:.2f},{y1:.2f});")
        label = graph.get("texlbl", "")
        if label:
            lines.append(rf"\node[anchor=north west, inner sep=2pt] at ({x0 + 2:.2f},"
                         rf"{y1 - 1:.2f}) {{{label}}};")
    for edge in layout.get("edges", []):
        if edge.get("style") == "invis":
            continue
        points = _bezier(edge["pos"])
        if len(points) >= 4:
            path = f"({points[0][0]:.2f},{points[0][1]:.2f})"
            for k in range(1, len(points) - 2, 3):
                (ax, ay), (bx, by), (cx, cy) = points[k:k + 3]
                path += (f" .. controls ({ax:.2f},{ay:.2f}) and ({bx:.2f},{by:.2f}) .. "
                         f"({cx:.2f},{cy:.2f})")
            lines.append(rf"\draw {path};")
        if "lp" in edge and edge.get("texlbl"):
            x, y = (float(v) for v in edge["lp"].split(","))
            lines.append(rf"\node[text=wirelabel, font=\small] at ({x:.2f},{y:.2f}) "
                         rf"{{{edge['texlbl']}}};")
    for node in layout.get("objects", []):
        if "bb" in node or "pos" not in node or node.get("style") == "invis":
            continue
        x, y = (float(v) for v in node["pos"].split(","))
        width = float(node.get("width", 0.5)) * 72
        height = float(node.get("height", 0.5)) * 72
        shape, label = node.get("shape", ""), node.get("texlbl", "")
        if shape == "point":
            lines.append(rf"\fill ({x:.2f},{y:.2f}) circle ({width * 0.5:.2f});")
        elif shape == "circle":
            lines.append(rf"\node[draw, circle, minimum size={width:.2f}pt, inner sep=0pt] "
                         rf"at ({x:.2f},{y:.2f}) {{{label}}};")
        elif shape == "box":
            fill = "fill=param, draw=paramedge" if "filled" in node.get("style", "") else "draw"
            lines.append(rf"\node[{fill}, rounded corners=4pt, minimum width={width:.2f}pt, "
                         rf"minimum height={height:.2f}pt, inner sep=1pt] at ({x:.2f},{y:.2f}) "
                         rf"{{{label}}};")
        else:  # plaintext: joiners and coefficients
            lines.append(rf"\node at ({x:.2f},{y:.2f}) {{{label}}};")
    lines += [r"\end{tikzpicture}}", r"\end{document}"]
    return "\n".join(lines) + "\n"


def _bezier(pos: str) -> list[tuple[float, float]]:
    # "e,x,y s,x,y x1,y1 x2,y2 ...": end markers first, then the spline's points.
    points = []
    for part in pos.split():
        if re.match(r"^[es],", part):
            continue
        x, y = part.split(",")[:2]
        points.append((float(x), float(y)))
    return points
