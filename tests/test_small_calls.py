"""Small contractions and the per-call path of a generated forward: `torch.mv` for a
vector, params and hook points as plain attributes (`self.W`, `y = self.hook_y(y)`), the
input check. Numbers are checked against the float64 reference evaluator; hooks, param
replacement and the input errors against PyTorch's own semantics. (Speed:
`bench/forward.py --matvec`.)"""
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

import tndsl
from tndsl.codegen.torch import HELPERS_BANNER
from tndsl.verify.numeric import random_tensors
from tndsl.verify.reference import Reference
from conftest import loaded

SIZES = "dim M = 64\ndim N = 64\n"
MATVEC = SIZES + "input x[m: M]\nparam W[n: N, m: M]\ny[n] = W[n, m] * x[m]\n"
FORMS = {
    "matvec": MATVEC,
    "vecmat": SIZES + "input x[m: M]\nparam W[m: M, n: N]\ny[n] = x[m] * W[m, n]\n",
    "matvec_bias": SIZES + "input x[m: M]\nparam W[n: N, m: M]\nparam b[n: N]\n"
                           "y[n] = W[n, m] * x[m] + b[n]\n",
    "matmat": SIZES + "input x[p: N, m: M]\nparam W[n: N, m: M]\ny[p, n] = W[n, m] * x[p, m]\n",
    "matmat_in_out": SIZES + "input x[p: N, m: M]\nparam W[m: M, n: N]\n"
                             "y[p, n] = x[p, m] * W[m, n]\n",
    "heads": SIZES + "dim H = 3\ninput x[m: M]\nparam W[h: H, n: N, m: M]\n"
                     "y[h, n] = W[h, n, m] * x[m]\n",
    "param_vector": SIZES + "param v[m: M]\nparam W[n: N, m: M]\ninput s[n: N]\n"
                            "y[n] = W[n, m] * v[m] * s[n]\n",
}


def _setup(text, name="small.tn"):
    program = tndsl.parse(text, name)
    values = random_tensors(program, torch.Generator().manual_seed(0))
    return program, values, loaded(program, values)


def _forward_text(module) -> str:
    source = module.tndsl_source
    source = source[:source.index(HELPERS_BANNER)]   # the helpers follow the classes
    return source[source.rindex("    def forward"):]


@pytest.mark.parametrize("form", sorted(FORMS))
def test_small_forms_equal_the_reference_unbatched_and_batched(form):
    program, values, module = _setup(FORMS[form], f"{form}.tn")
    (tensor,) = [t for t in program.network.tensors if t.kind == "input"]
    input_name, shape = tensor.name, tuple(program.sizes[leg.dim] for leg in tensor.legs)
    x = torch.randn((3, 2) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    final = program.final.name
    with torch.no_grad():
        single = module(x[0, 0])
        batched = module(x)
    assert single.shape == tuple(program.sizes[leg.dim] for leg in program.final.legs)
    assert (single - Reference(program, {**values, input_name: x[0, 0]})[final]).abs().max() < 1e-10
    for i in range(3):
        for j in range(2):
            expected = Reference(program, {**values, input_name: x[i, j]})[final]
            assert (batched[i, j] - expected).abs().max() < 1e-10
    # No weight is permuted (a copy under matmul) on any call.
    assert ".permute(" not in _forward_text(module)


def test_a_param_vector_takes_mv_and_an_input_takes_f_linear():
    _, _, unbatched = _setup(FORMS["param_vector"])
    assert "torch.mv(self.W, self.v)" in _forward_text(unbatched)  # never batched
    _, _, module = _setup(MATVEC)
    assert "y = _linear(x, self.W)" in _forward_text(module)  # an input may carry a batch
    # Which call ran, seen by the dispatcher rather than in the text.
    with torch.no_grad(), torch.profiler.profile() as prof:
        module(torch.randn(5, 64, dtype=torch.float64))
    assert "aten::linear" in {e.name for e in prof.events()}


def test_params_and_hook_points_are_plain_attributes():
    _, _, module = _setup(MATVEC)
    text = _forward_text(module)
    assert "y = _linear(x, self.W)\n        y = self.hook_y(y)\n" in text
    assert not re.search(r"_parameters|_modules|__dict__|get_parameter|hooked", text)


# ---- hooks still fire on the fast path ------------------------------------------------------

def test_root_forward_hook_fires_and_can_replace_the_output():
    _, _, module = _setup(MATVEC)
    x = torch.randn(64, dtype=torch.float64)
    handle = module.register_forward_hook(lambda mod, args, out: out * 2)
    try:
        with torch.no_grad():
            doubled = module(x)
    finally:
        handle.remove()
    with torch.no_grad():
        assert torch.equal(doubled, 2 * module(x))
        assert torch.allclose(module(x), module.W @ x, atol=1e-12, rtol=0)


def test_hook_point_forward_hook_fires_and_patches():
    _, _, module = _setup(MATVEC)
    x = torch.randn(64, dtype=torch.float64)
    seen = []

    def patch(mod, args, out):
        seen.append(out.clone())
        return torch.zeros_like(out)

    handle = module.hook_y.register_forward_hook(patch)
    try:
        with torch.no_grad():
            patched = module(x)
    finally:
        handle.remove()
    assert len(seen) == 1 and torch.allclose(seen[0], module.W.detach() @ x, atol=1e-12, rtol=0)
    assert torch.equal(patched, torch.zeros(64, dtype=torch.float64))
    with torch.no_grad():
        assert not torch.equal(module(x), patched)  # removed: gone again


def test_a_hook_registered_after_the_first_call_fires_and_goes_when_removed():
    _, _, module = _setup(MATVEC)
    x = torch.randn(64, dtype=torch.float64)
    with torch.no_grad():
        plain = module(x)
        handle = module.hook_y.register_forward_hook(lambda mod, args, out: out + 1)
        assert module.hook_y.hooked
        assert torch.equal(module(x), plain + 1)
        handle.remove()
        assert not module.hook_y.hooked
        assert torch.equal(module(x), plain)


@pytest.mark.filterwarnings("ignore:Using a non-full backward hook:FutureWarning")
@pytest.mark.parametrize("method", ["register_forward_hook", "register_forward_pre_hook",
                                    "register_full_backward_hook",
                                    "register_full_backward_pre_hook",
                                    "register_backward_hook"])
def test_every_way_of_registering_a_hook_fires_and_marks_the_point_hooked(method):
    _, _, module = _setup(MATVEC)
    calls = []
    getattr(module.hook_y, method)(lambda *args: calls.append(method))
    assert module.hook_y.hooked
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    module(x).sum().backward()
    assert calls == [method]


def test_global_module_forward_hook_reaches_the_hook_point():
    _, _, module = _setup(MATVEC)
    seen = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: seen.append(getattr(mod, "tn_name", type(mod).__name__)))
    try:
        with torch.no_grad():
            module(torch.randn(2, 64, dtype=torch.float64))
    finally:
        handle.remove()
    assert seen == ["y", type(module).__name__]
    assert not module.hook_y.hooked  # the global hook is gone again


