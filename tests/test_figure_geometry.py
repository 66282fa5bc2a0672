"""Figure geometry, measured on the layout (`Figure.scene`, in pt), not on pixels: one
baseline per row, legs on one side and horizontal to the edge, nothing on a box border,
nested boxes apart, widths at `width=`. Run over the whole gallery, every example's
final equation, a block of each family and two `tndsl paths` figures."""
import sys

import pytest
from hypothesis import HealthCheck, given, settings

import tndsl
from tndsl.interp.paths import expand_paths
from tndsl.render import LayoutError, figure
from tndsl.render.layout import BORDER
from conftest import EXAMPLES, ROOT
from fuzzing import valid_programs

sys.path.insert(0, str(ROOT / "examples"))
from figures import GALLERY  # noqa: E402  (the gallery's own list)

TOLERANCE = 1.0   # pt
PAPER = 6.75 * 72  # a two-column paper's text width


def _load(stem, dims=None):
    return tndsl.load(ROOT / "examples" / f"{stem}.tn", dims=dims)


def _gallery():
    for stem, name, depth, dims, title in GALLERY:
        yield pytest.param(lambda s=stem, n=name, d=depth, m=dims, **o: figure(
            _load(s, m), n, expand=d is None, depth=d or 0, **o), id=f"gallery-{title}")


def _finals():
    for path in EXAMPLES:
        dims = {"Layers": 1} if path.stem in FAMILIES else None
        yield pytest.param(lambda p=path, m=dims, **o: tndsl.load(p, dims=m).render(**o),
                           id=f"final-{path.stem}")


# The model families: every example with a stack of blocks (`dim Layers`).
FAMILIES = tuple(p.stem for p in EXAMPLES
                 if any(line.startswith("dim Layers") for line in p.read_text().splitlines()))


def _blocks():
    for stem in FAMILIES:
        yield pytest.param(lambda s=stem, **o: figure(_load(s, {"Layers": 1}), "blocks.0.out",
                                                      depth=1, **o), id=f"block-{stem}")


def _paths():
    for name in ("logits", "blocks.1.attn.scores"):
        yield pytest.param(lambda n=name, **o: expand_paths(_load("attn_only_2l"), n).figure(**o),
                           id=f"paths-{name}")


ALL = list(_gallery()) + list(_finals()) + list(_blocks()) + list(_paths())


def _baselines(scene):
    return [row.baseline for row in scene.rows]


def _on_a_baseline(y, scene):
    return min(abs(y - b) for b in _baselines(scene)) <= TOLERANCE


@pytest.mark.parametrize("make", ALL)
def test_one_baseline_per_row(make):
    baseline_rule(make().scene)


def baseline_rule(scene):
    for term in scene.terms:
        assert _on_a_baseline(term.main_wire, scene)
        assert term.bottom <= term.main_wire <= term.top
    for text in scene.texts:
        if text.cls in ("joiner", "coefficient"):
            assert _on_a_baseline(text.y, scene), text
    # The main wire: the tensors of every term sit on their row's baseline.
    for shape in scene.shapes:
        if shape.kind in ("param", "fixed", "input", "activation", "instance"):
            assert _on_a_baseline(shape.y, scene), shape


@pytest.mark.parametrize("make", ALL)
def test_legs_leave_on_one_side_horizontally_to_the_edge(make):
    leg_rule(make().scene)


def leg_rule(scene):
    sides: dict[str, set] = {}
    for wire in scene.wires:
        if wire.cls != "leg":
            continue
        sides.setdefault(wire.index, set()).add(wire.side)
        # The piece that leaves runs horizontally to the term's edge on its side.
        (ax, ay), (bx, by) = wire.points[:2] if wire.side == "left" else wire.points[-2:]
        assert abs(ay - by) <= TOLERANCE, wire
        end = ax if wire.side == "left" else bx
        edges = [t.x0 if wire.side == "left" else t.x1 for t in scene.terms]
        assert min(abs(end - e) for e in edges) <= TOLERANCE, wire
        # ...and ends outside every box.
        y = ay
        for box in (s for s in scene.shapes if s.kind == "box"):
            inside = box.x - box.w / 2 - TOLERANCE <= end <= box.x + box.w / 2 + TOLERANCE \
                and box.y - box.h / 2 <= y <= box.y + box.h / 2
            assert not inside, (wire, box)
    assert all(len(s) == 1 for s in sides.values()), sides


@pytest.mark.parametrize("make", ALL)
def test_no_dot_on_a_box_border_and_nested_boxes_apart(make):
    border_rule(make().scene)


