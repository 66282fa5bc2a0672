"""Projection fusion (issue 10): projections of one activation become one GEMM with a
packed weight, cached across calls only where that is sound.

Oracles: the float64 reference evaluator (`tndsl/verify/reference.py`) on the model's
current param values, and the same program compiled without the pass."""
import pytest
import torch

import tndsl
from tndsl.interp.hooks import intervene, replace, run_with_cache
from tndsl.passes.fuse_projections import FusedProjections, fuse_projections
from tndsl.verify.numeric import random_tensors
from tndsl.verify.reference import Reference
from conftest import ROOT, loaded, small_gpt2

GPT2 = ROOT / "examples" / "gpt2_small.tn"
LLAMA = ROOT / "examples" / "llama.tn"
SMALL = {"Context": 8, "Vocab": 11, "Model": 16, "Heads": 2, "Layers": 2}
LLAMA_SMALL = {"Context": 8, "Vocab": 11, "Model": 16, "Heads": 4, "KVHeads": 2,
               "Hidden": 24, "Layers": 2}


_loaded = loaded


def _reference(program, module, tokens):
    """The reference evaluator on the module's params as they are now, in float64."""
    state = {name: p.detach().double() for name, p in module.named_parameters()}
    return torch.stack([Reference(program, {**state, "tokens": t})["logits"] for t in tokens])


@pytest.fixture(scope="module")
def gpt2():
    return small_gpt2(SMALL)


# ---- the pass as a pure function ---------------------------------------------------------

QKV = """
dim P = 4
dim M = 6
dim H = 2
dim E = 3
input x[p: P, m: M]
input y[p: P, m: M]
param W_Q[h: H, m: M, e: E]
param W_K[h: H, m: M, e: E]
param W_V[m: M, h: H, e: E]
param b_Q[h: H, e: E]
param b_K[e: E, h: H]
param W_G[m: M, f: E]
q[p, h, e] = x[p, m] * W_Q[h, m, e] + b_Q[h, e] * ones[p]
k[p, h, e] = x[p, m] * W_K[h, m, e] + b_K[e, h] * ones[p]
v[p, h, e] = x[p, n] * W_V[n, h, e]
g[p, f] = silu(x[p, m] * W_G[m, f])
"""
PARAMS = frozenset({"W_Q", "W_K", "W_V", "b_Q", "b_K", "W_G"})


def _items(text):
    return tuple(tndsl.parse(text).equations)


def test_projections_of_one_activation_group_by_bias_and_keep_boxes():
    items = _items(QKV)
    fused = fuse_projections(items, frozenset({"x", "y"}), PARAMS, frozenset())
    assert all(isinstance(f, FusedProjections) for f in fused) and len(fused) == 2
    biased, plain = fused
    assert biased.names == ("q", "k") and biased.argument == "x"
    assert [p.bias for p in biased.parts] == ["b_Q", "b_K"]
    assert biased.parts[1].bias_indices == ("e", "h")     # permuted into place when packed
    assert plain.names == ("v", "g")                       # `v` names x's leg `n`: same leg
    assert [p.box for p in plain.parts] == [None, "silu"]
    assert plain.parts[0].contracted == ("n",) and plain.parts[1].contracted == ("m",)


@pytest.mark.parametrize("extra, runtime", [
    ("k[p, h, e] = y[p, m] * W_K[h, m, e]\n", ()),             # another activation
    ("k[p, h, e] = 2 * x[p, m] * W_K[h, m, e]\n", ()),         # scaled
    ("k[h, p, e] = x[p, m] * W_K[h, m, e]\n", ()),             # rows not leading
    ("k[p, h, e] = x[p, m] * W_K[h, m, e] + x[p, m] * W_Q[h, m, e]\n", ()),  # two products
    ("k[p, h, e] = x[p, m] * W_K[h, m, e]\n", ("E",)),         # a weight leg sized at run time
    ("k[p, h, m] = softmax[m](x[p, m] * W_Q[h, n, e] * W_K[h, n, e])\n", ()),  # not a product
])
def test_a_projection_that_does_not_fit_is_left_alone(extra, runtime):
    text = QKV.split("q[p, h, e]")[0] + "q[p, h, e] = x[p, m] * W_Q[h, m, e]\n" + extra
    items = _items(text)
    assert fuse_projections(items, frozenset({"x", "y"}), PARAMS, frozenset(runtime)) == items


