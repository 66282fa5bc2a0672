"""Text that leaves a program for another language goes through one sanitiser
(`tndsl/lang/text.py`): file names and paths with newlines, quotes, backslashes, NUL, LaTeX
specials and Unicode line separators reach generated Python, DOT, SVG and TikZ without
adding a statement, a node or a command, and every output still parses."""
import ast
import importlib.util
import html
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

import tndsl
from tndsl.lang import text
from conftest import ROOT

PROGRAM = """dim N = 3
dim Größe = 4
input x[i: N, g: Größe]
param W[g: Größe, j: N]
y[i, j] = x[i, g] * W[g, j] / sqrt(Größe)
"""

# Each is a file name (or a part of one) an attacker might choose.
INJECTION = 'a\nimport os; os.system("touch PWNED")\n#.tn'
HOSTILE = [
    INJECTION,
    "quote'\"\"\"'''.tn",
    "back\\slash\\.tn",
    "trailing backslash\\",
    "carriage\rreturn = __import__('os').system('touch PWNED').tn",
    "line\u2028separator\u2029paragraph\x85next\x0bvt\x0cff\x1cfs.tn",
    "latex \\ { } $ % # _ ^ ~ & ^^J \\input{passwd} \\end{document}.tn",
    "dot \" ] ; } digraph { n [label=<x>]; <b> &amp; -- -->.tn",
    "bidi \u202e\u2066 zero\u200bwidth é σ.tn",
    "x coding: utf-7 +AAo-import os+ADs-os.system(+ACI-touch PWNED+ACI-)+AAo-.tn",
]
NUL = "nul\x00byte/dir.tn"  # the API only: no file name holds NUL or `/`


def _module_shape(source: str) -> str:
    """The syntax tree of a generated module, as text (comments are not in it)."""
    return ast.dump(ast.parse(source))


# ---- the sanitiser itself ------------------------------------------------------------

@pytest.mark.parametrize("value", HOSTILE + [NUL], ids=range(len(HOSTILE) + 1))
def test_every_sanitised_form_is_one_line_that_cannot_escape_its_context(value):
    for form in (text.one_line, text.python_comment, text.python_string,
                 text.python_docstring, text.dot_text, text.tex_comment):
        out = form(value)
        assert len(out.splitlines()) == 1 and out.isprintable(), (form.__name__, out)
    # A comment: the line after it is still the only statement.
    tree = ast.parse(f"# {text.python_comment(value)}\nx = 1\n")
    assert len(tree.body) == 1
    # A string literal: the same text comes back.
    assert ast.literal_eval(text.python_string(value)) == value
    # A docstring: one string constant whose value is the one-line form.
    tree = ast.parse(f'"""{text.python_docstring(value)}"""\n')
    assert len(tree.body) == 1 and tree.body[0].value.value == text.one_line(value)
    # DOT: no quote, backslash or markup left to end a string or an HTML label.
    assert not set(text.dot_text(value)) & set('"\\<>')
    assert html.unescape(text.dot_text(value)) == text.one_line(value)
    # TeX: a comment is ASCII; a math name has no special character of its own.
    assert text.tex_comment(value).isascii()
    assert re.fullmatch(r"([A-Za-z0-9,.?]|\\_|\{\\[a-z]+\})*", text.tex_math_name(value))
    # ...and a text name (a hook point's path) none either, not even a macro.
    assert re.fullmatch(r"([A-Za-z0-9,.@?]|\\_)*", text.tex_text_name(value))


def test_different_texts_stay_different():
    # An escape must not make two names look the same (`a\nb` the file vs `a\\nb`).
    names = ["a\nb", "a\\nb", "a\\\nb", "a\u2028b", "a\\u2028b"]
    assert len({text.one_line(n) for n in names}) == len(names)


