"""`tndsl paths`: equations expanded into sums over paths, proven by `tndsl verify`."""
import subprocess
import sys

import pytest

import tndsl
from tndsl.lang.errors import TnError
from tndsl.interp.paths import expand_paths
from tndsl.verify import prove_all
from conftest import ROOT

TWO_LAYERS = ROOT / "examples" / "attn_only_2l.tn"

# A three-layer attention-only transformer, its layers unrolled by a loop.
THREE_LAYERS = """
dim Context = 8
dim Vocab = 10
dim Model = 12
dim Heads = 2
dim Head = Model / Heads
input tokens[p: Context, v: onehot Vocab]
param embed.W_E[v: Vocab, m: Model]
param unembed.W_U[m: Model, v: Vocab]
block Attention(x[p: Context, m: Model]) -> [p: Context, m: Model] {
    param W_Q[h: Heads, m: Model, e: Head]
    param W_K[h: Heads, m: Model, e: Head]
    param W_V[h: Heads, m: Model, e: Head]
    param W_O[h: Heads, e: Head, m: Model]
    scores[h, p, s] = x[p, m] * W_Q[h, m, e] * W_K[h, n, e] * x[s, n] / sqrt(Head)
    pattern[h, p, s] = softmax[s](scores[h, p, s] where s <= p)
    head_out[h, p, m] = pattern[h, p, s] * x[s, n] * W_V[h, n, e] * W_O[h, e, m]
    return head_out[h, p, m] * ones[h]
}
resid[p, m] = tokens[p, v] * embed.W_E[v, m]
for l in 0..3 {
    resid[p, m] = resid[p, m] + Attention(resid) as blocks.{l}.attn
}
logits[p, v] = resid[p, m] * unembed.W_U[m, v]
"""


def proofs(expansion, extra=""):
    program = tndsl.parse(expansion.source + extra, "<paths>")
    return {r.label: r for r in prove_all(program)}


@pytest.fixture(scope="module")
def two_layers():
    return tndsl.load(TWO_LAYERS)


def test_qk_scores_split_into_the_four_composition_terms(two_layers):
    e = expand_paths(two_layers, "blocks.1.attn.scores")
    assert [t.label for t in e.terms] == [
        "p: direct, s: direct", "p: direct, s: blocks.0.attn",
        "p: blocks.0.attn, s: direct", "p: blocks.0.attn, s: blocks.0.attn"]
    # the layer-0 heads stay open: one leg per read through blocks.0.attn
    assert [len(t.heads) for t in e.terms] == [0, 1, 1, 2]
    assert all(h.instance == "blocks.0.attn" and h.dim == "Heads"
               for t in e.terms for h in t.heads)
    # patterns and the embedding are given tensors
    assert "blocks.0.attn.pattern[" in e.terms[1].equation
    assert "resid0[" in e.terms[0].equation and "tokens[" not in e.section
    result = proofs(e)[e.check]
    assert result.status == "proven" and result.tier == "symbolic"


def test_the_generated_qk_terms_equal_the_hand_written_ones(two_layers):
    e = expand_paths(two_layers, "blocks.1.attn.scores")
    names = [t.name for t in e.terms]
    hand = ["no_comp", "k_comp", "q_comp", "kq_comp"]

    def summed(term):
        return f"{term.name}[{', '.join(term.legs)}]" + "".join(
            f" * ones[{h.index}]" for h in term.heads)
    extra = "".join(f"\ncheck same_{k}: {h}[h, p, s] == {summed(t)}"
                    for k, (h, t) in enumerate(zip(hand, e.terms)))
    results = proofs(e, extra)
    assert [results[f"same_{k}"].status for k in range(4)] == ["proven"] * 4
    # and the comparison can fail: the K-term is not the Q-term
    wrong = f"\ncheck swapped: k_comp[h, p, s] == {summed(e.terms[2])}"
    assert proofs(e, wrong)["swapped"].status == "refuted"
    assert names[1] == "scores.p_direct.s_blocks_0_attn"


def test_logits_split_into_direct_heads_and_virtual_heads(two_layers):
    e = expand_paths(two_layers, "logits")
    assert [t.label for t in e.terms] == [
        "direct", "blocks.0.attn", "blocks.1.attn", "blocks.0.attn->blocks.1.attn"]
    assert [t.name for t in e.terms] == [
        "logits.direct", "logits.blocks_0_attn", "logits.blocks_1_attn",
        "logits.blocks_0_attn__blocks_1_attn"]
    virtual = e.terms[3]
    assert [h.instance for h in virtual.heads] == ["blocks.0.attn", "blocks.1.attn"]
    assert virtual.legs == ("p", "v", "h1", "h2")
    assert proofs(e)[e.check].status == "proven"


def test_through_chooses_the_blocks(two_layers):
    e = expand_paths(two_layers, "logits", ["blocks.1.attn"])
    assert [t.label for t in e.terms] == ["direct", "blocks.1.attn"]
    # layer 0 is not split: the path of layer 1 reads the whole stream resid1
    assert "resid1[" in e.terms[1].equation
    assert proofs(e)[e.check].status == "proven"


def test_three_layers():
    program = tndsl.parse(THREE_LAYERS, "three.tn")
    e = expand_paths(program, "logits")
    layers = ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    expected = ["direct"] + ["->".join(layers[i] for i in range(3) if mask >> i & 1)
                             for mask in range(1, 8)]
    assert sorted(t.label for t in e.terms) == sorted(expected)
    deepest = e.term("blocks.0.attn->blocks.1.attn->blocks.2.attn")
    assert len(deepest.heads) == 3
    assert proofs(e)[e.check].status == "proven"
    scores = expand_paths(program, "blocks.2.attn.scores")
    assert len(scores.terms) == 16   # four paths on each side
    assert proofs(scores)[scores.check].status == "proven"


