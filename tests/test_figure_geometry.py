"""Figure geometry, measured on the layout (`Figure.scene`, in pt), not on pixels: one
baseline per row, legs on one side and horizontal to the edge, nothing on a box border,
nested boxes apart, widths at `width=`. Run over the whole gallery, every example's
final equation, a block of each family and two `tndsl paths` figures."""
import re
import sys

import pytest
from hypothesis import HealthCheck, given, settings

import tndsl
from tndsl.interp.paths import expand_paths
from tndsl.render import LayoutError, figure
from tndsl.render.layout import BORDER, MARGIN
from conftest import EXAMPLES, ROOT
from fuzzing import valid_programs

sys.path.insert(0, str(ROOT / "examples"))
from figures import GALLERY, HOOK_MAPS as GALLERY_HOOK_MAPS  # noqa: E402  (the gallery's lists)

TOLERANCE = 1.0   # pt
PAPER = 6.75 * 72  # a two-column paper's text width


def _load(stem, dims=None):
    return tndsl.load(ROOT / "examples" / f"{stem}.tn", dims=dims)


def _gallery():
    for hooks, (stem, name, depth, dims, title) in [(False, g) for g in GALLERY] + \
            [(True, g) for g in GALLERY_HOOK_MAPS]:
        yield pytest.param(lambda s=stem, n=name, d=depth, m=dims, h=hooks, **o: figure(
            _load(s, m), n, expand=d is None, depth=d or 0, hooks=h, **o),
            id=f"gallery-{title}")


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
    outer_edge_rule(scene)


def outer_edge_rule(scene):
    """A row's first term starts at the row's left edge and its last term ends at the
    row's right edge (unless a joiner or coefficient is set beyond it), so their open
    legs (which end at their term's edge) reach the row's outer edges; a one-row
    figure's row spans the whole figure, margins aside.
    Inner terms of a sum keep their legs to their own edges, as the reference figures
    draw them (shared/design/figure-sum-and-box.png)."""
    for row in scene.rows:
        terms = [t for t in scene.terms if abs(t.baseline - row.baseline) <= TOLERANCE]
        marks = [t.x for t in scene.texts if t.cls in ("joiner", "coefficient")
                 and abs(t.y - row.baseline) <= TOLERANCE]
        first, last = min(t.x0 for t in terms), max(t.x1 for t in terms)
        if not any(x < first for x in marks):    # nothing set before it: `+`, `1/√Head`
            assert abs(first - row.x0) <= TOLERANCE, (row, terms)
        if not any(x > last for x in marks):
            assert abs(last - row.x1) <= TOLERANCE, (row, terms)
    if len(scene.rows) == 1:
        row = scene.rows[0]
        assert abs(row.x0 - MARGIN) <= TOLERANCE and \
            abs(row.x1 - (scene.width - MARGIN)) <= TOLERANCE, (row, scene.width)


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
                # each border is a centre and a size rounded to 0.01 pt: 0.02 pt apart
                assert min(gaps) >= BORDER - 0.02, (outer, inner)


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


@pytest.mark.parametrize("spec, sides", [
    ("i/j", {"i": "left", "j": "right"}), ("/i,j", {"i": "right", "j": "right"}),
    ("i, j/", {"i": "left", "j": "left"}), ("j/i", {"j": "left", "i": "right"}),
    ({"i": "right", "j": "left"}, {"i": "right", "j": "left"})])
def test_legs_put_each_open_leg_on_its_side_empty_sides_too(spec, sides):
    scene = _load("sum").render("total", legs=spec).scene
    drawn = {(w.index, w.side) for w in scene.wires if w.cls == "leg"}
    assert drawn == set(sides.items())
    leg_rule(scene)


@pytest.mark.parametrize("spec, message", [
    ("x/j", "`x` is not an open leg of the figure; the open legs are: i, j"),
    ("i/", "missing: j (the open legs are: i, j)"),
    ("/", "missing: i, j"),
    ("i/i", "`i` is given on both sides"),
    ("i,i/j", "`i` is given twice"),
    ("i j/", "`i j` is not an index name"),
    ("i,,j/", "an empty name"),
    ("ij", "write LEFT/RIGHT"),
    ("i/j/x", "write LEFT/RIGHT"),
    ({"i": "up", "j": "left"}, "side `up` is not left or right")])
def test_bad_legs_are_a_located_error_listing_the_open_legs(spec, message):
    from tndsl.lang.errors import TnError
    program = _load("sum")
    with pytest.raises(LayoutError) as info:
        program.render("total", legs=spec)
    error = info.value
    assert message in error.message and "\n" not in error.message
    assert error.span is not None and error.span.line == program.equation("total").span.line
    assert "i, j" in error.message + (error.hint or "")
    assert isinstance(error, TnError)


