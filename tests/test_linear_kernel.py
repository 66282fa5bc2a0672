"""`_linear` in generated code: oneDNN's kernel for plain float32 CPU tensors where no
autograd graph is recorded (it has no backward), F.linear everywhere else; the same
values either way (oracles: the float64 model, which takes F.linear, and F.linear itself
in float64)."""
import pytest
import torch

import tndsl
from conftest import ROOT

GPT2_SMALL = {"Layers": 1, "Model": 32, "Vocab": 50, "Context": 16, "Heads": 4}


def _ops(model, *args):
    with torch.profiler.profile() as prof:
        out = model(*args)
    return out, {e.key for e in prof.key_averages()}


onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available()
    or getattr(torch.ops.mkldnn, "_linear_pointwise", None) is None,
    reason="this torch build has no oneDNN linear kernel: _linear is F.linear there")


@onednn
def test_inference_takes_onednn_and_matches_a_float64_linear():
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims=GPT2_SMALL)
    model = program.module().eval()
    exact = program.module().eval().double()
    exact.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        out, ops = _ops(model, tokens)
        want, exact_ops = _ops(exact, tokens)
    assert "mkldnn::_linear_pointwise" in ops
    assert "mkldnn::_linear_pointwise" not in exact_ops  # float64: F.linear
    assert torch.allclose(out.double(), want, atol=1e-5, rtol=1e-4)


@onednn
def test_training_takes_f_linear_and_its_gradients_are_right():
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims=GPT2_SMALL)
    model = program.module()
    exact = program.module().double()
    exact.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 50, (2, 16))
    out, ops = _ops(model, tokens)
    assert "mkldnn::_linear_pointwise" not in ops  # no autograd formula: never under grad
    out.square().mean().backward()
    exact(tokens).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), exact.parameters()):
        assert torch.allclose(p.grad.double(), q.grad, atol=1e-6, rtol=1e-3), name


@onednn
def test_inputs_that_need_a_graph_or_are_not_plain_take_f_linear():
    source = tndsl.parse("dim M = 8\ndim N = 4\ninput x[b: N, m: M]\nparam W[m: M, n: N]\n"
                         "y[b, n] = x[b, m] * W[m, n]\n").compile().source
    namespace: dict = {}
    exec(compile(source, "generated.py", "exec"), namespace)  # our own generated code
    linear = namespace["_linear"]
    x, w = torch.randn(5, 8), torch.randn(4, 8)
    tracked = x.clone().requires_grad_()
    for args, onednn_expected in (((x, w), True), ((tracked, w), False),
                                  ((x.double(), w.double()), False)):
        with torch.profiler.profile() as prof:
            y = linear(*args)
        used = "mkldnn::_linear_pointwise" in {e.key for e in prof.key_averages()}
        assert used == onednn_expected
        want = torch.nn.functional.linear(*(a.detach().double() for a in args))
        assert torch.allclose(y.detach().double(), want, atol=1e-5)
