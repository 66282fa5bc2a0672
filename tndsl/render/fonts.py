"""Fonts: which face a figure is set in, how wide its text is, and whether the machine
that renders it has that face.

The default is Times: Nimbus Roman (URW's metric clone, Debian `fonts-urw-base35`) or
TeX Gyre Termes (`fonts-texgyre`), whichever is installed; both set text to the same
widths, which the layout reads from a table (tndsl.render.metrics), so DOT and TikZ are
the same on every machine. `font="Latin Modern Roman"` (or any face fontconfig knows)
is measured from its own file. A face that is not installed is a one-line error, never
a silent fallback to another.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass

from tndsl.lang.errors import TnError
from tndsl.render import metrics

TIMES = ("Nimbus Roman", "TeX Gyre Termes")
FONT_HINT = ("install it (Debian: apt-get install fonts-urw-base35 for Nimbus Roman, "
             "fonts-texgyre for TeX Gyre Termes, fonts-lmodern for Latin Modern) or "
             "choose an installed face with --font")


class FontError(TnError):
    """A face the figure asks for is not installed (or fontconfig cannot be asked)."""


@dataclass(frozen=True)
class Font:
    """A face: the family names Graphviz is given (first installed wins; all are the same
    design) and its widths in 1/1000 em, regular and italic, for `chars`."""

    families: tuple[str, ...]
    chars: str
    regular: tuple[int, ...]
    italic: tuple[int, ...]
    default: int = metrics.DEFAULT

    @property
    def graphviz_name(self) -> str:
        # Pango reads a trailing word such as "Roman" as a style unless the family list
        # ends with a comma ("Latin Modern Roman" would otherwise ask for "Latin Modern").
        return ",".join(self.families) + ","

    @property
    def is_times(self) -> bool:
        return self.families == TIMES

    @property
    def is_latin_modern(self) -> bool:
        return any("latin modern" in f.lower() or "lm roman" in f.lower()
                   for f in self.families)

    def width(self, text: str, size: float, italic: bool = False) -> float:
        """Advance width of `text` at `size` pt."""
        table = self.italic if italic else self.regular
        index = _index(self.chars)
        total = 0
        for char in text:
            k = index.get(char)
            total += table[k] if k is not None else self.default
        return total * size / 1000


@functools.lru_cache(maxsize=None)
def _index(chars: str) -> dict[str, int]:
    return {c: k for k, c in enumerate(chars)}


DEFAULT = Font(TIMES, metrics.CHARS, metrics.REGULAR, metrics.ITALIC)


def font(name: str | None) -> Font:
    """The face `name` (None: Times), measured; a face that is not installed raises."""
    if name is None or name.strip().lower() in {"times", "times-roman", "times new roman",
                                                "nimbus roman", "tex gyre termes"}:
        return DEFAULT
    name = name.strip()
    regular = _match(name, "")
    italic = _match(name, ":italic")
    return _measured(name, regular, italic)


def check_installed(face: Font) -> None:
    """Before Graphviz sets text: one of the face's families must be installed, or the
    text would come out in whatever fontconfig substitutes."""
    for family in face.families:
        try:
            _match(family, "")
            return
        except FontError:
            continue
    raise FontError(f"none of the fonts {', '.join(face.families)} is installed, and the "
                    f"figure will not be set in a substitute; {FONT_HINT}")


@functools.lru_cache(maxsize=None)
def _match(name: str, style: str) -> str:
    """The file fontconfig gives for `name`, if its family is `name`; else FontError."""
    executable = shutil.which("fc-match")
    if executable is None:
        raise FontError("fontconfig's `fc-match` is not installed, so the figure's font "
                        "cannot be found (it comes with Graphviz: apt-get install graphviz)")
    result = subprocess.run([executable, "-f", "%{family}\n%{file}", name + style],
                            capture_output=True, text=True, timeout=30)
    families, _, path = result.stdout.partition("\n")
    wanted = _fold(name)
    if result.returncode != 0 or not any(_fold(f) == wanted or _fold(f).startswith(wanted)
                                         for f in families.split(",")):
        raise FontError(f"font `{name}` is not installed (fontconfig would substitute "
                        f"`{families.split(',')[0] or 'nothing'}`); {FONT_HINT}")
    return path.strip()


def _fold(family: str) -> str:
    return "".join(family.lower().split())


@functools.lru_cache(maxsize=None)
def _measured(name: str, regular: str, italic: str) -> Font:
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        raise FontError("measuring a font other than Times needs fontTools: pip install "
                        "fonttools") from None

    def widths(path: str) -> tuple[int, ...]:
        try:
            face = TTFont(path, lazy=True)
            cmap = face.getBestCmap()
            scale = 1000 / face["head"].unitsPerEm
            hmtx = face["hmtx"]
        except Exception as e:  # a Type 1 file or a broken one: fontTools cannot read it
            raise FontError(f"cannot read the metrics of font `{name}` from {path}: "
                            f"{e}") from None
        return tuple(round(hmtx[cmap[ord(c)]][0] * scale) if ord(c) in cmap
                     else metrics.DEFAULT for c in metrics.CHARS)

    return Font((name,), metrics.CHARS, widths(regular), widths(italic))


def check_embedded(face: Font, pdf: bytes) -> None:
    """After Graphviz wrote a PDF: its fonts must be the face asked for. A PDF names each
    embedded font by its PostScript name (`/FontName /ABCDEF+NimbusRoman-Regular`), which
    fontconfig gives for each family (`NimbusRoman`, `LMRoman10`)."""
    import re
    names = {n.split(b"+", 1)[-1].decode(errors="replace").split("-")[0]
             for n in re.findall(rb"/FontName\s*/([^\s/<>\[\]()]+)", pdf)}
    wanted = {_postscript(family) for family in face.families} - {""}
    wrong = sorted(names - wanted)
    if wrong:
        raise FontError(f"Graphviz set the figure in {', '.join(wrong)}, not "
                        f"{' or '.join(face.families)}; {FONT_HINT}")


@functools.lru_cache(maxsize=None)
def _postscript(family: str) -> str:
    """The PostScript family of `family` as fontconfig has it (`LMRoman10`), or ""."""
    try:
        _match(family, "")
    except FontError:
        return ""
    result = subprocess.run([shutil.which("fc-match"), "-f", "%{postscriptname}", family],
                            capture_output=True, text=True, timeout=30)
    return result.stdout.strip().split("-")[0]