def test_a_dropped_path_is_refuted(two_layers):
    e = expand_paths(two_layers, "logits")
    text = e.source.replace(f" + {e.terms[3].name}[p, v, h1, h2] * ones[h1] * ones[h2]", "")
    assert text != e.source
    program = tndsl.parse(text, "<dropped>")
    (result,) = [r for r in prove_all(program) if r.label == e.check]
    assert result.status == "refuted"


def test_errors_name_what_is_valid(two_layers):
    with pytest.raises(TnError, match="did you mean `logits`"):
        expand_paths(two_layers, "logit")
    with pytest.raises(TnError, match="no block instance `blocks.2.attn`"):
        expand_paths(two_layers, "logits", ["blocks.2.attn"])
    with pytest.raises(TnError, match="applies a box") as info:
        expand_paths(two_layers, "blocks.0.attn.pattern")
    assert "^^^" in info.value.render()
    taken = tndsl.parse(TWO_LAYERS.read_text() +
                        "\nlogits.direct[p, v] = resid0[p, m] * unembed.W_U[m, v]\n")
    with pytest.raises(TnError, match="`logits.direct` is already a name"):
        expand_paths(taken, "logits")
    assert expand_paths(taken, "logits", prefix="paths").terms[0].name == "paths.direct"


def run(*args):
    return subprocess.run([sys.executable, "-m", "tndsl", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_writes_a_file_that_verifies(tmp_path):
    out = tmp_path / "qk.tn"
    result = run("paths", "examples/attn_only_2l.tn", "blocks.1.attn.scores", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "4 paths of blocks.1.attn.scores" in result.stdout
    verified = run("verify", str(out))
    assert verified.returncode == 0
    assert "check blocks_1_attn_scores_paths: proven" in verified.stdout
    # deterministic: the same file twice
    again = run("paths", "examples/attn_only_2l.tn", "blocks.1.attn.scores")
    assert again.stdout == out.read_text()


def test_cli_renders_the_terms_side_by_side(tmp_path):
    figure = tmp_path / "paths.dot"
    result = run("paths", "examples/attn_only_2l.tn", "logits", "-o", str(tmp_path / "l.tn"),
                 "--render", str(figure))
    assert result.returncode == 0, result.stderr
    dot = figure.read_text()
    assert dot.count('label="+"') == 3                       # four terms side by side
    assert dot.count('tooltip="unembed.W_U"') == 4           # each drawn as its network
    assert dot.count('tooltip="blocks.0.attn.W_V"') == 2     # layer 0 alone, and virtual


def test_cli_errors_are_located_not_tracebacks():
    result = run("paths", "examples/attn_only_2l.tn", "blocks.0.attn.pattern")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "attn_only_2l.tn:22:5: error:" in result.stderr
    result = run("paths", "examples/attn_only_2l.tn", "logits", "--through", "blocks.9.attn")
    assert result.returncode == 1 and "did you mean" in result.stderr


@pytest.mark.parametrize("prefix", ["a\nlogits[p, v] = resid0[p, m]\n# ", "x # y", "in",
                                    "2paths", "p[", "", "a..b", "a.\u2028b"])
def test_a_prefix_that_is_not_a_name_is_refused_before_it_reaches_the_source(two_layers,
                                                                            prefix):
    # The prefix starts every term's name in the written `.tn` text: a line break in it
    # wrote extra lines into the file (and `#` commented the rest of a line out).
    with pytest.raises(TnError, match="is not a .tn name") as info:
        expand_paths(two_layers, "logits", prefix=prefix)
    assert "\n" not in info.value.message and "\u2028" not in info.value.message


@pytest.mark.parametrize("prefix", ["paths", "l1.paths", "blocks.0.paths", "_p"])
def test_dotted_prefixes_name_the_terms(two_layers, prefix):
    terms = expand_paths(two_layers, "logits", prefix=prefix).terms
    assert terms[0].name == f"{prefix}.direct"


def test_cli_prefix_with_a_line_break_is_one_clear_error():
    result = run("paths", "examples/attn_only_2l.tn", "logits", "--prefix",
                 "a\nlogits[p, v] = 0\n# ")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == \
        "examples/attn_only_2l.tn: error: the prefix `a\\nlogits[p, v] = 0\\n# ` is not a .tn name"


VALUE_BIAS = """
dim Context = 6
dim Model = 8
dim Heads = 2
dim Head = 4
input x[p: Context, m: Model]
block Attention(x[p: Context, m: Model]) -> [p: Context, m: Model] {
    param W_V[h: Heads, m: Model, e: Head]
    param b_V[h: Heads, e: Head]
    param W_O[h: Heads, e: Head, m: Model]
    param scores[h: Heads, p: Context, s: Context]
    pattern[h, p, s] = softmax[s](scores[h, p, s] where s <= p)
    v[s, h, e] = x[s, m] * W_V[h, m, e] + b_V[h, e] * ones[s]
    return pattern[h, p, s] * v[s, h, e] * W_O[h, e, m]
}
out[p, m] = x[p, m] + Attention(x) as attn
"""


def test_a_value_bias_read_through_the_pattern_keeps_its_sum_over_keys():
    # pattern[h, p, s] * b_V[h, e] * ones[s]: the ones[s] is the sum over the keys; it
    # used to be dropped, leaving `s` open, and the written expansion did not check.
    expansion = expand_paths(tndsl.parse(VALUE_BIAS), "out")
    bias = [t for t in expansion.terms if "b_V" in t.equation]
    assert bias and all("ones[s]" in t.equation for t in bias)
    results = prove_all(expansion.program())
    assert [r.status for r in results] == ["proven"]
