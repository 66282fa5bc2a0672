"""Figures: golden DOT, formats, no-Graphviz errors, TikZ compiled (geometry: test_figure_geometry)."""
import re
import shutil
import subprocess
import sys

import pytest

import tndsl
from tndsl.render import RenderError, figure
from tndsl.render import output
from conftest import EXAMPLES, ROOT

GOLDEN = ROOT / "tests" / "golden" / "dot"

# (example, equation, depth): what the gallery draws.
FIGURES = [
    ("orthodox", "trace", 0), ("orthodox", "matvec", 0), ("sum", "total", 0),
    ("nested_boxes", "y", 0), ("mlp", "z", 0), ("attention_head", "out", None),
    ("multihead_attention", "out", None), ("gpt2_small", "blocks.0.out", 1),
    ("attn_only_2l", "blocks.1.attn.scores", 1), ("llama", "blocks.0.out", 1),
    ("llama", "blocks.0.attn.scores", 1),
]


def load(example):
    dims = {"Layers": 2} if example == "gpt2_small" else {"Layers": 1} \
        if example == "llama" else None
    return tndsl.load(ROOT / "examples" / f"{example}.tn", dims=dims)


@pytest.mark.parametrize("example, name, depth", FIGURES, ids=lambda v: str(v))
def test_dot_matches_golden(example, name, depth, golden):
    fig = figure(load(example), name, depth=depth or 0, expand=depth is None)
    golden(GOLDEN / f"{example}.{name}.dot", fig.source)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_examples_final_equation_draws(path):
    layered = any(line.startswith("dim Layers") for line in path.read_text().splitlines())
    assert tndsl.load(path, dims={"Layers": 1} if layered else None
                      ).render().source.startswith("digraph tndsl {")


def test_dot_is_byte_identical_across_hash_seeds():
    script = ("import tndsl, sys; sys.stdout.write(tndsl.load('examples/multihead_attention.tn')"
              ".render('out', expand=True).source)")
    outputs = {subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, env={"PYTHONHASHSEED": seed, "PATH": ""},
                              check=True).stdout for seed in ("0", "7", "99")}
    assert len(outputs) == 1


def test_formats(tmp_path):
    fig = load("attention_head").render("out")
    for suffix, magic in ((".svg", b"<?xml"), (".pdf", b"%PDF"), (".png", b"\x89PNG"),
                          (".dot", b"digraph"), (".tex", b"\\documentclass{article}"),
                          (".tikz", b"% tndsl figure of out")):
        path = fig.save(tmp_path / f"fig{suffix}")
        assert path.read_bytes().startswith(magic), suffix
    small, large = fig.save(tmp_path / "a.png", dpi=72), fig.save(tmp_path / "b.png", dpi=216)
    width = lambda p: int.from_bytes(p.read_bytes()[16:20], "big")
    assert 2.9 < width(large) / width(small) < 3.1
    outlined = (tmp_path / "fig.svg").read_text()
    assert "<text" not in outlined and "glyph" in outlined  # no dependence on fonts
    with pytest.raises(RenderError, match="unknown figure format `.jpg`"):
        fig.save(tmp_path / "fig.jpg")


def test_jupyter_shows_svg():
    assert load("sum").render("total")._repr_svg_().lstrip().startswith("<?xml")


def test_without_graphviz_dot_output_works_and_others_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    fig = load("sum").render("total")
    assert fig.save(tmp_path / "f.dot").read_text() == fig.source
    with pytest.raises(RenderError) as info:
        fig.save(tmp_path / "f.svg")
    assert "apt-get install graphviz" in info.value.message
    assert info.value.message.count("\n") == 0


# pdflatex, TikZ and Times come with `make setup` (texlive-latex-base, texlive-pictures,
# texlive-fonts-recommended), so these run on a fresh machine.
@pytest.mark.parametrize("example, name, depth, hooks", [
    ("multihead_attention", "out", None, False), ("attn_only_2l", "blocks.1.attn.scores", 1, False),
    ("gpt2_small", "blocks.1.out", 1, True)])   # a hook map: `resid@1`, `blocks.0.ln1.x`
