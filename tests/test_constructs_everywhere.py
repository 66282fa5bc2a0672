"""Everything else follows the family (issue 26, point 4), for the families of the new
constructs: the compiled model equals the reference evaluator (`verify --compiled`),
`tndsl paths` expands the logits, hooks cache what the model computes without changing
it, the tensor-parallel plan shards the heads (and a mixture's `Experts`), and `cost`
counts every term. (Figures of every family's blocks: tests/test_render.py and
tests/test_figure_geometry.py take every example with a stack of blocks.)"""
import pytest
import torch

import tndsl
from tndsl.interp.hooks import run_with_cache
from tndsl.interp.paths import expand_paths
from tndsl.passes.cost import costs
from tndsl.passes.shard import shard_plan
from tndsl.verify.compiled import compare_compiled
from conftest import ROOT

_ATTENTION = {"Vocab": 13, "Model": 16, "Heads": 4, "KVHeads": 2, "Head": 4, "Layers": 2}
FAMILIES = {
    "gemma2": {**_ATTENTION, "Hidden": 12, "Window": 3},
    "gemma3": {**_ATTENTION, "Hidden": 12, "Window": 3, "GlobalEvery": 2},
    "gptj": {"Vocab": 13, "Model": 16, "Heads": 2, "Layers": 2},
    "bloom": {"Vocab": 13, "Model": 16, "Heads": 4, "Layers": 2},
    "mixtral": {**_ATTENTION, "Hidden": 12, "Experts": 4, "Window": 3},
    "qwen2_moe": {**_ATTENTION, "Hidden": 6, "SharedHidden": 8, "Experts": 4},
}
CONSTS = {"gemma3": {"GlobalEvery": 2}, "gptj": {"RotaryFraction": 0.5}}


def _program(family, **extra):
    dims = {k: v for k, v in FAMILIES[family].items() if k != "GlobalEvery"}
    return tndsl.load(ROOT / "examples" / f"{family}.tn", dims={**dims, **extra},
                      consts=CONSTS.get(family))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compiled_equals_the_reference(family):
    program = _program(family, Context=7)
    report = compare_compiled(program, dims=program.sizes)
    assert report.ok, report.render()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_paths_expand_the_logits_and_cost_counts_every_term(family):
    program = _program(family, Context=7)
    # Soft-capped logits are a box: the paths split the linear network inside it.
    linear = "unembedded" if family.startswith("gemma") else "logits"
    expansion = expand_paths(program, linear)
    assert expansion.terms
    report = costs(program)
    assert report.terms and report.value(report.total) > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hooks_cache_without_changing_the_output(family):
    program = _program(family)
    module = program.module().double()
    tokens = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(0))
    names = ["blocks.1.attn.pattern"]
    if family in ("mixtral", "qwen2_moe"):
        names.append("blocks.0.mlp.post")   # a value expert dispatch skips: dense path
    with torch.no_grad():
        plain = module(tokens)
        out, cache = run_with_cache(module, tokens, names=names)
    assert (out - plain).abs().max() < 1e-12
    assert cache["blocks.1.attn.pattern"].shape[-2:] == (6, 6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_tensor_parallel_plan_shards_heads_and_experts(family):
    program = _program(family)
    dims = ("Heads", "KVHeads") if "KVHeads" in FAMILIES[family] else ("Heads",)
    if family in ("mixtral", "qwen2_moe"):
        dims += ("Experts",)
    plan = shard_plan(program, dims, 2)
    sharded = {p.name for p in plan.params}
    assert "blocks.0.attn.W_Q" in sharded
    if "Experts" in dims:   # every expert weight split over the ranks by its expert leg
        assert {"blocks.0.mlp.W_gate", "blocks.0.mlp.W_in", "blocks.0.mlp.W_out"} <= sharded