def border_rule(scene):
    boxes = [s for s in scene.shapes if s.kind == "box"]
    for dot in (s for s in scene.shapes if s.kind in ("copy", "ones")):
        r = dot.w / 2
        for box in boxes:
            left, right = box.x - box.w / 2, box.x + box.w / 2
            bottom, top = box.y - box.h / 2, box.y + box.h / 2
            if bottom - r <= dot.y <= top + r:
                assert min(abs(dot.x - left), abs(dot.x - right)) > r, (dot, box)
            if left - r <= dot.x <= right + r:
                assert min(abs(dot.y - bottom), abs(dot.y - top)) > r, (dot, box)
    for outer in boxes:
        for inner in boxes:
            if inner is outer:
                continue
            gaps = (inner.x - inner.w / 2 - (outer.x - outer.w / 2),
                    outer.x + outer.w / 2 - (inner.x + inner.w / 2),
                    inner.y - inner.h / 2 - (outer.y - outer.h / 2),
                    outer.y + outer.h / 2 - (inner.y + inner.h / 2))
            if all(g >= 0 for g in gaps):          # inner is nested in outer
                assert min(gaps) >= BORDER - 0.01, (outer, inner)


@pytest.mark.parametrize("make", ALL)
def test_at_a_paper_width_it_fits_with_one_baseline_per_row_or_says_why(make):
    try:
        scene = make(width="6.75in").scene
    except LayoutError as e:
        assert "does not fit in 6.75 in" in e.message and "\n" not in e.message
        return
    assert scene.width <= PAPER + 0.01 and 7 <= scene.font_size <= 10
    for term in scene.terms:
        assert _on_a_baseline(term.main_wire, scene)
    for row in scene.rows:
        assert row.x1 <= PAPER


@pytest.mark.parametrize("stem, name, depth", [
    ("attention_head", "out", None), ("attn_only_2l", "blocks.1.attn.scores", 1)])
def test_the_head_and_the_qk_expansion_fit_a_paper_with_labels_of_7pt(stem, name, depth):
    scene = figure(_load(stem), name, expand=depth is None, depth=depth or 0,
                   width="6.75in").scene
    assert scene.width <= PAPER + 0.01
    assert scene.font_size >= 7
    assert min(t.size for t in scene.texts if t.cls == "wirelabel") >= 0.9 * 7 - 0.01
    if stem == "attn_only_2l":  # four terms, wrapped into rows: one baseline each
        assert len(scene.rows) >= 2 and len(scene.terms) == 4


@pytest.mark.parametrize("width", ["3.25in", "6.75in"])
@pytest.mark.parametrize("stem, name, depth, dims", [
    (g[0], g[1], g[2], g[3]) for g in GALLERY])
def test_every_gallery_figure_is_no_wider_than_width_or_says_why(stem, name, depth, dims,
                                                                width):
    limit = float(width[:-2]) * 72
    try:
        scene = figure(_load(stem, dims), name, expand=depth is None, depth=depth or 0,
                       width=width).scene
    except LayoutError as e:
        assert "does not fit in" in e.message and "\n" not in e.message
        return
    assert scene.width <= limit + 0.01
    assert 7 <= scene.font_size <= 10


def test_an_explicit_font_size_is_kept_and_a_figure_too_wide_for_it_is_refused():
    program = _load("attention_head")
    scene = figure(program, "out", expand=True, font_size=9).scene
    assert scene.font_size == 9
    assert {t.size for t in scene.texts if t.cls == "wirelabel"} == {8.1}
    with pytest.raises(LayoutError, match="does not fit in 2.00 in"):
        figure(program, "out", expand=True, width="2in", font_size=9)


def test_default_type_is_10pt_with_9pt_wire_labels():
    scene = figure(_load("sum"), "total").scene
    assert scene.font_size == 10
    assert {t.size for t in scene.texts if t.cls == "wirelabel"} == {9.0}


def test_the_mlp_batch_leg_leaves_its_box():
    scene = _load("mlp").render().scene
    box = max((s for s in scene.shapes if s.kind == "box"), key=lambda s: s.w)
    legs = [w for w in scene.wires if w.cls == "leg"]
    assert legs
    for wire in legs:
        end = wire.points[0] if wire.side == "left" else wire.points[-1]
        assert not (box.x - box.w / 2 <= end[0] <= box.x + box.w / 2), wire


