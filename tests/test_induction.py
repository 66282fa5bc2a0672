"""The induction study, shortened (1,200 steps, fixed seed; about 20 s on CI) with bars
set for that length; the full study's bars are met in examples/induction/report."""
import json

import pytest

from tndsl.induction import Config, run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("induction")
    return out, run(out, Config(steps=1200, eval_sequences=128), stream=None)


def test_a_previous_token_head_and_an_induction_head_form(report):
    _, r = report
    layer, prev = r["previous_token_head"]
    _, ind = r["induction_head"]
    assert layer == 0 and r["heads"]["layer0"]["previous_token"][prev] >= 0.55
    assert r["heads"]["layer1"]["induction"][ind] >= 0.55
    assert r["heads"]["layer1"]["copying"][ind] >= 0.9


def test_k_composition_from_the_previous_token_head_beats_chance(report):
    _, r = report
    prev, ind = r["previous_token_head"][1], r["induction_head"][1]
    assert r["composition"]["k"][prev][ind] > r["composition"]["baseline"]


def test_the_qk_expansion_sums_to_the_scores_and_is_proven(report):
    _, r = report
    q = r["qk_expansion"]
    assert q["largest_error"] < 1e-10
    assert abs(sum(q["terms_on_induction_stripe"].values()) - q["actual_on_induction_stripe"]) < 1e-8
    assert q["proof"]["status"] == "proven"
    # K-composition carries the induction stripe.
    terms = q["terms_on_induction_stripe"]
    assert terms["K"] == max(terms.values())


def test_the_report_is_written(report):
    out, r = report
    data = json.loads((out / "report.json").read_text())
    assert data["induction_head"] == r["induction_head"] and data["training"]["steps"] == 1200
    text = (out / "report.md").read_text()
    assert "## K-composition" in text and "proven" in text
    for name in ("attention_patterns.png", "k_composition.png", "loss.png", "qk_expansion.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
