"""`verify --compiled` compares with a tolerance relative to each output's scale
(issue 16): rounding alone must not fail a large-valued model, a real error must still
fail a small-valued one, and the report says which tolerance it used."""
import math
import re
import subprocess
import sys

import pytest
import torch

import tndsl
from tndsl.verify import compiled
from tndsl.verify.compiled import TOLERANCE, ComparisonReport, compare_compiled
from tndsl.verify.reference import _ELEMENTWISE
from conftest import ROOT

LARGE = """dim N = 5
param A[i: N, j: N]
param B[i: N, j: N]
param C[i: N, j: N]
y[i, l] = 1000000 * A[i, j] * B[j, k] * C[k, l]
"""


def test_a_large_valued_product_passes_on_rounding_alone():
    report = compare_compiled(tndsl.parse(LARGE, "large.tn"))
    # The values are ~1e7, so rounding alone differs by more than an absolute 1e-9 ...
    assert report.scales["y"] > 1e6
    # ... but by far less than 1e-9 of the values: that is what passes.
    assert report.ok, report.render()
    assert report.allowed("y") == pytest.approx(TOLERANCE * report.scales["y"])
    assert report.worst <= 1e-13


def test_the_cli_passes_it_and_names_the_tolerance(tmp_path):
    source = tmp_path / "large.tn"
    source.write_text(LARGE)
    result = subprocess.run([sys.executable, "-m", "tndsl", "verify", "--compiled",
                             str(source)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tolerance 1e-09 relative (times max(1, max |value|) of each output)" \
        in result.stdout
    assert re.search(r"y  max \|diff\| = \S+  \(max \|value\| = \S+, allowed \S+\)  ok",
                     result.stdout), result.stdout


@pytest.mark.parametrize("difference, scale, ok", [
    (1e-3, 1e7, True),      # 1e-10 relative
    (1e-1, 1e7, False),     # 1e-8 relative
    (5e-10, 1e-3, True),    # below 1: absolute 1e-9
    (2e-9, 1e-3, False),
    (0.0, 0.0, True),
])
def test_the_allowed_difference_scales_with_the_values_and_floors_at_one(difference,
                                                                          scale, ok):
    report = ComparisonReport({"N": 3}, {"y": difference}, {"y": scale}, TOLERANCE)
    assert report.ok is ok
    assert ("MISMATCH" in report.render()) is (not ok)


def test_a_relative_error_of_one_in_a_million_still_fails_at_large_scale(monkeypatch):
    original = compiled.Reference

    class Skewed(original):
        def __getitem__(self, name):
            return super().__getitem__(name) * (1 + 1e-6)

    monkeypatch.setattr(compiled, "Reference", Skewed)
    report = compare_compiled(tndsl.parse(LARGE, "large.tn"))
    assert not report.ok
    assert "MISMATCH" in report.render()
    assert report.worst == pytest.approx(1e-6, rel=0.01)


def test_a_real_mismatch_of_small_values_still_fails(monkeypatch):
    original = compiled.Reference

    class Shifted(original):
        def __getitem__(self, name):
            return super().__getitem__(name) + 1e-8

    monkeypatch.setattr(compiled, "Reference", Shifted)
    program = tndsl.parse("dim N = 3\ninput a[i: N]\ny[i] = 0.001 * a[i]\n")
    report = compare_compiled(program)
    assert report.scales["y"] < 1 and not report.ok
    assert report.worst == pytest.approx(1e-8, rel=0.01)


def test_the_reference_boxes_stay_finite_far_out():
    # The reference evaluator writes its boxes as textbook formulas; tanh's (e^x - e^-x)
    # / (e^x + e^-x) is inf/inf = nan beyond |x| ~ 710, which made `verify --compiled`
    # unable to compare large activations. Checked against math.tanh etc. in float64.
    x = torch.tensor([-1000.0, -750.0, -20.0, -1e-3, 0.0, 1e-3, 0.5, 20.0, 750.0, 1000.0],
                     dtype=torch.float64)
    def sigmoid(v):  # the stable split, so the oracle does not overflow either
        return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))

    expected = {"tanh": math.tanh, "sigmoid": sigmoid, "silu": lambda v: v * sigmoid(v)}
    for name, oracle in expected.items():
        got = _ELEMENTWISE[name](x)
        want = torch.tensor([oracle(v) for v in x.tolist()], dtype=torch.float64)
        assert torch.isfinite(got).all(), name
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-300), name