def test_projections_in_mixed_layouts_compute_what_the_reference_does():
    # `v` stores its weight [m, h, e] and `g` is 2-D with a box: packed by a reshape of
    # each part; `k`'s bias is stored [e, h]: permuted into place. x is a float input.
    program = tndsl.parse(QKV)
    outputs = ["q", "k", "v", "g"]
    generated = program.compile(outputs, fuse="all")
    assert generated.source.count("= _packed(self") == 2
    values = random_tensors(program, torch.Generator().manual_seed(4))
    model = _loaded(program, values, outputs=outputs, fuse="all")
    with torch.no_grad():
        result = model(*[values[n] for n in generated.inputs])
    reference = Reference(program, values)
    for name in outputs:
        assert torch.allclose(result[name], reference[name], atol=1e-10, rtol=0), name


# ---- generated code ------------------------------------------------------------------------

def test_gpt2_attention_packs_its_weights_once_and_slices_views():
    source = tndsl.load(GPT2, dims={"Layers": 1}).compile(fuse="all").source
    attention = source.split("class Attention(")[1].split("\nclass ")[0]
    fused_branch = attention.split("        else:\n")[1].split("        del ")[0]
    assert fused_branch.split("\n")[:4] == [
        "            projected_1 = F.linear(x, *packed_1)",
        "            q = projected_1[..., :768].unflatten(-1, (12, 64))",
        "            k = projected_1[..., 768:1536].unflatten(-1, (12, 64))",
        "            v = projected_1[..., 1536:].unflatten(-1, (12, 64))"]
    assert "permute" not in fused_branch and "reshape" not in fused_branch
    pack = attention.split("_packed(self, 'q', (self.W_Q, self.W_K, self.W_V, self.b_Q, self.b_K, "
                     "self.b_V), lambda: (")[1]
    assert pack.split(")))")[0].count("torch.cat") == 2   # one copy for the weights, one for the biases
    assert "def _apply(self, *args, **kwargs):" in attention
    off = tndsl.load(GPT2, dims={"Layers": 1}).compile().source
    assert "_packed" not in off and "_apply" not in off


def test_gated_mlp_projections_share_one_gemm_and_the_gate_keeps_its_box():
    source = tndsl.load(LLAMA, dims=LLAMA_SMALL).compile(fuse="all").source
    assert "gate = F.silu(projected_1[..., :24])" in source
    assert "pre = projected_1[..., 24:]" in source
    assert "v = projected_1[..., 768:].unflatten(-1, (2, 128))" in source


# ---- values: fused = unfused = the reference ----------------------------------------------

@pytest.mark.parametrize("path, dims", [(GPT2, SMALL), (LLAMA, LLAMA_SMALL)],
                         ids=["gpt2", "llama"])
def test_training_gradients_equal_the_unfused_model(path, dims):
    program = tndsl.load(path, dims=dims)
    values = random_tensors(program, torch.Generator().manual_seed(2))
    tokens = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(3))
    grads = []
    for options in ({"fuse": ["projections"]}, {"fuse": False}):
        model = _loaded(program, values, **options)
        model.zero_grad()
        logits = model(tokens)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                          tokens[:, 1:].flatten()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert not model.__dict__.get("_tndsl_packed") and not any(
            m.__dict__.get("_tndsl_packed") for m in model.modules())  # nothing cached under grad
    fused, unfused = grads
    assert set(fused) == set(unfused)
    for name in fused:
        assert torch.allclose(fused[name], unfused[name], atol=1e-10, rtol=0), name
    assert fused["blocks.1.attn.W_K"].abs().max() > 0