def test_legs_default_first_left_last_right_and_legs_overrides():
    program = tndsl.parse("dim N = 2\ndim M = 3\ninput A[i: N, j: M]\ninput B[i: N, j: M]\n"
                          "t[i, j] = A[i, j] + B[i, j]\n")
    sides = {(w.index, w.side) for w in program.render().scene.wires if w.cls == "leg"}
    assert sides == {("i", "left"), ("j", "right")}
    sides = {(w.index, w.side) for w in program.render(legs="/i,j").scene.wires
             if w.cls == "leg"}
    assert sides == {("i", "right"), ("j", "right")}
    with pytest.raises(LayoutError, match="the open legs are: i, j"):
        program.render(legs="k/j")


def test_two_legs_of_one_dim_carry_their_index_names():
    program = tndsl.parse("dim N = 2\ninput A[i: N, j: N]\nt[i, j] = A[i, j]\n")
    labels = [t.html for t in program.render().scene.texts if t.cls == "wirelabel"]
    assert sorted(labels) == ["<I>i</I>: <I>N</I>", "<I>j</I>: <I>N</I>"]


def test_check_is_drawn_as_lhs_equals_rhs():
    scene = _load("sum").render(check="distributes").scene
    joiners = [t.html for t in scene.texts if t.cls == "joiner"]
    assert joiners == ["+", "=", "+"]


def test_paths_figure_reads_name_equals_labelled_terms():
    expansion = expand_paths(_load("attn_only_2l"), "logits")
    scene = expansion.figure().scene
    labels = [t.html for t in scene.texts if t.cls == "termlabel"]
    assert labels == ["<I>direct</I>", "<I>L0H·</I>", "<I>L1H·</I>", "<I>virtual L0H·→L1H·</I>"]
    lhs = [s for s in scene.shapes if s.name == "logits"]
    assert len(lhs) == 1 and [t.html for t in scene.texts if t.cls == "joiner"][0] == "="
    # a head leg summed inside a term is a labelled sum (its copy dot marked Σ), not a
    # lone dot: one for each of L0H· and L1H·, two for the virtual heads
    sums = [t for t in scene.texts if t.cls == "sum"]
    assert len(sums) == 4 and not any(s.kind == "ones" for s in scene.shapes)
    dots = [(s.x, s.y) for s in scene.shapes if s.kind == "copy"]
    for text in sums:   # each right under a copy dot
        assert any(abs(text.x - x) < 0.01 and 0 < y - text.y < 12 for x, y in dots)


def test_hook_map_labels_each_intermediate_with_its_hook_point():
    scene = figure(_load("gpt2_small", {"Layers": 1}), "blocks.0.out", depth=1,
                   hooks=True).scene
    hooks = {t.html for t in scene.texts if t.cls == "hook"}
    assert {"blocks.0.attn.out", "blocks.0.mlp.post"} <= hooks


def test_layer_numbers_are_superscripts_everywhere_and_scripts_stack():
    from tndsl.render.expand import math_label
    assert math_label("resid0") == ("resid", "", "0")
    assert math_label("blocks.1.attn.W_Q") == ("W", "Q", "1")
    dot = figure(_load("gpt2_small", {"Layers": 1}), "blocks.0.out", depth=1).source
    assert 'ROWSPAN="2"' in dot   # W_out with 0 above `out`


def test_figures_are_byte_deterministic():
    a = figure(_load("multihead_attention"), "out", expand=True)
    b = figure(_load("multihead_attention"), "out", expand=True)
    assert a.source == b.source
    from tndsl.render import tikz
    assert tikz.snippet(a.scene) == tikz.snippet(b.scene)


@pytest.mark.slow  # reason: 15 generated programs, each elaborated and drawn twice (~30 s)
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(valid_programs())
def test_the_rules_hold_for_any_program(text):
    """Programs the fuzzer writes (not in the repo): every equation drawn, at depth 0 and
    expanded, keeps every rule, or is refused with a located error."""
    from tndsl.lang.errors import TnError
    try:
        program = tndsl.parse(text, "fuzz.tn")
    except TnError:
        return
    for eq in program.network.equations:
        for expand in (False, True):
            try:
                scene = figure(program, eq.name, expand=expand, width="6.75in").scene
            except TnError as e:
                assert "\n" not in e.message
                continue
            baseline_rule(scene)
            leg_rule(scene)
            border_rule(scene)


def test_a_norm_box_carries_its_instance():
    program = _load("gpt2_small", {"Layers": 1})
    final = {t.html for t in figure(program, "logits", depth=3).scene.texts
             if t.cls == "boxlabel"}
    assert any(label.endswith(" (ln_final)") for label in final), final
    block = {t.html for t in figure(program, "blocks.0.out", depth=2).scene.texts
             if t.cls == "boxlabel"}
    assert any("<sup>0</sup>" in label for label in block), block
