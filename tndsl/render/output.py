"""Writing figures: a scene as SVG, PDF, PNG, DOT, standalone LaTeX or a TikZ snippet.

SVG, PDF and PNG come from Graphviz's `neato -n2` on the pinned DOT (it draws where it
is told, so it takes milliseconds), through cairo: SVG text is outlined (glyphs as
paths) unless `outline=False`, PDF embeds its fonts, PNG takes a DPI. Before Graphviz
sets any text the face is checked to be installed (no silent substitute), Graphviz runs
under a time limit, and a PNG past cairo's 32,767 px limit is refused with the largest
DPI that fits. `.tex` and `.tikz` are written from the same coordinates.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tndsl.lang.errors import TnError
from tndsl.lang.text import terminal
from tndsl.render import fonts, tikz
from tndsl.render.dot import to_dot
from tndsl.render.layout import Scene

FORMATS = (".svg", ".pdf", ".png", ".dot", ".tex", ".tikz")
INSTALL_HINT = ("install Graphviz, which provides it: `apt-get install graphviz` (Debian, "
                "Ubuntu), `brew install graphviz` (macOS), or https://graphviz.org/download/")
GRAPHVIZ_SECONDS = 60      # a pinned layout draws in well under a second
CAIRO_MAX_PIXELS = 32_767  # cairo's largest image side


class RenderError(TnError):
    """A figure that cannot be written: an unknown format, no Graphviz, a raster too big."""


def run_dot(dot_text: str, *args: str, timeout: float = GRAPHVIZ_SECONDS) -> bytes:
    """Graphviz's `neato -n2` on pinned DOT (positions and wires as given)."""
    executable = shutil.which("neato") or shutil.which("dot")
    if executable is None:
        raise RenderError(f"Graphviz's `neato` program is not installed; {INSTALL_HINT}")
    command = [executable] + (["-n2"] if executable.endswith("neato") else ["-Kneato", "-n2"])
    try:
        result = subprocess.run(command + list(args), input=dot_text.encode(),
                                capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RenderError(f"Graphviz did not finish drawing the figure in {timeout:g} s; "
                          f"draw fewer levels (--depth) or a narrower figure") from None
    if result.returncode != 0:
        raise RenderError(f"Graphviz failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def render_bytes(scene: Scene, fmt: str, *, dpi: int = 300, outline: bool = True) -> bytes:
    """The figure in `fmt` (a suffix of FORMATS without the dot)."""
    if f".{fmt}" not in FORMATS:
        raise RenderError(f"unknown figure format `{fmt}`; valid: {', '.join(FORMATS)}")
    if fmt == "dot":
        return to_dot(scene).encode()
    if fmt == "tikz":
        return tikz.snippet(scene).encode()
    if fmt == "tex":
        return tikz.document(scene, _font_package(scene.font)).encode()
    fonts.check_installed(scene.font)
    if fmt == "svg":
        return run_dot(to_dot(scene), "-Tsvg:cairo" if outline else "-Tsvg")
    if fmt == "pdf":
        pdf = run_dot(to_dot(scene), "-Tpdf:cairo")
        fonts.check_embedded(scene.font, pdf)
        return pdf
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 1:
        raise RenderError(f"dpi must be a positive whole number, not {terminal(repr(dpi))}")
    pixels = max(scene.width, scene.height) / 72 * dpi
    if pixels > CAIRO_MAX_PIXELS:
        fits = int(CAIRO_MAX_PIXELS * 72 / max(scene.width, scene.height))
        raise RenderError(f"at {dpi} dpi the PNG would be {pixels:,.0f} px across, past "
                          f"cairo's {CAIRO_MAX_PIXELS:,} px limit; at most {fits} dpi fits "
                          f"(or write .pdf or .svg, or lay it out narrower with --width)")
    return run_dot(to_dot(scene), f"-Gdpi={dpi}", "-Tpng:cairo")


def _font_package(font: fonts.Font) -> str:
    if font.is_times:
        return r"\usepackage{mathptmx}% Times, as the figure's other formats"
    if font.is_latin_modern:
        return r"\usepackage{lmodern}% Latin Modern, as the figure's other formats"
    raise RenderError(f"a standalone .tex is set in Times or Latin Modern, not "
                      f"`{font.families[0]}`: write .tikz and \\input it, and it takes the "
                      f"paper's fonts")


def write(scene: Scene, path: str | Path, *, dpi: int = 300, outline: bool = True) -> Path:
    path = Path(path)
    if path.suffix not in FORMATS:
        raise RenderError(f"cannot write `{terminal(path.name)}`: unknown figure format "
                          f"`{terminal(path.suffix or '(none)')}`; valid: {', '.join(FORMATS)}")
    data = render_bytes(scene, path.suffix[1:], dpi=dpi, outline=outline)
    try:
        path.write_bytes(data)
    except OSError as e:
        raise RenderError(f"cannot write {terminal(path)}: {e.strerror}") from None
    return path