def test_hooks_on_q_k_v_read_and_patch_with_the_pass_on(gpt2):
    program, values, tokens = gpt2
    fused = _loaded(program, values, fuse=["projections"])
    unfused = _loaded(program, values, fuse=False)
    assert "_packed" in program.compile(fuse=["projections"]).source
    names = ["blocks.0.attn.q", "blocks.0.attn.v", "blocks.1.attn.k", "blocks.1.attn.v"]
    with torch.no_grad():
        out_f, cache_f = run_with_cache(fused, tokens, names=names)
        out_u, cache_u = run_with_cache(unfused, tokens, names=names)
    for name in names:
        assert torch.allclose(cache_f[name], cache_u[name], atol=1e-12, rtol=0), name
    assert torch.allclose(out_f, out_u, atol=1e-10, rtol=0)
    # Replacing k changes what comes after it, exactly as in the unfused model.
    zeros = torch.zeros(2, 8, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        with intervene(fused, {"blocks.1.attn.k": replace(zeros)}):
            patched_f = fused(tokens)
        with intervene(unfused, {"blocks.1.attn.k": replace(zeros)}):
            patched_u = unfused(tokens)
    assert torch.allclose(patched_f, patched_u, atol=1e-10, rtol=0)
    assert not torch.allclose(patched_f, out_f)
    # A plain PyTorch forward hook on the hook point of v sees v and can replace it.
    seen = []
    handle = fused.get_submodule("blocks.0.attn.hook_v").register_forward_hook(
        lambda module, args, output: seen.append(output.clone()) or output * 2)
    try:
        with torch.no_grad():
            doubled = fused(tokens)
    finally:
        handle.remove()
    with torch.no_grad(), intervene(unfused, {"blocks.0.attn.v": lambda v: v * 2}):
        expected = unfused(tokens)
    assert len(seen) == 1 and torch.allclose(seen[0], cache_u["blocks.0.attn.v"], atol=1e-12, rtol=0)
    assert torch.allclose(doubled, expected, atol=1e-10, rtol=0)


# ---- the packed-weight cache ------------------------------------------------------------

def _packed_entries(model):
    return {id(m): dict(m.__dict__["_tndsl_packed"]) for m in model.modules()
            if "_tndsl_packed" in m.__dict__}


def test_the_packed_weight_is_reused_at_inference_and_not_in_the_state_dict(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values, fuse=["projections"])
    with torch.no_grad():
        model(tokens)
        first = _packed_entries(model)
        model(tokens)
        second = _packed_entries(model)
    assert len(first) == 2  # one Attention instance per layer
    for key in first:
        (entry,) = first[key].values()
        assert second[key]["q"][2] is entry[2]  # the same tensors, not rebuilt
    assert set(model.state_dict()) == {p.name for p in program.params}


def _sgd_step(model, tokens):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                      tokens[:, 1:].flatten()).backward()
    optimizer.step()


def _add_to_w_q(model, tokens):
    with torch.no_grad():
        model.blocks[1].attn.W_Q.add_(1.0)


def _load_other_values(model, tokens):
    other = {n: torch.randn_like(p) for n, p in model.state_dict().items()}
    model.load_state_dict(other)


@pytest.mark.parametrize("change", [_sgd_step, _add_to_w_q, _load_other_values],
                         ids=["optimizer.step", "no_grad add_", "load_state_dict"])
def test_the_cache_goes_stale_when_the_params_change(gpt2, change):
    program, values, tokens = gpt2
    model = _loaded(program, values, fuse=["projections"])
    with torch.no_grad():
        before = model(tokens)
    assert _packed_entries(model)
    change(model, tokens)
    with torch.no_grad():
        after = model(tokens)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, _reference(program, model, tokens), atol=1e-10, rtol=0)


def test_the_cache_follows_dtype_conversions(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values, dtype=torch.float32, fuse=["projections"])
    with torch.no_grad():
        model(tokens)
        model.double()          # float64 now: the float32 pack must not be used
        assert not _packed_entries(model)
        assert torch.allclose(model(tokens), _reference(program, model, tokens),
                              atol=1e-10, rtol=0)
        model.half().double()   # values rounded to half: a pack from before is stale
        assert torch.allclose(model(tokens), _reference(program, model, tokens),
                              atol=1e-10, rtol=0)


def test_a_pack_made_in_inference_mode_is_not_reused_outside_it(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values, fuse=["projections"])
    with torch.inference_mode():
        model(tokens)
    _sgd_step(model, tokens)     # saves the weights for backward: must not be inference tensors
    with torch.no_grad():
        assert torch.allclose(model(tokens), _reference(program, model, tokens),
                              atol=1e-10, rtol=0)