def test_tikz_compiles_with_pdflatex(example, name, depth, hooks, tmp_path):
    fig = figure(load(example), name, depth=depth or 0, expand=depth is None, width="6.75in",
                 hooks=hooks)
    fig.save(tmp_path / "fig.tex")
    # Uncompressed objects, so the page's size can be read back.
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                             r"\pdfobjcompresslevel=0 \input{fig.tex}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    pdf = (tmp_path / "fig.pdf").read_bytes()
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
    # The page is the figure, in PostScript points as the layout: no margin, no crop.
    assert abs(float(box.group(1)) - fig.scene.width) < 0.05
    assert abs(float(box.group(2)) - fig.scene.height) < 0.05


def test_cli_render(tmp_path):
    out = tmp_path / "qk.svg"
    result = subprocess.run([sys.executable, "-m", "tndsl", "render", "examples/attn_only_2l.tn",
                             "blocks.1.attn.scores", "--depth", "1", "-o", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"<?xml")
    dot = subprocess.run([sys.executable, "-m", "tndsl", "render", "examples/sum.tn"],
                         cwd=ROOT, capture_output=True, text=True)
    assert dot.returncode == 0 and dot.stdout.startswith("digraph tndsl {")
    bad = subprocess.run([sys.executable, "-m", "tndsl", "render", "examples/sum.tn", "nope"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "no equation `nope` to draw" in bad.stderr


def test_tikz_snippet_inputs_into_a_paper_set_in_times(tmp_path):
    """The .tikz needs nothing but \\usepackage{tikz}: it is \\input into an article in
    Times and the labels come out in the paper's face."""
    from tndsl.interp.paths import expand_paths
    load("multihead_attention").render("out", expand=True).save(tmp_path / "head.tikz")
    # a figure with term labels (L0H·→L1H·), Σ marks and a left-hand side
    expand_paths(load("attn_only_2l"), "logits").figure(width="6.75in").save(
        tmp_path / "paths.tikz")
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{mathptmx}\n\\usepackage{tikz}\n"
        "\\begin{document}\nBefore.\n\n\\input{head.tikz}\n\n\\input{paths.tikz}\n\n"
        "After.\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                             "paper.tex"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "paper.pdf").read_bytes().startswith(b"%PDF")
    # The fonts pdflatex embedded (its log lists their files): the labels are in the
    # paper's Times (URW's utm*), the only text face the document has.
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "/urw/times/utmri8a.pfb" in log


def test_pdf_embeds_a_times_face_and_a_missing_face_is_one_line(tmp_path):
    from tndsl.render.fonts import FontError
    fig = load("sum").render("total")
    pdf = fig.save(tmp_path / "f.pdf").read_bytes()
    assert b"NimbusRoman" in pdf or b"TeXGyreTermes" in pdf
    assert b"DejaVu" not in pdf
    with pytest.raises(FontError) as info:
        load("sum").render("total", font="No Such Face Anywhere")
    assert "not installed" in info.value.message and "\n" not in info.value.message


def test_a_png_past_cairos_limit_is_refused_with_the_dpi_that_fits(tmp_path):
    fig = load("attention_head").render("out", expand=True)
    limit = output.CAIRO_MAX_PIXELS * 72 / fig.scene.width
    with pytest.raises(RenderError, match=r"at most \d+ dpi fits"):
        fig.save(tmp_path / "f.png", dpi=int(limit) + 1)
    assert not (tmp_path / "f.png").exists()


def test_a_figure_too_costly_to_lay_out_is_refused_at_its_equation():
    from tndsl.lang.errors import ResourceError
    with pytest.raises(ResourceError) as info:
        tndsl.load(ROOT / "examples" / "attn_only_2l.tn").render("logits", expand=True)
    assert info.value.span is not None and "--depth" in info.value.hint


def test_cli_render_options(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "tndsl", "render", *argv], cwd=ROOT,
                              capture_output=True, text=True)
    out = tmp_path / "head.pdf"
    result = run("examples/attention_head.tn", "out", "--expand", "--width", "6.75in",
                 "--font-size", "8", "--legs", "p/m", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"%PDF")
    check = run("examples/sum.tn", "distributes", "--check", "-o", str(tmp_path / "c.tikz"))
    assert check.returncode == 0, check.stderr
    assert "$=$" in (tmp_path / "c.tikz").read_text()
    hooks = run("examples/gpt2_small.tn", "blocks.0.out", "--depth", "1", "--hooks",
                "--dim", "Layers=1")
    assert hooks.returncode == 0 and "blocks.0.attn.out" in hooks.stdout
    for argv, message in [
            (["--width", "1in", "--font-size", "10"], "does not fit in 1.00 in"),
            (["--legs", "q/m"], "`q` is not an open leg"),
            (["--font", "No Such Face Anywhere", "-o", str(tmp_path / "f.pdf")],
             "font `No Such Face Anywhere` is not installed"),
            (["nope", "--check"], "no check `nope` to draw")]:
        bad = run("examples/attention_head.tn", *([] if argv[0] == "nope" else ["out"]),
                  *argv)
        assert bad.returncode == 1 and message in bad.stderr, (argv, bad.stderr)
        assert "Traceback" not in bad.stderr


def _usage(capsys, *argv) -> tuple[int, str]:
    """Run the CLI in this process: its exit code and what it printed on stderr."""
    from tndsl import cli
    try:
        code = cli.main(list(argv))
    except SystemExit as e:   # argparse's usage errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [   # refused before the file is read
    (["--width", "wide"], "width `wide` is not a length"),
    (["--font-size", "100"], "must be from 4 to 72 pt"),
    (["--font-size", "nan"], "must be from 4 to 72 pt"),
    (["--legs", "p/p"], "`p` is given on both sides"),
    (["--legs", "pm"], "write LEFT/RIGHT"),
    (["--check", "--hooks"], "--hooks draws an equation's hook map, not a check")])
