"""Structured generated code (issue 10): classes per block, ModuleList loops, hook-point
modules, fusion passes with run-time fallback, liveness, variable sequence length."""
import io
import math
import re
import subprocess
import sys
import tokenize

import pytest
import torch
from torch import nn

import tndsl
from tndsl.codegen.torch import HELPERS_BANNER
from tndsl.lang import ir
from tndsl.codegen.names import NN_MODULE_ATTRS
from tndsl.interp.hooks import hook_names, intervene, replace, run_with_cache
from tndsl.verify.numeric import random_tensors, small_program
from tndsl.verify.reference import Reference
from conftest import EXAMPLES, ROOT, loaded, small_gpt2

GPT2 = ROOT / "examples" / "gpt2_small.tn"


def _del_statements(source: str) -> list[int]:
    """The line numbers of `del` statements in generated Python: the keyword as a token,
    not the letters inside a string or comment (an error message's "model.to(...)")."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [t.start[0] for t in tokens if t.type == tokenize.NAME and t.string == "del"]


SMALL = {"Context": 8, "Vocab": 11, "Model": 16, "Heads": 2, "Layers": 3}


_loaded = loaded


@pytest.fixture(scope="module")
def gpt2():
    return small_gpt2(SMALL)


# ---- 1. structure ------------------------------------------------------------------------

def test_blocks_are_submodules_and_state_dict_keys_are_the_paths(gpt2):
    program, values, _ = gpt2
    model = program.module()
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == 3
    assert type(model.blocks[0]) is type(model.blocks[2])  # one class per block
    assert isinstance(model.blocks[1].attn, nn.Module)
    assert model.get_submodule("blocks.1.attn").W_Q.shape == (2, 16, 8)
    assert set(model.state_dict()) == {p.name for p in program.params}


def test_source_does_not_grow_with_the_loop_count():
    small = tndsl.load(GPT2).compile().source
    large = tndsl.load(GPT2, dims={"Layers": 96}).compile().source
    # The model's classes read in one sitting; the run-time helpers after the banner
    # (KV cache, input checks, hook points) are the same text in every file.
    model_part = small[:small.index(HELPERS_BANNER)]
    assert len(model_part.splitlines()) < 300
    differing = [(a, b) for a, b in zip(small.splitlines(), large.splitlines()) if a != b]
    assert len(small.splitlines()) == len(large.splitlines())
    assert differing == [("        n_blocks = 12", "        n_blocks = 96")]


def test_a_loop_that_cannot_be_a_module_list_unrolls_and_says_why(gpt2):
    program, values, tokens = gpt2
    generated = program.compile(["logits", "blocks.1.attn.scores"])
    assert "# `blocks` is unrolled: " in generated.source
    model = _loaded(program, values, outputs=["logits", "blocks.1.attn.scores"])
    with torch.no_grad():
        result = model(tokens[0])
    reference = Reference(program, {**values, "tokens": tokens[0]})
    for name in ("logits", "blocks.1.attn.scores"):
        assert torch.allclose(result[name], reference[name], atol=1e-10, rtol=0)


def test_nn_module_attribute_list_covers_the_installed_torch():
    # Read in a fresh interpreter: in this one other libraries have added to nn.Module
    # (transformers' `smart_apply`; torch.compile's `___needs_generation_tag_patch`, set
    # by any earlier test that compiles), and only what torch itself defines is the
    # list's business.
    listed = subprocess.run(
        [sys.executable, "-c", "import torch.nn as nn; print('\\n'.join(dir(nn.Module())))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert listed and set(listed) <= NN_MODULE_ATTRS


# ---- 2. hook points are modules -----------------------------------------------------------

def test_hook_names_cover_every_equation_in_a_valid_order(gpt2):
    program, _, _ = gpt2
    model = program.module()
    names = hook_names(model)
    order = ir.dependency_order(program.network, ["logits"])
    assert sorted(names) == sorted(eq.name for eq in order)
    position = {n: k for k, n in enumerate(names)}
    for eq in order:
        assert all(position[r.name] < position[eq.name] for r in ir.refs(eq.rhs)
                   if r.name in position)


def test_a_plain_forward_hook_on_the_pattern_hook_point_fires_and_patches(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values)
    unfused = _loaded(program, values, fuse=False)
    uniform = torch.ones(8, 8, dtype=torch.float64).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(2, 2, 8, 8)
    calls = []

    def patch(module, args, output):
        calls.append(output.shape)
        return uniform

    handle = model.get_submodule("blocks.1.attn.hook_pattern").register_forward_hook(patch)
    try:
        with torch.no_grad():
            patched = model(tokens)
    finally:
        handle.remove()
    assert calls == [(2, 2, 8, 8)]
    with torch.no_grad(), intervene(unfused, {"blocks.1.attn.pattern": replace(uniform)}):
        expected = unfused(tokens)
        plain = model(tokens)
    assert torch.allclose(patched, expected, atol=1e-10, rtol=0)
    assert not torch.allclose(plain, patched)


def test_a_pattern_hook_on_fused_attention_gives_the_unfused_pattern_and_output(gpt2):
    program, values, tokens = gpt2
    fused = _loaded(program, values)
    unfused = _loaded(program, values, fuse=False)
    assert "scaled_dot_product_attention" in program.compile().source
    names = ["blocks.0.attn.pattern", "blocks.2.attn.scores", "blocks.1.ln2.normalized"]
    with torch.no_grad():
        out_fused, cache_fused = run_with_cache(fused, tokens, names=names)
        out_unfused, cache_unfused = run_with_cache(unfused, tokens, names=names)
        plain = fused(tokens)
    assert set(cache_fused) == set(names)
    for name in names:
        assert torch.allclose(cache_fused[name], cache_unfused[name], atol=1e-12, rtol=0)
    assert torch.allclose(out_fused, out_unfused, atol=1e-10, rtol=0)
    assert torch.allclose(plain, out_unfused, atol=1e-10, rtol=0)
    # The pattern really is the causal softmax of the scores, computed by hand.
    scores = cache_unfused["blocks.2.attn.scores"]
    with torch.no_grad(), intervene(unfused, {}):
        _, cache = run_with_cache(unfused, tokens, names=["blocks.2.attn.pattern"])
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    expected = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)
    assert torch.allclose(cache["blocks.2.attn.pattern"], expected, atol=1e-12)


# ---- 3. fusion passes ---------------------------------------------------------------------

FUSED = {"defaults": {}, "all": {"fuse": "all"},
         "projections-only": {"fuse": ["projections"]}}


@pytest.mark.parametrize("fusion", FUSED)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_fused_equals_unfused_for_every_example(path, fusion):
    program = small_program(tndsl.load(path))
    outputs = [eq.name for eq in program.outputs]
    values = random_tensors(program, torch.Generator().manual_seed(3))
    fused = _loaded(program, values, outputs=outputs, **FUSED[fusion])
    unfused = _loaded(program, values, outputs=outputs, fuse=False)
    arguments = [values[n] for n in program.compile(outputs).inputs]
    with torch.no_grad():
        a, b = fused(*arguments), unfused(*arguments)
    if not isinstance(a, dict):
        a, b = {0: a}, {0: b}
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-10, rtol=0), key


def test_each_pass_can_be_switched_off_and_unknown_names_list_the_valid_ones():
    program = tndsl.load(GPT2, dims={"Layers": 1})
    source = program.compile().source
    assert "F.scaled_dot_product_attention" in source and _del_statements(source)
    assert "F.layer_norm(x, (768,), self.w, self.b, eps=1e-05)" in source
    assert "scaled_dot_product_attention" not in program.compile(no_fuse=["attention"]).source
    assert ", w, b, eps" not in program.compile(no_fuse=["layer_norm"]).source
    assert _del_statements(program.compile(no_fuse=["liveness"]).source) == []
    assert "nn.init.normal_, 0.0, 0.02, order=(1, 0, 2))" in source
    assert ", order=(" not in program.compile(no_fuse=["layout"]).source
    everything = program.compile(fuse="all").source
    assert "_packed(" not in source  # opt-in: it keeps a packed copy of the weights
    assert "_packed(" in everything
    assert "_packed(" not in program.compile(fuse="all", no_fuse=["projections"]).source
    # `experts` (top-k expert dispatch) is on by default and can be switched off too.
    moe = tndsl.load(ROOT / "examples" / "mixtral.tn", dims={"Layers": 1})
    assert "index_add_" in moe.compile().source
    assert "index_add_" not in moe.compile(no_fuse=["experts"]).source
    with pytest.raises(tndsl.TnError) as info:
        program.compile(no_fuse=["atention"])
    assert "valid: attention, experts, layer_norm, layout, liveness, projections" \
        in info.value.hint


def test_liveness_drops_each_intermediate_after_its_last_use():
    source = tndsl.load(GPT2, dims={"Layers": 1}).compile().source
    attention = source.split("class Attention(")[1].split("\nclass ")[0]
    body = attention.split("def forward")[1].splitlines()
    # (z's last use, the out projection, is the function's tail: the return drops it.)
    for name in ("q", "k", "v"):
        token = re.compile(rf"\b{name}\b")
        uses = [k for k, line in enumerate(body)
                if token.search(line) and not line.strip().startswith(("del ", "#"))]
        deletes = [k for k, line in enumerate(body) if line.strip().startswith("del ")
                   and name in line.strip()[4:].split(", ")]
        assert deletes and deletes[-1] == uses[-1] + 1, (name, body)


def test_a_coefficient_on_a_bracketed_sum_scales_the_whole_sum():
    program = tndsl.parse("dim N = 3\ninput a[i: N]\ninput b[i: N]\n"
                          "y[i] = 2 * (a[i] + b[i])\nz[i] = (a[i] + b[i]) * 3 - a[i]\n")
    model = program.module(["y", "z"])
    a, b = torch.randn(3), torch.randn(3)
    result = model(a, b)
    assert torch.allclose(result["y"], 2 * (a + b))
    assert torch.allclose(result["z"], 3 * (a + b) - a)


# ---- 4. variable sequence length ----------------------------------------------------------

def test_a_shorter_sequence_runs_with_positional_params_sliced(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values)
    short = tokens[:, :5]
    with torch.no_grad():
        result = model(short)
    assert result.shape == (2, 5, 11)
    # Oracle: the reference evaluator on the same model at Context = 5.
    small = tndsl.load(GPT2, dims={**SMALL, "Context": 5})
    sliced = {n: (v[:5] if n == "pos_embed.W_pos" else v) for n, v in values.items()}
    for i in range(2):
        expected = Reference(small, {**sliced, "tokens": short[i]})["logits"]
        assert torch.allclose(result[i], expected, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match=r"\(\.\.\., <=8\)"):
        model(torch.zeros(9, dtype=torch.long))


def test_which_dims_vary_is_checked():
    program = tndsl.load(GPT2, dims={"Layers": 1})
    with pytest.raises(tndsl.TnError, match="no input has a leg of it"):
        program.compile(vary=["Model"])
    with pytest.raises(tndsl.TnError, match="no dim `Contxt`"):
        program.compile(vary=["Contxt"])
    fixed = program.compile(vary=[]).source
    assert "at_most=(0,)" not in fixed and "W_pos[:" not in fixed


# ---- 5, 6. compile without torch; torch.compile ------------------------------------------

def test_compiling_to_source_does_not_import_torch():
    script = ("import sys, tndsl; tndsl.load('examples/gpt2_small.tn').compile(); "
              "from tndsl.cli import main; "
              "sys.exit(1 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr or "torch was imported"


def test_torch_compile_takes_the_whole_forward_as_one_graph(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(tokens), model(tokens), atol=1e-12, rtol=0)


def test_a_hook_registered_after_torch_compile_recompiles_and_fires(gpt2):
    # As for any nn.Module: torch.compile guards on module hooks when told to
    # (skip_nnmodule_hook_guards=False); the fused attention's
    # `if self.hook_pattern.hooked:` then recompiles to the explicit path.
    program, values, tokens = gpt2
    model = _loaded(program, values)
    uniform = torch.ones(8, 8, dtype=torch.float64).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(2, 2, 8, 8)
    unfused = _loaded(program, values, fuse=False)
    with torch.no_grad(), intervene(unfused, {"blocks.1.attn.pattern": replace(uniform)}):
        expected = unfused(tokens)
    torch.compiler.reset()
    with torch.no_grad(), torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        plain = compiled(tokens)
        handle = model.get_submodule("blocks.1.attn.hook_pattern").register_forward_hook(
            lambda module, args, output: uniform)
        patched = compiled(tokens)
        handle.remove()
        again = compiled(tokens)
    assert torch.allclose(patched, expected, atol=1e-10, rtol=0)
    assert not torch.allclose(plain, patched)
    assert torch.allclose(again, plain, atol=1e-12, rtol=0)
    # By default torch.compile does not guard on module hooks: after a reset, the hook
    # registered before compiling fires.
    torch.compiler.reset()
    handle = model.get_submodule("blocks.1.attn.hook_pattern").register_forward_hook(
        lambda module, args, output: uniform)
    try:
        with torch.no_grad():
            hooked = torch.compile(model, fullgraph=True, backend="eager")(tokens)
    finally:
        handle.remove()
        torch.compiler.reset()
    assert torch.allclose(hooked, expected, atol=1e-10, rtol=0)


def test_a_global_module_forward_hook_reaches_the_hook_points(gpt2):
    program, values, tokens = gpt2
    model = _loaded(program, values)
    seen = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, output: seen.append(module.tn_name)
        if hasattr(module, "tn_name") else None)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        handle.remove()
    assert "pattern" in seen and "resid@3" in seen  # the explicit attention path ran


def test_cli_no_fuse_and_vary():
    def compile_(*extra):
        return subprocess.run([sys.executable, "-m", "tndsl", "compile", "examples/gpt2_small.tn",
                               "--dim", "Layers=1", *extra], cwd=ROOT, capture_output=True,
                              text=True)
    plain = compile_("--no-fuse", "attention", "--vary", "Context")
    assert plain.returncode == 0, plain.stderr
    assert "scaled_dot_product_attention" not in plain.stdout and "W_pos[:Context]" in plain.stdout
    nothing = compile_("--no-fuse", "all")
    assert nothing.returncode == 0, nothing.stderr
    assert _del_statements(nothing.stdout) == [] and ", w, b, eps" not in nothing.stdout
    assert "_packed(" not in nothing.stdout
    default = compile_()
    assert _del_statements(default.stdout)  # the liveness pass's `del`s, when it is on
    assert "_packed(" not in default.stdout and "F.scaled_dot_product" in default.stdout
    projections = compile_("--fuse", "projections")
    assert "_packed(" in projections.stdout and "F.scaled_dot_product" in projections.stdout
    assert "_packed(" not in compile_("--fuse", "projections", "--no-fuse", "projections").stdout
    assert "valid: attention" in compile_("--fuse", "projection").stderr
    wrong = compile_("--no-fuse", "atention")
    assert wrong.returncode == 1
    assert "valid: attention, experts, layer_norm, layout, liveness, projections" in wrong.stderr
