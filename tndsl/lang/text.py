"""The one sanitiser for text that leaves a program for another language.

Every string that tndsl writes into generated Python, DOT (and through it SVG) or
LaTeX and did not write itself — a file name or path, a name, a dim, a coefficient —
goes through one of these functions. Each returns text that, placed where its name says,
cannot end the construct it sits in: no line break of any kind (`\\n`, `\\r`, NUL,
U+0085, U+2028, U+2029, form feed, ...), no closing quote, no trailing backslash, no
markup. Non-printable characters are written as their Python escape (`\\x00`, `\\u2028`)
so the reader still sees what was there.

    python_comment(text)     after `# ` on one line of generated Python
    python_string(text)      a Python string literal (repr)
    python_docstring(text)   inside a `\"\"\"` docstring
    dot_text(text)           inside a DOT "quoted string" or an HTML-like <label>
    tex_comment(text)        after `% ` on one line of LaTeX
    tex_math_name(text)      a name set in LaTeX math mode (letters, digits, Greek)
    tex_text_name(text)      a dotted name set as LaTeX text (a hook point's path)
    terminal(text)           a file name, path or value placed in a line on a terminal
    printable(text)          a line of user text (a source line) shown whole
    terminal_output(text)    everything the CLI prints, as a last line of defence

A terminal is another language: ESC starts a control sequence (colours, cursor moves,
a window title, a hyperlink), `\r` and `\b` overwrite what was printed, a line break
forges a line of the report (`1 proven`), a bidirectional override reorders it. So
user text reaches the terminal only through `terminal` or `printable`, and the CLI
passes all it prints through `terminal_output`, which keeps only the line breaks and
tabs tndsl wrote itself.

Python reads a coding declaration (`# coding: utf-7`) from the first two lines of a
file, so a comment built from user text must not be one of them; the generated
module's first two lines are fixed text (tests check it with such a file name).
"""
from __future__ import annotations

import html

# Printable characters that are escaped all the same: the escape character itself, so
# that an escaped text reads back unambiguously. Everything non-printable (control
# characters, line and paragraph separators, format characters such as bidirectional
# overrides, lone surrogates) is escaped too.
_ALWAYS_ESCAPE = frozenset("\\")


def _escape(ch: str, ascii_only: bool = False) -> str:
    if ch == "\\":
        return "\\\\"
    return (ascii if ascii_only else repr)(ch)[1:-1]  # `\n`, `\x00`, `\u2028`, `\xe9`


def one_line(text: str) -> str:
    """`text` as a single line of printable characters: backslashes doubled and every
    non-printable character (line breaks of every kind, NUL, bidirectional controls,
    lone surrogates) written as its Python escape. Unambiguous: different texts give
    different lines."""
    return "".join(ch if ch.isprintable() and ch not in _ALWAYS_ESCAPE else _escape(ch)
                   for ch in str(text))


def python_comment(text: str) -> str:
    """Safe after `#` on one line of Python: nothing in it ends the comment."""
    return one_line(text)


def python_string(text: str) -> str:
    """A Python string literal whose value is `text` (`repr`: one line, always)."""
    return repr(str(text))


def python_docstring(text: str) -> str:
    """Safe inside a `\"\"\"...\"\"\"` docstring: one line, no quote or backslash that the
    literal would interpret; the docstring's value shows `text` escaped (as
    `one_line`)."""
    return one_line(text).replace("\\", "\\\\").replace('"', '\\"')


def dot_text(text: str) -> str:
    """Safe inside a DOT double-quoted string and inside an HTML-like label: HTML
    escapes for `& < > " '`, a character reference for the backslash (DOT reads `\\"`
    as an escaped quote, so a string must never hold a backslash), one line."""
    return html.escape(one_line(text), quote=True).replace("\\", "&#92;")


def tex_comment(text: str) -> str:
    """Safe after `%` on one line of LaTeX: one line and ASCII only (other characters
    as their Python escape). TeX ignores everything after `%` up to the line's end, so
    a backslash there is inert and is kept."""
    return "".join(ch if ch.isascii() and ch.isprintable() else _escape(ch, ascii_only=True)
                   for ch in str(text))


_GREEK = {"σ": r"\sigma", "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta",
          "λ": r"\lambda", "μ": r"\mu", "π": r"\pi", "τ": r"\tau", "φ": r"\phi"}


def tex_math_name(text: str) -> str:
    """A name for LaTeX math mode: ASCII letters, digits, `,` and `.` as they are, `_`
    as `\\_`, common Greek letters as macros, anything else as `?` (pdflatex cannot set
    it; DOT and SVG keep the real name). No special character survives, so no name can
    open a group, end math mode or start a command."""
    out = []
    for ch in str(text):
        if ch == "_":
            out.append(r"\_")
        elif ch in _GREEK:
            out.append("{" + _GREEK[ch] + "}")  # braced: `σx` must not read as `\sigmax`
        elif ch.isascii() and (ch.isalnum() or ch in ",."):
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def tex_text_name(text: str) -> str:
    """A name set as LaTeX text, in the paper's roman (a hook point's path,
    `blocks.0.attn.pattern`): ASCII letters, digits and `.,@` as they are, `_` as `\\_`,
    anything else as `?`, so no name can open a group, enter math mode or start a
    command."""
    out = []
    for ch in str(text):
        if ch == "_":
            out.append(r"\_")
        elif ch.isascii() and (ch.isalnum() or ch in ".,@"):
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def terminal(text) -> str:
    """User text (a file name, a path, a name, a value) placed in a line printed on a
    terminal: one line of printable characters (`one_line`), so nothing in it can end
    the line, move the cursor, recolour or reorder what follows."""
    return one_line(text)


def printable(text) -> str:
    """A line of user text shown whole (a source line under an error): every
    non-printable character as its escape, backslashes kept as they are (the line is
    shown, not quoted)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def terminal_output(text: str) -> str:
    """What the CLI prints, made safe whatever it holds: line breaks (`\\n`) and tabs
    kept, every other non-printable character (ESC, `\\r`, `\\b`, NUL, bidirectional
    controls) written as its escape. User text was already made one line by `terminal`;
    this catches what passes through from elsewhere (an operating-system or library
    message quoting a path)."""
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else _escape(ch) for ch in text)