def test_cli_render_usage_mistakes_are_refused_at_once(argv, message, capsys):
    code, err = _usage(capsys, "render", "examples/attention_head.tn", "out", *argv)
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv, message", [
    (["--render", "x.dot", "--width", "wide"], "width `wide` is not a length"),
    (["--render", "x.dot", "--font-size", "0"], "must be from 4 to 72 pt"),
    (["--render", "x.dot", "--legs", "p,v/p"], "`p` is given on both sides"),
    (["--width", "6.75in"], "--width sets the figure: give --render FIGURE too"),
    (["--dpi", "100"], "--dpi sets the figure: give --render FIGURE too")])
def test_cli_paths_figure_options_are_checked_as_render_checks_them(argv, message, capsys):
    code, err = _usage(capsys, "paths", "examples/attn_only_2l.tn", "logits", *argv)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_cli_paths_render_takes_the_figure_options_of_render(tmp_path):
    """`paths --render` has render's --width, --font-size, --font, --legs, --dpi and
    --no-outline: the same definitions (help and checks), passed to the figure."""
    from tndsl.interp.paths import expand_paths

    def run(command, *argv):
        return subprocess.run([sys.executable, "-m", "tndsl", command, *argv], cwd=ROOT,
                              capture_output=True, text=True)

    def options(help_text):
        start = help_text.index("--width LENGTH  ")
        return re.sub(r"\s+", " ", help_text[start:help_text.index("--no-outline  ")])
    assert options(run("paths", "--help").stdout) == options(run("render", "--help").stdout)
    base = ["examples/attn_only_2l.tn", "logits", "-o", str(tmp_path / "p.tn")]
    dot = tmp_path / "paths.dot"
    good = run("paths", *base, "--render", str(dot), "--width", "6.75in", "--font-size", "8",
               "--legs", "p/v")
    assert good.returncode == 0, good.stderr
    expected = expand_paths(tndsl.load(ROOT / "examples" / "attn_only_2l.tn"), "logits") \
        .figure(width="6.75in", font_size=8, legs="p/v")
    assert dot.read_text() == expected.source
    assert expected.scene.width <= 6.75 * 72 and expected.scene.font_size == 8
    narrow = run("paths", *base, "--render", str(dot), "--width", "3in", "--font-size", "8")
    assert narrow.returncode == 1 and "does not fit in 3.00 in" in narrow.stderr
    # said at the equation expanded, in the user's file, not in the generated text
    assert narrow.stderr.startswith("examples/attn_only_2l.tn:") or \
        "attn_only_2l.tn:" in narrow.stderr.splitlines()[0]
    assert "the figure of the paths of `logits`" in narrow.stderr
    assert "logits[p, v] =" in narrow.stderr and "_figure" not in narrow.stderr


