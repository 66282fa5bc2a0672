"""Proofs of identities, and refutations of their false twins with the right residual."""
import subprocess
import sys

import pytest

import tndsl
from tndsl.verify import equivalent, prove_all
from tndsl.verify.symbolic import canonical
from conftest import ROOT


@pytest.fixture(scope="module")
def results():
    program = tndsl.load(ROOT / "tests" / "verify" / "identities.tn")
    return {r.label: r for r in prove_all(program)}


@pytest.mark.parametrize("label", ["trace_cyclic", "distributes", "product_order",
                                   "heads_add", "ov_folds"])
def test_true_identities_are_proven_symbolically(results, label):
    result = results[label]
    assert (result.status, result.tier) == ("proven", "symbolic"), result.render()


@pytest.mark.parametrize("label, residual", [
    ("trace_cyclic_false", {"A[i1, i2] * B[i2, i3] * C[i3, i1]",
                            "-A[i1, i2] * B[i3, i1] * C[i2, i3]"}),
    ("distributes_false", {"B[i, i1] * R[i1, k]", "-B[i1, i] * R[i1, k]"}),
    ("product_order_false", {"A[i, i1] * B[i1, k]", "-A[i1, k] * B[i, i1]"}),
    ("symmetric_false", {"A[i, j]", "-A[j, i]"}),
])
def test_false_polynomial_twins_are_refuted_with_their_residual(results, label, residual):
    result = results[label]
    assert (result.status, result.tier) == ("refuted", "randomized exact"), result.render()
    assert set(result.residual) == residual
    example = result.counterexample
    assert example is not None and example.lhs != example.rhs


@pytest.mark.parametrize("label", ["heads_add_false", "ov_folds_false"])
def test_false_twins_with_boxes_are_refuted_numerically(results, label):
    result = results[label]
    assert (result.status, result.tier) == ("refuted", "numeric"), result.render()
    assert result.residual and all("pattern[" in term for term in result.residual)
    assert abs(result.counterexample.lhs - result.counterexample.rhs) > 1e-6


def test_counterexample_entry_is_real(results):
    # Rebuild the reported data and read the two sides by plain indexing, not through
    # any evaluator: the left side is A[i, j], the right A[j, i].
    import torch
    from tndsl.verify.numeric import random_tensors, small_program
    example = results["symmetric_false"].counterexample
    small = small_program(tndsl.load(ROOT / "tests" / "verify" / "identities.tn"))
    assert {k: small.sizes[k] for k in example.sizes} == example.sizes
    values = random_tensors(small, torch.Generator().manual_seed(example.seed), integers=3)
    i, j = example.entry["i"], example.entry["j"]
    assert (float(values["A"][i, j]), float(values["A"][j, i])) == (example.lhs, example.rhs)
    assert example.lhs != example.rhs


def test_qk_expansion_is_proven_and_its_false_twins_refuted():
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn")
    (proof,) = prove_all(program)
    assert (proof.status, proof.tier) == ("proven", "symbolic")
    assert "16 monomials on each side" in proof.detail

    dropped = equivalent(program, "blocks.1.attn.scores[h, p, s]",
                         "no_comp[h, p, s] + k_comp[h, p, s] + q_comp[h, p, s]")
    assert dropped.status == "refuted"
    # What does not cancel is exactly the K&Q-composition term: both query and key
    # sides read layer-0 head outputs (two patterns) — four monomials, since each
    # side's residual stream input is tokens * W_E or W_pos.
    assert len(dropped.residual) == 4
    assert all(term.count("blocks.0.attn.pattern[") == 2 for term in dropped.residual)

    transposed = equivalent(
        program, "kq_comp[h, p, s]",
        "blocks.0.attn.out[p, m] * blocks.1.attn.W_K[h, m, e] * blocks.1.attn.W_Q[h, n, e]"
        " * blocks.0.attn.out[s, n] / sqrt(Head)", legs=("h", "p", "s"))
    assert transposed.status == "refuted"


def test_free_leg_names_count():
    program = tndsl.parse("dim N = 3\nparam A[i: N, j: N]\n")
    assert equivalent(program, "A[i, j]", "A[j, i]").status == "refuted"
    # ones on a leg another factor has changes nothing, however many times.
    assert equivalent(program, "A[i, j] * ones[j]", "A[i, k] * ones[k] * ones[k]").status \
        == "proven"
    with pytest.raises(tndsl.TnError, match="only appears on `ones`"):
        equivalent(program, "A[i, j]", "A[i, j] * ones[k] * ones[k] / N")


def test_canonical_form_ignores_dummy_names_and_factor_order_but_not_slots():
    a = canonical((("A", ("i", "x")), ("B", ("x", "y")), ("C", ("y", "i"))), set())
    b = canonical((("C", ("q", "r")), ("A", ("r", "s")), ("B", ("s", "q"))), set())
    c = canonical((("A", ("x", "i")), ("B", ("x", "y")), ("C", ("y", "i"))), set())
    assert a == b and a != c


def test_copy_dots_are_hyperedges():
    # x[i] * y[i] * z[i] summed over i differs from x[i] * y[i] * z[j] * ones...: a
    # three-way shared index is not two wires.
    three = canonical((("x", ("i",)), ("y", ("i",)), ("z", ("i",))), set())
    two = canonical((("x", ("i",)), ("y", ("i",)), ("z", ("j",))), set())
    assert three != two


def test_unknown_is_reported_with_the_reason():
    program = tndsl.parse("dim N = 3\ninput x[i: N]\ny[i] = relu(x[i])\n"
                          "check by_definition: relu(y[i]) == relu(relu(x[i]))\n"
                          "check idempotent: relu(relu(x[i])) == relu(x[i])\n")
    by_definition, result = prove_all(program)
    # y is relu(x) by definition: the same box on both sides.
    assert (by_definition.status, by_definition.tier) == ("proven", "symbolic")
    # relu(relu(x)) == relu(x) is true, but the boxes are opaque to the symbolic tier:
    # it held on every evaluation, which is evidence (supported), not proof.
    assert result.status == "supported"
    assert "symbolic" in result.detail and "evidence, not proof" in result.detail


def test_cli_verify_exits_1_on_a_refutation_and_prints_the_residual():
    result = subprocess.run([sys.executable, "-m", "tndsl", "verify",
                             "tests/verify/identities.tn"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert "check symmetric_false: refuted" in result.stdout
    assert "    -A[j, i]" in result.stdout
    assert "11 checks: 5 proven, 6 refuted, 0 supported, 0 unknown" in result.stdout


def test_cli_verify_passes_on_the_examples():
    for name in ("orthodox", "sum", "attention_head", "multihead_attention", "attn_only_2l"):
        result = subprocess.run([sys.executable, "-m", "tndsl", "verify",
                                 f"examples/{name}.tn"], cwd=ROOT, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 refuted, 0 supported, 0 unknown" in result.stdout