def test_legs_of_a_scalar_figure_may_be_empty_on_both_sides():
    program = tndsl.parse("dim N = 2\ninput a[i: N]\ns[] = a[i] * a[i]\n")
    assert not [w for w in program.render(legs="/").scene.wires if w.cls == "leg"]


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


# ---- the hook map ---------------------------------------------------------------------

# Small sizes for a family's sized dims (those it has), so compiling it is quick.
_SMALL = {"Layers": 1, "Vocab": 32, "Model": 32, "Heads": 4, "KVHeads": 2, "Head": 8,
          "Hidden": 48, "Experts": 4, "Window": 8}

# A user's own file, not in examples/: a block in a loop, a function box, equations that
# only rename others (`read`, the loop's `stream@N`) and a softmax over the output.
USER_FILE = """\
dim Context = 4
dim Model = 8
dim Hidden = 16
dim Layers = 2

input x[p: Context, m: Model]
param W_E[m: Model, n: Model]

block Mixer(x[p: Context, m: Model]) -> [p: Context, m: Model] {
    param W[m: Model, f: Hidden]
    param U[f: Hidden, m: Model]
    h[p, f] = x[p, m] * W[m, f]
    a[p, f] = relu(h[p, f])
    return a[p, f] * U[f, m]
}

stream[p, n] = x[p, m] * W_E[m, n]
for l in 0..Layers {
    stream[p, m] = stream[p, m] + Mixer(stream) as layers.{l}
}
read[p, m] = stream[p, m]
probs[p, m] = softmax[m](read[p, m])
"""


def _small(stem):
    text = (ROOT / "examples" / f"{stem}.tn").read_text()
    sized = set(re.findall(r"^dim (\w+) = \d+\s*(?:#.*)?$", text, re.M))
    return _load(stem, {k: v for k, v in _SMALL.items() if k in sized})


def _hook_labels(scene) -> list[str]:
    return [t.html for t in scene.texts if t.cls in ("hook", "hookinside")]


def _box(text):
    """A text's extent: as wide as measured, as tall as its size, around its centre."""
    x0 = text.x if text.anchor == "west" else text.x - text.w / 2
    return x0, text.y - text.size / 2, x0 + text.w, text.y + text.size / 2