def test_at_inference_attention_copies_neither_weights_nor_q_k_v_z():
    # The only copies left are each GEMM's bias written into its output (inside addmm):
    # the packed weight is reused, and q, k, v reach SDPA as strided views of the one
    # GEMM's result, whose output the projection by W_O reads as a view too.
    program = tndsl.load(GPT2, dims={"Layers": 1, "Context": 16, "Model": 64, "Heads": 4,
                                     "Vocab": 11})

    def copies(model):
        attention, x = model.blocks[0].attn, torch.randn(2, 16, 64)
        with torch.no_grad():
            attention(x)
            with torch.profiler.profile(record_shapes=True) as profile:
                attention(x)
        return [(e.key, e.input_shapes[0], e.count)
                for e in profile.key_averages(group_by_input_shape=True)
                if e.key in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat")]

    fused = copies(program.module(fuse="all"))
    assert {(key, tuple(shape)) for key, shape, _ in fused} <= {
        ("aten::copy_", (32, 192)), ("aten::copy_", (32, 64))}, fused
    # Without this pass, the layout pass stores W_Q, W_K, W_V model-major: their merges
    # into one (768, 768) weight are views; stored as declared, each call copies all three.
    unfused = copies(program.module())
    assert {(key, tuple(shape)) for key, shape, _ in unfused} <= {("aten::copy_", (32, 64))}
    declared = copies(program.module(no_fuse=["layout"]))
    assert sum(n for key, _, n in declared if key == "aten::clone") == 3


def test_under_torch_compile_the_pack_is_traced_not_cached(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values, fuse=["projections"])
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        result = compiled(tokens)
        assert not _packed_entries(model)   # no Python-side cache consulted while compiling
        model.blocks[0].attn.W_V.add_(1.0)  # and the compiled graph reads the params as they are
        changed = compiled(tokens)
    assert torch.allclose(result, _reference_before(program, values, tokens), atol=1e-10, rtol=0)
    assert torch.allclose(changed, _reference(program, model, tokens), atol=1e-10, rtol=0)


def _reference_before(program, values, tokens):
    return torch.stack([Reference(program, {**values, "tokens": t})["logits"] for t in tokens])


class _Marked(torch.Tensor):
    """A tensor subclass standing in for DTensor shards: `_packed` must step aside."""


def test_params_of_a_tensor_subclass_run_the_projections_one_by_one(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values, fuse=["projections"])
    for module in list(model.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(name, torch.nn.Parameter(param.detach().as_subclass(_Marked)))
    with torch.no_grad():
        result = model(tokens).as_subclass(torch.Tensor)
    assert not _packed_entries(model)
    assert torch.allclose(result, _reference(program, model, tokens), atol=1e-10, rtol=0)


def test_a_hook_may_change_q_in_place_under_grad(gpt2):
    # TransformerLens-style hooks assign into the value (`q[..., head, :] = 0`); q is a
    # view of the one GEMM's result, which autograd must allow and differentiate.
    program, values, tokens = gpt2
    grads = []
    for options in ({"fuse": ["projections"]}, {"fuse": False}):
        model = _loaded(program, values, **options)

        def ablate(module, args, output):
            output[..., 1, :] = 0.0
            return output

        handle = model.get_submodule("blocks.0.attn.hook_q").register_forward_hook(ablate)
        try:
            model(tokens).square().sum().backward()
        finally:
            handle.remove()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-10, rtol=0), name
    assert grads[0]["blocks.0.attn.W_Q"][1].abs().max() == 0  # the ablated head learns nothing


def test_under_torch_compile_gradients_flow_through_the_pack(gpt2):
    # The one place the pack is built under grad: the traced graph (cat, then F.linear).
    program, values, tokens = gpt2
    grads = []
    for options, wrap in (({"fuse": ["projections"]}, True), ({"fuse": False}, False)):
        model = _loaded(program, values, **options)
        run = torch.compile(model, fullgraph=True, backend="eager") if wrap else model
        run(tokens).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-10, rtol=0), name
