"""Circuits, checked against the materialised matrices at small vocab (float64)."""
import pytest
import torch

from tndsl.interp.circuits import (NetworkMatrix, composition_baseline, composition_score,
                            composition_scores, copying_score, full_ov_circuit,
                            full_qk_circuit, ov_matrix, qk_matrix)
from tndsl.lang.errors import ResourceError

torch.manual_seed(0)
V, M, H, E = 40, 16, 3, 4


@pytest.fixture(scope="module")
def weights():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    return {"W_E": r(V, M), "W_U": r(M, V), "W_Q": r(H, M, E), "W_K": r(H, M, E),
            "W_V": r(H, M, E), "W_O": r(H, E, M)}


def dense(w, h):
    return w["W_E"] @ w["W_V"][h] @ w["W_O"][h] @ w["W_U"]


def test_ov_circuit_norm_trace_eigenvalues_and_singular_values(weights):
    for h in range(H):
        circuit = full_ov_circuit(weights["W_E"], weights["W_V"], weights["W_O"],
                                  weights["W_U"], h)
        full = dense(weights, h)
        assert circuit.split()[0].shape == (V, E)  # factored through the head dim
        assert abs(circuit.frobenius_norm() - torch.linalg.matrix_norm(full)) < 1e-8
        assert abs(circuit.trace() - torch.trace(full)) < 1e-8
        ours = sorted(circuit.eigenvalues().tolist(), key=lambda z: (z.real, z.imag))
        eig = torch.linalg.eigvals(full)
        theirs = sorted(eig[eig.abs() > 1e-8 * eig.abs().max()].tolist(),
                        key=lambda z: (z.real, z.imag))
        assert len(ours) == len(theirs) == E
        assert all(abs(a - b) < 1e-8 for a, b in zip(ours, theirs))
        sv = torch.linalg.svdvals(full)[:E]
        assert torch.allclose(circuit.singular_values(), sv, atol=1e-8)


def test_rows_top_k_and_materialize(weights):
    circuit = full_qk_circuit(weights["W_E"], weights["W_Q"], weights["W_K"], 1)
    full = weights["W_E"] @ weights["W_Q"][1] @ weights["W_K"][1].T @ weights["W_E"].T
    assert torch.allclose(circuit.rows_of([3, 7]), full[[3, 7]], atol=1e-10)
    values, columns = circuit.top_k([5], 3)
    assert torch.equal(columns[0], torch.topk(full[5], 3).indices)
    assert torch.allclose(circuit.materialize(), full, atol=1e-10)


def test_materializing_past_the_budget_is_refused_with_the_cheaper_call(weights):
    circuit = NetworkMatrix.chain(torch.zeros(50257, 64), torch.zeros(64, 50257))
    with pytest.raises(ResourceError) as info:
        circuit.materialize()
    assert "50,257 x 50,257" in info.value.message and "9.4 GiB" in info.value.message
    assert "eigenvalues()" in info.value.hint


def test_cheapest_cut_in_a_general_network():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(30, 2, 5, generator=g, dtype=torch.float64)   # rows i; bond j, k
    b = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    c = torch.randn(7, 30, generator=g, dtype=torch.float64)      # columns l
    m = NetworkMatrix([(a, "ijk"), (b, "jkm"), (c, "ml")], ["i"], ["l"])
    left, _ = m.split()
    assert left.shape == (30, 7)  # the 7-wide wire is narrower than j x k = 10
    full = torch.einsum("ijk,jkm,ml->il", a, b, c)
    assert abs(m.frobenius_norm() - torch.linalg.matrix_norm(full)) < 1e-8


def test_composition_and_copying_scores(weights):
    w = weights
    ov, qk = ov_matrix(w["W_V"], w["W_O"], 0), qk_matrix(w["W_Q"], w["W_K"], 1)
    a = w["W_V"][0] @ w["W_O"][0]
    b = w["W_Q"][1] @ w["W_K"][1].T
    expected = torch.linalg.matrix_norm(a @ b) / (torch.linalg.matrix_norm(a) *
                                                  torch.linalg.matrix_norm(b))
    assert abs(composition_score(ov, qk) - float(expected)) < 1e-10
    k = composition_scores(w["W_Q"], w["W_K"], w["W_V"], w["W_O"],
                           w["W_Q"], w["W_K"], w["W_V"], w["W_O"], "k")
    assert abs(k[0, 1] - float(torch.linalg.matrix_norm(a @ b.T) /
                               (torch.linalg.matrix_norm(a) * torch.linalg.matrix_norm(b)))) < 1e-10
    # A head that copies: W_V W_O W_U W_E close to a positive multiple of the identity.
    w_e = torch.randn(V, M, dtype=torch.float64)
    w_u = torch.linalg.pinv(w_e)
    w_v = torch.eye(M, dtype=torch.float64)[None, :, :E]
    w_o = torch.eye(M, dtype=torch.float64)[None, :E, :]
    assert copying_score(full_ov_circuit(w_e, w_v, w_o, w_u, 0)) > 0.999
    assert copying_score(full_ov_circuit(w_e, w_v, -w_o, w_u, 0)) < -0.999
    baseline = composition_baseline(M, E, samples=50)
    assert 0 < baseline < 1


def test_any_tn_network_as_a_matrix():
    import tndsl
    from tndsl.interp.circuits import named_weights
    from conftest import ROOT
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn",
                         dims={"Vocab": 40, "Model": 16, "Heads": 2})
    weights = {k: v.double() for k, v in named_weights(program.module(["logits"])).items()}
    circuit = NetworkMatrix.from_equation(program, "ov_circuit1", weights, rows=["w"],
                                          cols=["u"], fixed={"h": 1})
    full = (weights["embed.W_E"] @ weights["blocks.1.attn.W_V"][1] @
            weights["blocks.1.attn.W_O"][1] @ weights["unembed.W_U"])
    assert circuit.split()[0].shape == (40, 8)
    assert torch.allclose(circuit.materialize(), full, atol=1e-10)
    assert abs(circuit.frobenius_norm() - torch.linalg.matrix_norm(full)) < 1e-8
    with pytest.raises(tndsl.TnError, match="not a single box-free product"):
        NetworkMatrix.from_equation(program, "blocks.0.attn.scores", weights,
                                    rows=["p"], cols=["s"], fixed={"h": 0})