def _meet(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _crosses(r, p, q) -> bool:
    """Whether segment pq passes through rectangle r (Liang–Barsky clipping)."""
    (x0, y0), (x1, y1) = p, q
    t0, t1 = 0.0, 1.0
    for step, room in ((x0 - x1, x0 - r[0]), (x1 - x0, r[2] - x0),
                       (y0 - y1, y0 - r[1]), (y1 - y0, r[3] - y0)):
        if step == 0:
            if room < 0:
                return False
            continue
        t = room / step
        if step < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def once_rule(scene):
    """A hidden hook point is listed once; a name shown on what it names is repeated
    only where that same tensor is drawn again (`normalized⁰` twice in Gemma's norm)."""
    inside = [t.html for t in scene.texts if t.cls == "hookinside"]
    own = [t for t in scene.texts if t.cls == "hook"]
    assert len(inside) == len(set(inside)) and not set(inside) & {t.html for t in own}
    for name in {t.html for t in own}:
        under = set()
        for text in (t for t in own if t.html == name and t.anchor == "center"):
            under |= {s.name for s in scene.shapes if abs(s.x - text.x) < 0.01
                      and s.y < text.y and s.label is not None}
        assert len(under) <= 1, (name, under)


def hook_label_rule(scene):
    """Every hook label is legible (>= 7 pt at the figure's size) and meets no other
    label, no shape, no wire, and lies inside or outside each box, never on its border."""
    for text in (t for t in scene.texts if t.cls in ("hook", "hookinside")):
        assert text.size >= 7, text
        r = _box(text)
        for other in scene.texts:
            assert other is text or not _meet(r, _box(other)), (text, other)
        for shape in scene.shapes:
            b = (shape.x - shape.w / 2, shape.y - shape.h / 2,
                 shape.x + shape.w / 2, shape.y + shape.h / 2)
            if shape.kind == "box":
                inside = b[0] <= r[0] and r[2] <= b[2] and b[1] <= r[1] and r[3] <= b[3]
                assert inside or not _meet(r, b), (text, shape)
            else:
                assert not _meet(r, b), (text, shape)
        for wire in scene.wires:
            for p, q in zip(wire.points, wire.points[1:]):
                assert not _crosses(r, p, q), (text, wire)


HOOK_MAPS = [pytest.param(stem, name, id=f"{stem}-{name}") for stem in (
    "gpt2_small", "llama", "gemma2", "mixtral") for name in ("blocks.0.out", "final")]


@pytest.mark.parametrize("stem, name", HOOK_MAPS)
def test_the_hook_map_names_every_hook_point_of_the_compiled_model(stem, name):
    """At depth 1 of a block and of the whole model (its final equation), the hook
    labels drawn are exactly the hook points of the model compiled for that equation
    (the oracle: its HookPoint modules), each drawn once where it is, legibly."""
    from tndsl.interp.hooks import hook_names
    program = _small(stem)
    name = program.final.name if name == "final" else name
    expected = hook_names(program.module([name]))
    scene = figure(program, name, depth=1, hooks=True).scene
    labels = _hook_labels(scene)
    assert set(labels) == set(expected)
    once_rule(scene)
    hook_label_rule(scene)
    baseline_rule(scene)
    leg_rule(scene)
    border_rule(scene)


@pytest.mark.parametrize("name", ["probs", "layers.1.out", "read"])
@pytest.mark.parametrize("depth", [0, 1, 2, None])
def test_the_hook_map_of_a_users_own_file_at_any_depth(name, depth):
    from tndsl.interp.hooks import hook_names
    program = tndsl.parse(USER_FILE, "mine.tn")
    expected = set(hook_names(program.module([name])))
    fig = figure(program, name, depth=depth or 0, expand=depth is None, hooks=True)
    assert set(_hook_labels(fig.scene)) == expected
    once_rule(fig.scene)
    hook_label_rule(fig.scene)
    baseline_rule(fig.scene)
    leg_rule(fig.scene)
    border_rule(fig.scene)


def test_the_hook_map_places_each_name_on_what_it_names():
    """Its own name right above a drawn intermediate, a renaming's name with it, an
    inlined equation's name on its region (a dotted box around what it computes), and
    a hidden one (the attention pattern inside Attention⁰) listed above the
    intermediate that hides it."""
    program = _small("gpt2_small")
    scene = figure(program, "blocks.0.out", depth=1, hooks=True).scene
    texts = {t.html: t for t in scene.texts if t.cls in ("hook", "hookinside")}
    shapes = {s.name: s for s in scene.shapes if s.name}

    def above(hook, name):
        shape, text = shapes[name], texts[hook]
        return abs(text.x - shape.x) < 0.01 and text.y > shape.y + shape.h / 2

    assert above("blocks.0.out", "blocks.0.out")            # the left-hand side
    assert above("resid", "resid") and above("blocks.0.resid_pre", "resid")
    assert above("blocks.0.attn.out", "blocks.0.attn.out")
    assert texts["blocks.0.attn.out"].cls == "hook"
    for hidden in ("blocks.0.attn.pattern", "blocks.0.attn.scores", "blocks.0.ln1.out"):
        assert above(hidden, "blocks.0.attn.out") and texts[hidden].cls == "hookinside"
    assert above("blocks.0.mlp.pre", "blocks.0.mlp.post")
    # the hidden ones in the order the forward pass computes them, top to bottom
    column = sorted((t for t in texts.values() if abs(t.x - shapes["blocks.0.attn.out"].x)
                     < 0.01), key=lambda t: -t.y)
    names = [t.html for t in column]
    assert names.index("blocks.0.attn.scores") < names.index("blocks.0.attn.pattern") \
        < names.index("blocks.0.attn.z") < names.index("blocks.0.attn.out")
    regions = [s for s in scene.shapes if s.cls == "hookbox"]
    for hook in ("blocks.0.resid_mid", "blocks.0.mlp.out"):
        text = texts[hook]
        region = next(r for r in regions if r.x - r.w / 2 < text.x < r.x + r.w / 2
                      and r.y - r.h / 2 < text.y < r.y + r.h / 2)
        # the name at the region's top left, and what it computes inside it
        assert text.anchor == "west" and region.y + region.h / 2 - text.y < 1.5 * 10
    resid_mid = next(r for r in regions if r.x - r.w / 2 < texts["blocks.0.resid_mid"].x
                     < r.x + r.w / 2)
    assert resid_mid.x - resid_mid.w / 2 < shapes["resid"].x < resid_mid.x + resid_mid.w / 2


def test_the_hook_map_is_the_same_in_every_format_and_without_hooks_unchanged():
    from tndsl.render import tikz
    program = _small("gpt2_small")
    fig = figure(program, "blocks.0.out", depth=1, hooks=True)
    snippet = tikz.snippet(fig.scene)
    assert "blocks.0.attn.pattern" in fig.source and r"blocks.0.resid\_mid" in snippet
    assert 'style="dotted,rounded"' in fig.source   # the regions
    plain = figure(program, "blocks.0.out", depth=1).scene
    assert not _hook_labels(plain) and not any(s.cls == "hookbox" for s in plain.shapes)
    assert fig.source == figure(program, "blocks.0.out", depth=1, hooks=True).source


def test_a_check_has_no_hook_map():
    from tndsl.lang.errors import ArgumentError
    with pytest.raises(ArgumentError, match="hooks= draws an equation, not a check"):
        _load("sum").render(check="distributes", hooks=True)


@pytest.mark.parametrize("width", ["6.75in", "3.25in"])
def test_a_hook_map_at_paper_width_keeps_its_labels_at_7pt_or_says_why(width):
    limit = float(width[:-2]) * 72
    try:
        scene = figure(_small("llama"), "blocks.0.out", depth=1, hooks=True,
                       width=width).scene
    except LayoutError as e:   # a region is one term: it cannot wrap
        assert width == "3.25in" and "does not fit in 3.25 in" in e.message
        return
    assert scene.width <= limit + 0.01 and len(scene.rows) >= 2
    hook_label_rule(scene)
    baseline_rule(scene)


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


@pytest.mark.slow  # reason: 15 generated programs, each elaborated and drawn 3 times (~40 s)
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
    from tndsl.lang import ir
    for eq in program.network.equations:
        for expand, hooks in ((False, False), (True, False), (False, True)):
            try:
                scene = figure(program, eq.name, expand=expand, depth=1 if hooks else 0,
                               width="6.75in", hooks=hooks).scene
            except TnError as e:
                assert "\n" not in e.message
                continue
            baseline_rule(scene)
            leg_rule(scene)
            border_rule(scene)
            if hooks:   # every equation it is computed from (what a compiled model hooks)
                assert set(_hook_labels(scene)) == {
                    e.name for e in ir.dependency_order(program.network, [eq.name])}
                once_rule(scene)
                hook_label_rule(scene)


def test_a_norm_box_carries_its_instance():
    program = _load("gpt2_small", {"Layers": 1})
    final = {t.html for t in figure(program, "logits", depth=3).scene.texts
             if t.cls == "boxlabel"}
    assert any(label.endswith(" (ln_final)") for label in final), final
    block = {t.html for t in figure(program, "blocks.0.out", depth=2).scene.texts
             if t.cls == "boxlabel"}
    assert any("<sup>0</sup>" in label for label in block), block


def test_legs_reach_the_outer_edge_past_a_term_label_wider_than_its_term():
    """A term set in more room than it needs (its label under it is wider) is centred
    in that room, and its open legs run on to the room's edges: in a one-row figure the
    first term's left leg starts at the figure's left margin, the last term's right leg
    ends at its right margin."""
    scene = figure(_load("sum"), "total", term_labels=[
        "a label far wider than the term it names", "and another one, wider still"]).scene
    leg_rule(scene)
    legs = [w for w in scene.wires if w.cls == "leg"]
    lefts = [w.points[0][0] for w in legs if w.side == "left"]
    rights = [w.points[-1][0] for w in legs if w.side == "right"]
    assert abs(min(lefts) - MARGIN) <= TOLERANCE
    assert abs(max(rights) - (scene.width - MARGIN)) <= TOLERANCE
    label = max((t for t in scene.texts if t.cls == "termlabel"), key=lambda t: t.w)
    term = next(t for t in scene.terms if t.x0 <= label.x <= t.x1)
    assert term.x1 - term.x0 >= label.w - 0.01


@pytest.mark.parametrize("make", ALL)
def test_no_two_labels_overlap_and_no_wire_crosses_a_wire_label_with_room(make, request):
    """Labels never overlap. A lane's label sits where no wire drawn after it crosses
    it, along its lane, over it or else under it: in the Llama scores the `KVHeads` lane
    runs between two diagonals closer than its label is wide, above and under, and is
    the one label left crossed."""
    scene = make().scene
    texts = scene.texts
    for k, text in enumerate(texts):
        for other in texts[k + 1:]:
            assert not _meet(_box(text), _box(other)), (text, other)
    crossed = {t.html for t in texts if t.cls == "wirelabel" and any(
        _crosses(_box(t), p, q) for w in scene.wires for p, q in zip(w.points, w.points[1:]))}
    boxed_in = {"<I>KVHeads</I>"} if request.node.callspec.id == "gallery-llama-scores" \
        else set()
    assert crossed <= boxed_in, crossed


@pytest.mark.parametrize("stem", FAMILIES)
def test_every_familys_hook_map_names_what_its_block_is_computed_from(stem):
    """Each family's block and whole model at depth 1: the hook labels are the
    equations computed on the way (what a compiled model hooks: checked against the
    compiled modules above for four of them), and every rule holds, at 6.75 in too."""
    from tndsl.lang import ir
    program = _small(stem)
    for name in ("blocks.0.out", program.final.name):
        expected = {eq.name for eq in ir.dependency_order(program.network, [name])}
        for width in (None, "6.75in"):
            scene = figure(program, name, depth=1, hooks=True, width=width).scene
            assert set(_hook_labels(scene)) == expected
            for rule in (baseline_rule, leg_rule, border_rule, hook_label_rule, once_rule):
                rule(scene)
