"""Verdicts that mean what they say (issue 21): fixed tensors by their values, the
lemmas of fixed tensors, masks and boxes, the round-off bound, sizes that are not roots
of the residual, exit codes, and `verify --compiled` on hostile offsets and overflow.

Oracles: dense fixed tensors written here from their definitions (angles, groups),
the float64 reference evaluator on random data, and exact arithmetic."""
import math

import pytest
import torch

import tndsl
from tndsl.cli import main
from tndsl.verify import prove_all
from tndsl.verify.numeric import random_tensors
from tndsl.verify.reference import Reference
from conftest import ROOT

HEADER = """
dim Context = 6
dim Head = 4
dim Heads = 4
dim KV = 2
dim N = 5
const Theta = 100
fixed R[p: Context, e: Head, f: Head] = rotary(Theta)
fixed Rh[p: Context, e: Head, f: Head] = rotary(Theta, 0.5)
fixed G[h: Heads, g: KV] = grouping
input x[p: Context, g: Head]
input y[p: Context, g: Head]
param A[p: Context, q: Context]
param B[n: N, m: N]
param u[h: Heads]
param v[g: KV]
param w[n: N]
"""


def results(checks: str, header: str = HEADER) -> dict:
    return {r.label: r for r in prove_all(tndsl.parse(header + checks))}


def reference_agrees(program, label: str, seeds=range(3)) -> bool:
    """The oracle: both sides in float64 with the fixed tensors' real values."""
    check = next(c for c in program.checks if c.label == label)
    for seed in seeds:
        values = random_tensors(program, torch.Generator().manual_seed(seed))
        lhs, rhs = Reference(program, values).evaluate_check(check)
        if not torch.allclose(lhs, rhs, rtol=1e-9, atol=1e-9):
            return False
    return True


# ---- the lemmas, each against dense values written from the definitions ----------------

def dense_rotary(positions: int, head: int, theta: float, rotated: int) -> torch.Tensor:
    """R[p] as a matrix: pairs (i, i + rotated/2) turned by p·θ^(-2i/rotated)."""
    out = torch.zeros(positions, head, head, dtype=torch.float64)
    half = rotated // 2
    for p in range(positions):
        out[p] = torch.eye(head, dtype=torch.float64)
        for i in range(half):
            angle = p * theta ** (-2 * i / rotated)
            c, s = math.cos(angle), math.sin(angle)
            out[p, i, i], out[p, i, i + half] = c, -s
            out[p, i + half, i], out[p, i + half, i + half] = s, c
    return out


@pytest.mark.parametrize("rotated", [8, 4])
def test_rotary_lemmas_hold_for_the_dense_values(rotated):
    big = dense_rotary(13, 8, 100.0, rotated)  # positions -6..6 as R(d) = R(-d)ᵀ
    R = big[:7]
    eye = torch.eye(8, dtype=torch.float64)
    for p in range(7):
        torch.testing.assert_close(R[p].T @ R[p], eye)          # orthogonality
        torch.testing.assert_close(R[p] @ R[p].T, eye)
        for s in range(7):
            d = s - p
            relative = big[d] if d >= 0 else big[-d].T
            torch.testing.assert_close(R[p].T @ R[s], relative)  # relative position
            torch.testing.assert_close(R[s] @ R[p].T, relative)
    # The reference evaluator's dense values are these.
    program = tndsl.parse(HEADER)
    r = Reference(program, {})
    torch.testing.assert_close(r.values["R"], dense_rotary(6, 4, 100.0, 4))
    torch.testing.assert_close(r.values["Rh"], dense_rotary(6, 4, 100.0, 2))