def test_hook_point_backward_hook_fires():
    # A backward hook alone makes a hook point `hooked`: the value passes through it.
    _, _, module = _setup(MATVEC)
    x = torch.randn(64, dtype=torch.float64)
    grads = []
    handle = module.hook_y.register_full_backward_hook(
        lambda mod, grad_in, grad_out: grads.append(grad_out[0].clone()))
    try:
        module(x).pow(2).sum().backward()
    finally:
        handle.remove()
    expected = 2 * (module.W.detach() @ x)
    assert len(grads) == 1 and torch.allclose(grads[0], expected, atol=1e-12, rtol=0)
    assert torch.allclose(module.W.grad, torch.outer(expected, x), atol=1e-12, rtol=0)


# ---- params replaced the ways PyTorch tools replace them ------------------------------------

def test_functional_call_and_a_parametrization_are_honoured():
    _, _, module = _setup(MATVEC)
    x = torch.randn(64, dtype=torch.float64)
    other = torch.randn(64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(functional_call(module, {"W": other}, (x,)), other @ x,
                              atol=1e-12, rtol=0)

    class Symmetric(nn.Module):
        def forward(self, w):
            return w.triu() + w.triu(1).t()

    parametrize.register_parametrization(module, "W", Symmetric())
    assert "W" not in module._parameters  # `self.W` is now the parametrization's value
    with torch.no_grad():
        weight = module.parametrizations.W.original
        expected = (weight.triu() + weight.triu(1).t()) @ x
        assert torch.allclose(module(x), expected, atol=1e-12, rtol=0)


def test_a_param_set_as_a_new_parameter_is_read():
    _, _, module = _setup(MATVEC)
    x = torch.randn(64, dtype=torch.float64)
    module.W = nn.Parameter(torch.eye(64, dtype=torch.float64) * 3)
    with torch.no_grad():
        assert torch.equal(module(x), 3 * x)


def test_torch_compile_takes_the_fast_path_as_one_graph():
    _, _, module = _setup(MATVEC)
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    for x in (torch.randn(64, dtype=torch.float64), torch.randn(3, 64, dtype=torch.float64)):
        with torch.no_grad():
            assert torch.allclose(compiled(x), module(x), atol=1e-12, rtol=0)


# ---- input checks: the same clear errors ----------------------------------------------------

@pytest.mark.parametrize("value, error, message", [
    (torch.randn(63), ValueError, r"input x must have shape \(\.\.\., 64\), got \(63,\)"),
    (torch.randn(64, 2), ValueError, r"input x must have shape \(\.\.\., 64\), got \(64, 2\)"),
    (torch.tensor(1.0), ValueError, r"input x must have shape \(\.\.\., 64\), got \(\)"),
    ([0.0] * 64, TypeError, "input x must be a torch.Tensor, got list"),
])
def test_wrong_inputs_raise_the_clear_errors(value, error, message):
    _, _, module = _setup(MATVEC)
    with pytest.raises(error, match=message):
        module(value)


def test_a_tensor_subclass_of_the_right_shape_is_accepted():
    _, _, module = _setup(MATVEC)
    x = nn.Parameter(torch.randn(64, dtype=torch.float64))
    with torch.no_grad():
        assert torch.allclose(module(x), module.W @ x, atol=1e-12, rtol=0)


IDS = "dim V = 5\ndim C = 4\ndim D = 3\ninput tokens[p: C, v: onehot V]\nparam E[v: V, d: D]\n" \
      "e[p, d] = tokens[p, v] * E[v, d]\n"


def test_ids_inputs_refuse_floats_and_accept_shorter_sequences():
    program, values, module = _setup(IDS, "ids.tn")
    text = _forward_text(module)
    assert "_check_input(tokens, 'tokens', (4,), ids=5, at_most=(0,))" in text
    with pytest.raises(TypeError, match=r"input tokens holds token ids in \[0, 5\) and must "
                                        "be an integer tensor, got torch.float32"):
        module(torch.zeros(4))
    with pytest.raises(TypeError, match="must be an integer tensor, got torch.complex64"):
        module(torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., <=4\), got \(2, 5\)"):
        module(torch.zeros(2, 5, dtype=torch.long))
    tokens = torch.tensor([1, 4, 0])  # shorter than C: allowed, as a sequence is
    with torch.no_grad():
        out = module(tokens)
    assert torch.allclose(out, values["E"][tokens], atol=1e-12, rtol=0)