def test_another_face_is_measured_and_embedded(tmp_path):
    # Latin Modern (Debian fonts-lmodern, installed by `make setup`): measured from its own
    # file, so a label is sized for it; the PDF embeds it and the .tex loads lmodern.
    times = load("sum").render("total").scene
    latin = load("sum").render("total", font="Latin Modern Roman").scene
    assert latin.font.families == ("Latin Modern Roman",)
    assert latin.width != times.width
    pdf = load("sum").render("total", font="Latin Modern Roman").save(tmp_path / "f.pdf")
    assert b"LMRoman" in pdf.read_bytes()
    tex = load("sum").render("total", font="Latin Modern Roman").save(tmp_path / "f.tex")
    assert r"\usepackage{lmodern}" in tex.read_text()


def test_graphviz_runs_under_a_time_limit_with_a_clear_message():
    fig = load("sum").render("total")
    with pytest.raises(RenderError, match=r"did not finish drawing the figure in 1e-09 s"):
        output.run_dot(fig.source, "-Tsvg", timeout=1e-9)


@pytest.mark.skipif(shutil.which("neato") is None, reason="needs Graphviz (make test installs it)")
@pytest.mark.parametrize("example, name", [("attention_head", "out"),
                                           ("gpt2_small", "blocks.0.out")])
def test_box_label_scripts_are_set_at_70_percent_as_tex_and_tensor_labels_set_them(
        example, name):
    """softmax_s, layernorm⁰: Graphviz keeps a <SUB>/<SUP> at the label's full size; the
    figure sets them at 70% (TeX's script size, and a tensor's W_Q), read back from the
    SVG Graphviz draws (text kept as text)."""
    program = tndsl.load(ROOT / "examples" / f"{example}.tn",
                         dims={"Layers": 1} if example == "gpt2_small" else None)
    fig = program.render(name, expand=example == "attention_head", depth=2)
    svg = output.render_bytes(fig.scene, "svg", outline=False).decode()
    labels = re.findall(r'<g id="node\d+" class="node boxlabel">(.*?)</g>', svg, re.S)
    assert labels
    scripts = 0
    for label in labels:
        spans = re.findall(r'<text [^>]*?(baseline-shift="(?:sub|super)" )?'
                           r'font-size="([\d.]+)"', label)
        base = max(float(size) for _, size in spans)
        for shift, size in spans:
            if shift:
                scripts += 1
                assert abs(float(size) - 0.7 * base) < 0.01, label
    assert scripts


def test_hook_names_reach_latex_only_through_the_sanitiser(tmp_path):
    """A hook point named with characters LaTeX cannot set in text (`σ_x`) is written
    `?\\_x`; the figure compiles, and DOT keeps the real name."""
    program = tndsl.parse("dim N = 2\ninput a[i: N]\nσ_x[i] = relu(a[i])\n"
                          "y[i] = σ_x[i] * a[i]\n", "mine.tn")
    fig = program.render("y", hooks=True)
    assert {t.tex for t in fig.scene.texts if t.cls.startswith("hook")} == {"y", r"?\_x"}
    assert "σ_x" in fig.source
    fig.save(tmp_path / "fig.tex")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                             "fig.tex"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
