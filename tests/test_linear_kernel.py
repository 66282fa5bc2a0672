"""`_linear` in generated code: F.linear, or oneDNN's linear kernel for a float32 CPU
inference shape where timing both on the first call of that shape found oneDNN faster;
F.linear always with TNDSL_AUTOTUNE=0 (the tests' default, conftest.py), under autograd
(the kernel has no backward), for tensor subclasses and other dtypes. The same values
either way (oracles: the float64 model, which takes F.linear, and F.linear in float64).
The choice itself is forced here (the timing is replaced), so no test depends on which
kernel this machine finds faster."""
import pytest
import torch

import tndsl
from conftest import ROOT

GPT2_SMALL = {"Layers": 1, "Model": 32, "Vocab": 50, "Context": 16, "Heads": 4}
ONEDNN = "mkldnn::_linear_pointwise"

onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available()
    or getattr(torch.ops.mkldnn, "_linear_pointwise", None) is None,
    reason="this torch build has no oneDNN linear kernel: _linear is F.linear there")


def _ops(model, *args):
    with torch.profiler.profile() as prof:
        out = model(*args)
    return out, {e.key for e in prof.key_averages()}


def _generated(model) -> dict:
    """The generated file's globals (its helpers and their cache)."""
    return type(model).forward.__globals__


def _force(model, monkeypatch, onednn_faster: bool) -> list:
    """Make the timing say `onednn_faster` for every shape; returns the shapes timed."""
    namespace, timed = _generated(model), []

    def timing(x, weight, bias):
        timed.append((tuple(x.shape), tuple(weight.shape)))
        return onednn_faster
    monkeypatch.setitem(namespace, "_time_linear", timing)
    return timed


def _gpt2():
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims=GPT2_SMALL)
    model = program.module().eval()
    exact = program.module().eval().double()
    exact.load_state_dict(model.state_dict())
    return model, exact


@onednn
@pytest.mark.parametrize("faster", [True, False])
def test_each_shape_is_timed_once_and_the_faster_kernel_kept(faster, monkeypatch):
    monkeypatch.setenv("TNDSL_AUTOTUNE", "1")
    model, exact = _gpt2()
    timed = _force(model, monkeypatch, faster)
    tokens = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        out, ops = _ops(model, tokens)
        shapes = list(timed)
        again, again_ops = _ops(model, tokens)  # cached: nothing timed again
        want, exact_ops = _ops(exact, tokens)
    assert len(shapes) == len(set(shapes)) > 0 and timed == shapes
    assert (ONEDNN in ops) == faster and (ONEDNN in again_ops) == faster
    assert ONEDNN not in exact_ops  # float64: F.linear, never timed
    assert torch.allclose(out.double(), want, atol=1e-5, rtol=1e-4)
    assert torch.equal(out, again)


@onednn
def test_the_real_timing_runs_once_per_shape_and_gives_the_same_values(monkeypatch):
    monkeypatch.setenv("TNDSL_AUTOTUNE", "1")
    model, exact = _gpt2()
    tokens = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        out = model(tokens)
        choices = dict(_generated(model)["_onednn_faster"])
        model(tokens)
        want = exact(tokens)
    assert choices and all(isinstance(v, bool) for v in choices.values())
    assert _generated(model)["_onednn_faster"] == choices
    assert torch.allclose(out.double(), want, atol=1e-5, rtol=1e-4)


@onednn
def test_autotune_off_takes_f_linear_and_times_nothing(monkeypatch):
    monkeypatch.setenv("TNDSL_AUTOTUNE", "0")
    model, _ = _gpt2()
    timed = _force(model, monkeypatch, True)
    with torch.no_grad():
        _, ops = _ops(model, torch.randint(0, 50, (3, 16)))
    assert ONEDNN not in ops and timed == [] and _generated(model)["_onednn_faster"] == {}


@onednn
def test_training_takes_f_linear_and_its_gradients_are_right(monkeypatch):
    monkeypatch.setenv("TNDSL_AUTOTUNE", "1")
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims=GPT2_SMALL)
    model = program.module()
    exact = program.module().double()
    exact.load_state_dict(model.state_dict())
    timed = _force(model, monkeypatch, True)
    tokens = torch.randint(0, 50, (2, 16))
    out, ops = _ops(model, tokens)
    assert ONEDNN not in ops and timed == []  # no autograd formula: never under grad
    out.square().mean().backward()
    exact(tokens).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), exact.parameters()):
        assert torch.allclose(p.grad.double(), q.grad, atol=1e-6, rtol=1e-3), name


class _Subclass(torch.Tensor):
    """A tensor subclass (as DTensor is): the kernel would drop what it carries."""


@onednn
def test_inputs_that_need_a_graph_or_are_not_plain_take_f_linear(monkeypatch):
    monkeypatch.setenv("TNDSL_AUTOTUNE", "1")
    source = tndsl.parse("dim M = 8\ndim N = 4\ninput x[b: N, m: M]\nparam W[m: M, n: N]\n"
                         "y[b, n] = x[b, m] * W[m, n]\n").compile().source
    namespace: dict = {}
    exec(compile(source, "generated.py", "exec"), namespace)  # our own generated code
    namespace["_time_linear"] = lambda x, weight, bias: True
    linear = namespace["_linear"]
    x, w = torch.randn(5, 8), torch.randn(4, 8)
    tracked = x.clone().requires_grad_()
    subclass = x.as_subclass(_Subclass)
    cases = [((x, w), True), ((tracked, w), False), ((x.double(), w.double()), False),
             ((x[0], w), False), ((subclass, w), False), ((x, w.as_subclass(_Subclass)), False)]
    for args, onednn_expected in cases:
        with torch.profiler.profile() as prof:
            y = linear(*args)
        used = ONEDNN in {e.key for e in prof.key_averages()}
        assert used == onednn_expected, [a.shape for a in args]
        want = torch.nn.functional.linear(*(a.detach().double() for a in args))
        assert torch.allclose(y.detach().double(), want, atol=1e-5)