# ---- generated Python ----------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE + [NUL], ids=range(len(HOSTILE) + 1))
def test_a_hostile_source_name_adds_no_statement_to_generated_code(name):
    benign = tndsl.parse(PROGRAM, "model.tn").compile(name="Model").source
    hostile = tndsl.parse(PROGRAM, name).compile(name="Model").source
    # Same syntax tree as the same program under a plain name: the file name added no
    # statement, no expression and no string anywhere (comments are not in the tree).
    assert _module_shape(hostile) == _module_shape(benign)
    # It appears once, on line 3 (never in the first two, where Python reads a coding
    # declaration), as a string literal inside a comment.
    lines = hostile.splitlines()
    assert lines[:2] == benign.splitlines()[:2]
    assert lines[2] == f"# Source: {name!r}"
    assert len(lines) == len(benign.splitlines())
    model = tndsl.parse(PROGRAM, name).module()
    assert type(model).__name__.isidentifier()


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_compiling_and_importing_a_hostile_file_name_runs_nothing(name, tmp_path, monkeypatch,
                                                                  capsys):
    from tndsl.cli import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(PROGRAM, encoding="utf-8")
    assert main(["compile", name, "-o", "model.py"]) == 0
    # Importing the written file (so a coding declaration would count), loading it
    # through the API, and `verify --compiled` each execute the generated module.
    spec = importlib.util.spec_from_file_location("tndsl_hostile_model", "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defined = {k: v for k, v in vars(module).items() if not k.startswith("__")}
    # Exactly what the same program defines under a plain file name, but the root
    # class's name (made from the file name).
    (tmp_path / "plain.tn").write_text(PROGRAM, encoding="utf-8")
    plain_source = tndsl.load("plain.tn").compile().source
    plain: dict = {}
    exec(compile(plain_source, "plain", "exec"), plain)
    plain = {k for k in plain if not k.startswith("__")}
    root = [k for k, v in defined.items() if isinstance(v, type) and k not in plain]
    assert len(root) == 1 and set(defined) - set(root) == plain - {"Plain"}
    (tmp_path / "plain.tn").unlink()
    tndsl.load(name).module()
    assert main(["verify", "--compiled", name]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "model.py"])


# ---- figures: DOT, SVG, TikZ ---------------------------------------------------------

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's `dot` is not installed (Debian package graphviz, which "
                                      "`make test` installs): these tests lay the DOT out")


def _layout(dot_text: str) -> tuple:
    """What Graphviz drew: every node and edge with its attributes, minus the comment."""
    from tndsl.render.output import run_dot
    import json
    layout = json.loads(run_dot(dot_text, "-Tjson0"))
    for item in [layout, *layout.get("objects", [])]:
        item.pop("comment", None)  # subgraphs inherit the graph's
    return layout


@needs_dot
@pytest.mark.parametrize("name", HOSTILE + [NUL], ids=range(len(HOSTILE) + 1))
def test_a_hostile_source_name_reaches_figures_only_as_inert_text(name, tmp_path):
    benign = tndsl.parse(PROGRAM, "model.tn").render()
    figure = tndsl.parse(PROGRAM, name).render()
    # DOT: Graphviz parses it and draws exactly what it draws for the plain name.
    assert _layout(figure.source) == _layout(benign.source)
    diff = [(a, b) for a, b in zip(figure.source.splitlines(), benign.source.splitlines())
            if a != b]
    assert len(diff) == 1 and diff[0][0].startswith("  comment=")
    # SVG: well-formed XML with the same elements; the name is inside one comment.
    svg = figure.save(tmp_path / "f.svg", outline=False).read_bytes()
    plain = benign.save(tmp_path / "g.svg", outline=False).read_bytes()
    tags = [e.tag for e in ET.fromstring(svg).iter()]
    assert tags == [e.tag for e in ET.fromstring(plain).iter()]
    # TikZ: the name is one `%` comment line; every other line is the plain figure's.
    tex = figure.save(tmp_path / "f.tex").read_text(encoding="utf-8")
    plain_tex = benign.save(tmp_path / "g.tex").read_text(encoding="utf-8")
    assert tex.isascii()
    lines, plain_lines = tex.splitlines(), plain_tex.splitlines()
    assert lines[1].startswith("% tndsl figure of y from ")
    assert lines[:1] + lines[2:] == plain_lines[:1] + plain_lines[2:]


@needs_dot
def test_names_latex_cannot_set_are_sanitised_in_tikz(tmp_path):
    # `Größe` is a legal dim name; in TikZ it must not reach pdflatex raw, in a wire
    # label or inside the coefficient 1/sqrt(Größe).
    figure = tndsl.parse(PROGRAM, "model.tn").render(expand=True)
    tex = figure.save(tmp_path / "f.tex").read_text(encoding="utf-8")
    assert tex.isascii()
    assert r"\mathit{Gr??e}" in tex
    assert "Größe" in figure.source  # DOT and SVG keep the real name


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex not installed (the TikZ text is checked above)")
@needs_dot
@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_tikz_with_a_hostile_source_name_compiles(name, tmp_path):
    tndsl.parse(PROGRAM, name).render().save(tmp_path / "f.tex")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-no-shell-escape",
                             "f.tex"], cwd=tmp_path, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "f.pdf").exists() and not (tmp_path / "PWNED").exists()
