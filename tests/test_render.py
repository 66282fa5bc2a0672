"""Figures: golden DOT, structure of the rendered SVG, formats, and no-Graphviz errors."""
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import tndsl
from tndsl.render import RenderError, figure
from tndsl.render import output
from conftest import EXAMPLES, ROOT

GOLDEN = ROOT / "tests" / "golden" / "dot"
SVG = "{http://www.w3.org/2000/svg}"

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
    assert tndsl.load(path, dims={"Layers": 1} if "gpt2" in path.name else None
                      ).render().source.startswith("digraph tndsl {")


def test_dot_is_byte_identical_across_hash_seeds():
    script = ("import tndsl, sys; sys.stdout.write(tndsl.load('examples/multihead_attention.tn')"
              ".render('out', expand=True).source)")
    outputs = {subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, env={"PYTHONHASHSEED": seed, "PATH": ""},
                              check=True).stdout for seed in ("0", "7", "99")}
    assert len(outputs) == 1


def svg(program, name=None, **options):
    data = output.render_bytes(figure(program, name, **options).source, "svg", outline=False)
    return ET.fromstring(data)


def classes(root, prefix):
    return [g for g in root.iter(f"{SVG}g") if g.get("class", "").startswith(prefix)]


def wire_labels(root):
    return [" ".join(t.text or "" for t in g.iter(f"{SVG}text")).strip()
            for g in classes(root, "edge wire")]


def test_one_node_per_tensor_instance_and_labelled_wires():
    root = svg(load("attention_head"), "out", expand=True)
    tensors = classes(root, "node tensor")
    # x W_Q W_K x inside the softmax, then x W_V W_O: seven tensor instances.
    assert len(tensors) == 7
    assert len(classes(root, "node tensor param")) == 4
    labels = wire_labels(root)
    assert len(labels) == 8 and set(labels) == {"Context", "Model", "Head"}
    assert labels.count("Context") == 2  # the query leg, and x's key leg out of the box


def test_copy_dots_one_per_shared_leg():
    # Multi-head: h meets W_Q and W_K inside the softmax (one dot) and the pattern, W_V
    # and W_O outside (another): exactly two copy dots, every wire at them is `Heads`.
    root = svg(load("multihead_attention"), "out", expand=True)
    assert len(classes(root, "node copy")) == 2
    assert wire_labels(root).count("Heads") == 5  # W_Q, W_K to one; it, W_V, W_O to the other


def test_one_dashed_cluster_per_box():
    assert len(classes(svg(load("nested_boxes"), "y"), "cluster box")) == 2
    assert len(classes(svg(load("attention_head"), "out", expand=True), "cluster box")) == 1
    assert len(classes(svg(load("orthodox"), "trace"), "cluster box")) == 0


def test_qk_expansion_draws_four_terms_joined_by_plus():
    root = svg(load("attn_only_2l"), "blocks.1.attn.scores", depth=1)
    assert len(classes(root, "cluster term")) == 4
    joiners = [" ".join(t.text for t in g.iter(f"{SVG}text")) for g in classes(root, "node joiner")]
    assert joiners == ["+", "+", "+"]
    # Each term: W_Q and W_K of layer 1 between two residual-stream reads.
    assert len(classes(root, "node tensor param")) == 8


def test_sum_shows_coefficients_and_minus():
    program = tndsl.parse("dim N = 2\ninput a[i: N]\ninput b[i: N]\ny[i] = a[i] - 3 * b[i]\n")
    root = svg(program)
    texts = [" ".join(t.text for t in g.iter(f"{SVG}text")) for g in classes(root, "node")]
    assert "−" in texts and "3" in texts


def test_formats(tmp_path):
    fig = load("attention_head").render("out")
    for suffix, magic in ((".svg", b"<?xml"), (".pdf", b"%PDF"), (".png", b"\x89PNG"),
                          (".dot", b"digraph"), (".tex", b"\\IfFileExists{standalone.cls}")):
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


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (TeX Live); the TikZ output is still "
                           "written, only its compilation is not tested here")
@pytest.mark.parametrize("example, name, depth", [("multihead_attention", "out", None),
                                                  ("attn_only_2l", "blocks.1.attn.scores", 1)])
def test_tikz_compiles_with_pdflatex(example, name, depth, tmp_path):
    fig = figure(load(example), name, depth=depth or 0, expand=depth is None)
    fig.save(tmp_path / "fig.tex")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "fig.tex"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")


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
