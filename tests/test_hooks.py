"""Hooks: read and change named intermediates, checked against hand computations."""
import math

import pytest
import torch

import tndsl
from tndsl.interp.hooks import add, clamp, hook_names, intervene, replace, run_with_cache, scale
from conftest import ROOT


@pytest.fixture
def head():
    torch.manual_seed(0)
    return tndsl.load(ROOT / "examples" / "attention_head.tn").module().double()


def test_hook_names_are_the_equations_in_order(head):
    assert hook_names(head) == ("scores", "pattern", "out")
    model = tndsl.load(ROOT / "examples" / "attn_only_2l.tn").module(["logits"])
    assert "blocks.1.attn.pattern" in hook_names(model)
    assert hook_names(model).index("resid1") < hook_names(model).index("blocks.1.attn.pattern")


def test_cache_holds_the_intermediates_and_changes_nothing(head):
    x = torch.randn(16, 32, dtype=torch.float64)
    plain = head(x)
    output, cache = run_with_cache(head, x, names=["pattern", "scores"])
    assert torch.equal(output, plain)
    w = dict(head.named_parameters())
    scores = (x @ w["W_Q"]) @ (x @ w["W_K"]).T / math.sqrt(8)
    assert torch.allclose(cache["scores"], scores, atol=1e-12)
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    pattern = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)
    assert torch.allclose(cache["pattern"], pattern, atol=1e-12)
    assert not any(m._forward_hooks for m in head.modules())  # nothing left behind


def test_patching_the_pattern_changes_the_output_as_computed_by_hand(head):
    x = torch.randn(16, 32, dtype=torch.float64)
    uniform = torch.ones(16, 16, dtype=torch.float64).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    with intervene(head, {"pattern": replace(uniform)}):
        patched = head(x)
    w = dict(head.named_parameters())
    assert torch.allclose(patched, uniform @ x @ w["W_V"] @ w["W_O"], atol=1e-12)
    assert not torch.allclose(head(x), patched)  # and the hook is gone afterwards


def test_add_scale_and_clamp(head):
    x = torch.randn(16, 32, dtype=torch.float64)
    plain = head(x)
    with intervene(head, {"out": [scale(2.0), add(1.0)]}):
        assert torch.allclose(head(x), 2 * plain + 1)
    direction = torch.randn(32, dtype=torch.float64)
    with intervene(head, {"out": clamp(direction, 3.0)}):
        clamped = head(x)
    unit = direction / direction.norm()
    assert torch.allclose(clamped @ unit, torch.full((16,), 3.0, dtype=torch.float64))
    # The orthogonal part is untouched.
    assert torch.allclose(clamped - torch.outer(clamped @ unit, unit),
                          plain - torch.outer(plain @ unit, unit))


def test_interventions_are_differentiable(head):
    x = torch.randn(16, 32, dtype=torch.float64)
    factor = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    with intervene(head, {"scores": scale(factor)}):
        head(x).sum().backward()
    assert factor.grad is not None and factor.grad != 0


def test_unknown_hook_point_suggests_names(head):
    with pytest.raises(tndsl.TnError) as info:
        with intervene(head, {"patern": scale(0.0)}):
            pass
    assert "pattern" in info.value.hint