def test_grouping_lemmas_hold_for_the_dense_values():
    heads, groups = 6, 3
    G = torch.zeros(heads, groups, dtype=torch.float64)
    for h in range(heads):
        G[h, h // (heads // groups)] = 1
    torch.testing.assert_close(G @ torch.ones(groups, dtype=torch.float64),
                               torch.ones(heads, dtype=torch.float64))
    torch.testing.assert_close(G.T @ G, (heads / groups) * torch.eye(groups, dtype=torch.float64))
    same = torch.tensor([[float(a // 2 == b // 2) for b in range(heads)] for a in range(heads)],
                        dtype=torch.float64)
    torch.testing.assert_close(G @ G.T, same)                  # block structure
    torch.testing.assert_close(G * G, G)                       # entries 0 or 1
    program = tndsl.parse(HEADER)
    torch.testing.assert_close(Reference(program, {}).values["G"],
                               torch.tensor([[1., 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float64))


LEMMAS = [
    ("orth", "[p, e] R[p, f, e] * R[p, f, g] * x[p, g] == x[p, e]", "rotary orthogonality"),
    ("orth_rows", "[p, e] R[p, e, f] * R[p, g, f] * x[p, g] == x[p, e]", "rotary orthogonality"),
    ("orth_partial", "[p, e] Rh[p, f, e] * Rh[p, f, g] * x[p, g] == x[p, e]",
     "rotary orthogonality"),
    ("norm", "[p] R[p, e, f] * x[p, f] * R[p, e, g] * x[p, g] == x[p, f] * x[p, f]",
     "rotary orthogonality"),
    ("trace", "R[p, e, f] * R[p, e, f] == Head * Context", "rotary orthogonality"),
    ("relative", "[p, s, p2, s2] (x[p, f] * R[p, e, f] * R[s, e, g] * y[s, g] * ones[p2] * "
     "ones[s2] where p2 == p + 2 and s2 == s + 2) == (x[p, f] * R[p2, e, f] * R[s2, e, g] * "
     "y[s, g] where p2 == p + 2 and s2 == s + 2)", "rotary relative position"),
    ("relative_transposed", "[p, s] x[p, f] * R[p, e, f] * R[s, e, g] * y[s, g] == "
     "y[s, g] * R[s, e, g] * R[p, e, f] * x[p, f]", "rotary relative position"),
    ("relative_chain", "[p, s, t] x[p, f] * R[p, e, f] * R[s, e, g] * R[s, h, g] * R[t, h, k] * "
     "y[t, k] == x[p, f] * R[p, e, f] * R[t, e, k] * y[t, k] * ones[s]",
     "rotary relative position"),
    ("relative_back", "[p, s] x[p, f] * R[p, e, f] * R[s, e, g] * R[s, h, g] * R[p, h, k] * "
     "y[p, k] == x[p, f] * y[p, f] * ones[s]", "rotary relative position"),
    ("group_rows", "[h] G[h, g] * ones[g] == ones[h]", "grouping rows sum to one"),
    ("group_rows_weighted", "[h] u[h] * G[h, g] * ones[g] == u[h]", "grouping rows sum to one"),
    ("group_column_sums", "G[h, g] * v[g] * ones[h] == Heads / KV * v[g] * ones[g]",
     "grouping columns sum to Heads/KVHeads"),
    ("group_outer_rows", "[a] G[a, g] * G[b, g] * ones[b] == Heads / KV * ones[a]",
     "grouping columns sum to Heads/KVHeads"),
    ("group_columns", "[g] G[h, g] * G[h, k] * v[k] == Heads / KV * v[g]",
     "grouping columns: GᵀG = (Heads/KVHeads) I"),
    ("group_idempotent", "[a, b] G[a, g] * G[c, g] * G[c, k] * G[b, k] == "
     "Heads / KV * G[a, g] * G[b, g]", "grouping columns: GᵀG = (Heads/KVHeads) I"),
    ("group_square", "[h, g] G[h, g] * G[h, g] * u[h] == G[h, g] * u[h]",
     "grouping entries are 0 or 1"),
    ("mask_spellings", "(A[p, s] where p - s < 3) == (A[p, s] where s > p - 3)",
     "mask normal form"),
    ("mask_spellings_2", "(A[p, s] where s - p > -3) == (A[p, s] where s >= p - 2)",
     "mask normal form"),
    ("causal_window", "(A[p, s] where s <= p and p - s < 3) == ((A[p, s] where p - s < 3) "
     "where s <= p)", "mask normal form"),
    ("stricter", "((A[p, s] where s < p) where s <= p) == (A[p, s] where s < p)",
     "mask conjunction"),
    ("equal_bounds", "(A[p, s] where s <= p and s >= p) == (A[p, s] where s == p)",
     "mask conjunction"),
    ("empty", "[p, s] (A[p, s] where s < p and s > p) == 0 * A[p, s]", "mask conjunction"),
    ("complement", "(A[p, s] where s <= p) + (A[p, s] where s > p) == A[p, s]",
     "complementary masks"),
    ("complement_eq", "(A[p, s] where s == p + 1) + (A[p, s] where s != p + 1) == A[p, s]",
     "complementary masks"),
    ("diagonal", "[p, e] A[p, s] * x[s, e] * (ones[p, s] where s == p) == A[p, p] * x[p, e]",
     "diagonal"),
    ("diagonal_summed", "A[p, s] * (ones[p, s] where p == s) == A[q, q]", "diagonal"),
    ("three_way", "[p, s] (A[p, s] where s <= p and p - s < 3) + (A[p, s] where s > p) + "
     "(A[p, s] where p - s >= 3) == A[p, s]", "case split on mask conditions"),
    ("regrouped", "[p, s] (A[p, s] where s <= p) + (y[s, e] * x[p, e] where s > p) == "
     "(A[p, s] where s < p) + (A[p, s] where s == p) + (y[s, e] * x[p, e] where s >= p + 1)",
     "case split on mask conditions"),
    ("softmax_shift", "[p, s] softmax[s](A[p, s] + A[p, p] * ones[s]) == softmax[s](A[p, s])",
     "softmax shift invariance"),
    ("softmax_shift_masked", "[p, s] softmax[s](A[p, s] + A[p, p] * ones[s] where s <= p) == "
     "softmax[s](A[p, s] where s <= p)", "softmax shift invariance"),
    ("layernorm_shift", "[n, m] layernorm[m](B[n, m] + w[n] * ones[m]) == layernorm[m](B[n, m])",
     "layernorm shift invariance"),
    ("layernorm_centred", "[n, m] layernorm[m](w[k] * B[k, m] * w[n]) == layernorm[m](w[k] * "
     "B[k, m] * w[n] - w[k] * B[k, j] * ones[j] * ones[m] * w[n] / N)",
     "layernorm shift invariance"),
    ("softmax_sums", "[p] softmax[s](A[p, s]) * ones[s] == ones[p]", "softmax sums to one"),
    ("softmax_sums_causal", "[p] softmax[s](A[p, s] where s <= p) * ones[s] == ones[p]",
     "softmax sums to one"),
    ("symmetric", "[i, j] exp(A[i, j] + A[j, i]) == exp(A[j, i] + A[i, j])", "box symmetry"),
    ("symmetric_contracted", "[i] exp(B[i, j] + B[j, i]) * w[j] == exp(B[j, i] + B[i, j]) * w[j]",
     "box symmetry"),
]


@pytest.mark.parametrize("label, check, lemma", LEMMAS, ids=[c[0] for c in LEMMAS])
def test_each_lemma_proves_its_identity_and_the_reference_agrees(label, check, lemma):
    program = tndsl.parse(HEADER + f"check {label}: {check}\n")
    (result,) = prove_all(program)
    assert (result.status, result.tier) == ("proven", "symbolic"), result.render()
    assert f"lemmas: " in result.detail and lemma in result.detail, result.detail
    assert reference_agrees(program, label)


def test_a_box_inline_is_the_same_box_named_in_its_equation():
    r = results("pattern[p, s] = softmax[s](A[p, s] where s <= p)\n"
                "check named: [p, s] pattern[p, s] * A[s, p] == "
                "softmax[t](A[p, t] where t <= p) * A[t, p] * (ones[t, s] where t == s)\n"
                "check named_false: [p, s] pattern[p, s] * A[s, p] == "
                "softmax[s](A[p, s] where s < p) * A[s, p]\n")
    assert r["named"].status == "proven", r["named"].render()
    assert r["named_false"].status == "refuted", r["named_false"].render()


FALSE_TWINS = [
    ("orth_transposed", "[p, e] R[p, e, f] * R[p, f, g] * x[p, g] == x[p, e]"),
    ("relative_unequal_shift", "[p, s, p2, s2] (x[p, f] * R[p, e, f] * R[s, e, g] * y[s, g] * "
     "ones[p2] * ones[s2] where p2 == p + 2 and s2 == s + 1) == (x[p, f] * R[p2, e, f] * "
     "R[s2, e, g] * y[s, g] where p2 == p + 2 and s2 == s + 1)"),
    ("relative_chain_transposed", "[p, s, t] x[p, f] * R[p, e, f] * R[s, e, g] * R[s, g, h] * "
     "R[t, h, k] * y[t, k] == x[p, f] * R[p, e, f] * R[t, e, k] * y[t, k] * ones[s]"),
    ("group_columns_wrong", "[g] G[h, g] * G[h, k] * v[k] == v[g]"),
    ("group_outer", "[a, b] G[a, g] * G[b, g] == G[a, g] * G[b, k] * ones[g] * ones[k] / KV"),
    ("complement_overlap", "(A[p, s] where s <= p) + (A[p, s] where s >= p) == A[p, s]"),
    ("off_by_one", "(A[p, s] where p - s < 3) == (A[p, s] where s >= p - 3)"),
    ("softmax_scaled", "[p, s] softmax[s](2 * A[p, s]) == softmax[s](A[p, s])"),
    ("softmax_sums_strict", "[p] softmax[s](A[p, s] where s < p) * ones[s] == ones[p]"),
    ("rmsnorm_shift", "[n, m] rmsnorm[m](B[n, m] + w[n] * ones[m]) == rmsnorm[m](B[n, m])"),
    ("three_way_gap", "[p, s] (A[p, s] where s <= p and p - s < 3) + (A[p, s] where s > p) + "
     "(A[p, s] where p - s > 3) == A[p, s]"),
    ("diagonal_shifted", "A[p, s] * (ones[p, s] where s == p + 1) == A[q, q]"),
    ("diagonal_dims", "B[n, m] * (ones[n, m] where n == m) == B[n, m] * (ones[n, m] where n <= m)"),
    ("not_symmetric", "[i, j] exp(A[i, j] + A[j, i] + A[i, i] * ones[j]) == "
     "exp(A[j, i] + A[i, j] + A[j, j] * ones[i])"),
]


@pytest.mark.parametrize("label, check", FALSE_TWINS, ids=[c[0] for c in FALSE_TWINS])
def test_false_twins_are_refuted_with_a_real_counterexample(label, check):
    program = tndsl.parse(HEADER + f"check {label}: {check}\n")
    assert not reference_agrees(program, label)
    (result,) = prove_all(program)
    assert result.status == "refuted", result.render()
    example = result.counterexample
    assert example is not None and "counterexample at sizes" in result.render()
    # The counterexample is a real instance: rebuild it and read the entry.
    small = program.reparse({k: v for k, v in example.sizes.items()
                             if k in {d.name for d in program.network.dims
                                      if d.size is None or not d.size.free_symbols}})
    check_ir = small.checks[0]
    integers = 3 if "integers" in example.data else None
    values = random_tensors(small, torch.Generator().manual_seed(example.seed), integers=integers)
    lhs, rhs = Reference(small, values).evaluate_check(check_ir)
    at = tuple(example.entry[leg.name] for leg in check_ir.legs)
    assert float(lhs[at]) == pytest.approx(example.lhs, rel=1e-12, abs=1e-12)
    assert float(rhs[at]) == pytest.approx(example.rhs, rel=1e-12, abs=1e-12)
    assert abs(float(lhs[at]) - float(rhs[at])) > 1e-6


def test_norms_scaled_hold_only_as_eps_goes_to_zero():
    """layernorm(c·x) and rmsnorm(c·x) differ from the unscaled norm by O(eps): never
    proven (no lemma: with eps > 0 it is false), and reported with that reason."""
    for box in ("layernorm", "rmsnorm"):
        program = tndsl.parse(HEADER + f"check scaled: [n, m] {box}[m](2 * B[n, m]) == "
                              f"{box}[m](B[n, m])\n")
        (result,) = prove_all(program)
        assert result.status == "unknown", result.render()
        assert "agree when the norms' eps is 0" in result.detail
        assert not reference_agrees(program, "scaled")  # at eps = 1e-5 they differ


# ---- the soundness rule ---------------------------------------------------------------

def test_round_off_alone_never_refutes():
    """exp(a)·exp(a) + 1 − exp(2a) == 1 is true; float64 cancellation loses the 1."""
    program = tndsl.parse("dim N = 3\nparam a[i: N]\n"
                          "check cancel: [i] exp(a[i] * 18) * exp(a[i] * 18) + ones[i] - "
                          "exp(a[i] * 36) == ones[i]\n")
    values = random_tensors(program, torch.Generator().manual_seed(1))
    lhs, rhs = Reference(program, values).evaluate_check(program.checks[0])
    assert not torch.allclose(lhs, rhs, rtol=1e-9, atol=1e-9)  # float64 alone would refute
    (result,) = prove_all(program)
    assert result.status in ("unknown", "supported"), result.render()
    assert "round-off" in result.detail


def test_sizes_are_not_roots_of_the_residual():
    """(N-2)(N-3)(N-4)(N-5)·(X + Xᵀ) == 0 is false at every N but 2..5."""
    program = tndsl.parse("dim N\nparam X[i: N, j: N]\ncheck roots: [i, j] (N - 2) * (N - 3) * "
                          "(N - 4) * (N - 5) * (X[i, j] + X[j, i]) == 0 * X[i, j]\n")
    (result,) = prove_all(program)
    assert result.status == "refuted", result.render()
    assert result.counterexample.sizes["N"] not in (2, 3, 4, 5)


def test_a_check_true_only_with_the_real_values_is_supported_never_refuted():
    """Beyond the lemmas, the evaluation tiers use the fixed tensors' values: exactly
    for a grouping (G[h, g] = 0 where h < g, which no lemma states), in float64 for a
    rotary map; such a check is supported, never refuted and never proven."""
    r = results("check columns: [h, g] (G[h, g] where h < g) * u[h] == 0 * G[h, g] * u[h]\n"
                "check columns_false: G[h, g] * v[g] * ones[h] == v[g] * ones[g]\n"
                "check rot_chain: [p, e] R[p, e, f] * R[p, g, f] * R[p, g, k] * x[p, k] == "
                "R[p, e, f] * x[p, f]\n"
                "check rot_sum: R[p, e, f] * x[p, f] * y[p, e] == x[p, f] * R[p, e, f] * "
                "y[p, e] + 0 * x[p, f] * y[p, f]\n")
    assert r["columns"].status == "supported", r["columns"].render()
    assert "built-in values" in r["columns"].detail
    assert r["columns_false"].status == "refuted" and r["columns_false"].counterexample
    assert r["rot_chain"].status == "proven", r["rot_chain"].render()
    assert r["rot_sum"].status == "proven", r["rot_sum"].render()


def test_the_rotary_proof_example_and_its_wrong_twin():
    proof = {r.label: r for r in prove_all(tndsl.load(ROOT / "examples" / "rotary_proof.tn"))}
    for label in ("relative", "folded", "norm"):
        assert proof[label].status == "proven", proof[label].render()
    assert "rotary relative position" in proof["relative"].detail
    wrong = prove_all(tndsl.load(ROOT / "examples" / "rotary_proof_wrong.tn"))
    assert [r.status for r in wrong] == ["refuted", "refuted"]
    for result in wrong:
        assert "fixed tensors at their built-in values" in result.render()


# ---- exit codes -------------------------------------------------------------------------

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


PROVEN = "dim N = 3\nparam A[i: N, j: N]\ncheck t: A[i, j] * A[j, k] == A[i, j] * A[j, k]\n"
REFUTED = "dim N = 3\nparam A[i: N, j: N]\ncheck f: A[i, j] == A[j, i]\n"
SUPPORTED = "dim N = 3\nparam x[i: N]\ncheck s: relu(relu(x[i])) == relu(x[i])\n"


def test_exit_codes(tmp_path, capsys):
    proven, refuted, supported = (write(tmp_path, f"{n}.tn", t) for n, t in
                                  [("proven", PROVEN), ("refuted", REFUTED),
                                   ("supported", SUPPORTED)])
    assert main(["verify", proven]) == 0
    assert main(["verify", proven, refuted]) == 1            # several files
    out = capsys.readouterr().out
    assert "2 files: 2 checks: 1 proven, 1 refuted, 0 supported, 0 unknown" in out
    assert main(["verify", supported]) == 0
    assert main(["verify", "--strict", supported]) == 2
    assert main(["verify", "--strict", proven]) == 0
    assert main(["verify", "--strict", supported, refuted]) == 1   # refuted comes first
    capsys.readouterr()
    assert main(["verify", "--compiled-only", refuted]) == 0  # the compiled module alone
    out = capsys.readouterr().out
    assert "compiled vs reference" in out and "check f" not in out
    assert main(["verify", "--compiled", refuted]) == 1
    assert main(["verify", write(tmp_path, "bad.tn", "dim N = \n")]) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--seed", str(2**63), proven])
    assert exit_.value.code == 2
    assert main(["verify", "--compiled-only", "--seed", str(2**63 - 1), proven]) == 0


def test_a_failing_compiled_comparison_exits_1(tmp_path, monkeypatch, capsys):
    from tndsl.verify import compiled
    proven = write(tmp_path, "proven.tn", PROVEN + "y[i, k] = A[i, j] * A[j, k]\n")
    real = compiled.Reference

    class Off(real):  # a reference that disagrees with the compiled module
        def __getitem__(self, name):
            return super().__getitem__(name) + 1.0
    monkeypatch.setattr(compiled, "Reference", Off)
    assert main(["verify", "--compiled-only", proven]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["verify", "--compiled", proven]) == 1


def test_verify_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = capsys.readouterr().out
    for line in ("0  every check proven", "1  a check refuted", "2  with --strict"):
        assert line in text


# ---- verify --compiled: hostile offsets, overflow, reachable windows -------------------

@pytest.mark.parametrize("offset", ["9223372036854775807", "100000000000000000000000000000",
                                    "-9223372036854775807"])
def test_huge_mask_offsets_neither_wrap_nor_crash(tmp_path, capsys, offset):
    path = write(tmp_path, "m.tn", "dim Context = 100\ndim Model = 3\n"
                 "input x[p: Context, m: Model]\n"
                 f"y[p, s] = x[p, m] * x[s, m] where p < s + {offset}\n")
    assert main(["verify", "--compiled-only", path]) == 0
    assert "passed" in capsys.readouterr().out
    program = tndsl.load(path)
    x = torch.randn(100, 3, dtype=torch.float64)
    full = x @ x.T
    expected = full if not offset.startswith("-") else torch.zeros_like(full)
    torch.testing.assert_close(Reference(program, {"x": x})["y"], expected)


def test_data_that_overflows_is_redrawn_or_reported_never_a_mismatch(tmp_path, capsys):
    path = write(tmp_path, "o.tn", "dim N = 3\ninput x[i: N]\n"
                 "y[i] = exp(exp(x[i] * 9))\nz[i] = exp(exp(exp(x[i] * 1000)))\n")
    assert main(["verify", "--compiled-only", path]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "random data overflowed" in out
    assert "  y  max |diff|" in out            # redrawn at a smaller scale
    assert main(["verify", "--compiled-only", "--strict", path]) == 2


def test_shrunk_sizes_keep_every_window_boundary_reachable():
    program = tndsl.parse("dim Context = 1000\ndim Model = 3\ninput x[p: Context, m: Model]\n"
                          "w[p, s] = softmax[s](x[p, m] * x[s, m] where s <= p and p - s < 20)\n"
                          "check window: [p, s] w[p, s] == softmax[s](x[p, m] * x[s, m] "
                          "where s <= p)\n")
    report = program.verify_compiled()
    assert report.sizes["Context"] >= 22 and report.ok
    (result,) = prove_all(program)  # false at the file's sizes: a window of 20
    assert result.status == "refuted", result.render()


# ---- cost: the dominant term -----------------------------------------------------------

def test_cost_dominant_term_on_the_llama_block():
    from tndsl.passes.cost import costs
    program = tndsl.load(ROOT / "examples" / "llama.tn")
    report = costs(program, "blocks.0")
    # Context has no size: the leading term as it grows is the attention's Context².
    assert str(report.dominant(report.total)) == "4*Context**2*Head*Heads"
    sized = costs(tndsl.load(ROOT / "examples" / "llama.tn", {"Context": 8}), "blocks.0")
    # Every dim sized: the largest term (the MLP at Context = 8), never the K/V term.
    assert str(sized.dominant(sized.total)) == "6*Context*Hidden*Model"
    # Ties in degree go to the value: Q/O beats K/V (4x) among the Context-linear terms.
    import sympy
    from tndsl.lang.dims import symbol
    linear = sympy.expand(report.total - 4 * symbol("Context") ** 2 * symbol("Head")
                          * symbol("Heads"))
    assert str(report.dominant(linear)) == "6*Context*Hidden*Model"
    attention = 4 * symbol("Context") * symbol("Head") * (symbol("Heads") * symbol("Model"))
    kv = 4 * symbol("Context") * symbol("Head") * symbol("KVHeads") * symbol("Model")
    assert report.dominant(attention + kv) == attention or \
        program.sizes["Heads"] == program.sizes["KVHeads"]
