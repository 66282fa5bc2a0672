"""Everything else follows the family (issue 26, point 4): for every family in the
tables (`tndsl.models.tables.FAMILIES`, so a family added there is covered without
touching this file), its `.tn` file at small sizes

- verifies: the compiled module equals the float64 reference evaluator
  (`verify --compiled`);
- renders the figure of one block (DOT, and TikZ where the family has a block output);
- expands its logits into paths (`tndsl paths`; the final norm keeps them one term),
  and the residual stream that norm reads into the direct path and one per sublayer
  (for a pre-norm family), each written expansion checking;
- runs with hooks: every attention pattern is cached, with rows summing to 1, and an
  intervention on it changes the logits;
- has a tensor-parallel plan over 2 ranks, sharding the dims its table names
  (`Family.shard`: heads and the MLP's width, unless the table says why not);
- has a cost report.
"""
import pytest
import torch

import tndsl
from conftest import ROOT
from tndsl.models.tables import FAMILIES

# Small sizes for every family file; dims a file does not declare are dropped, and
# derived dims (Head = Model / Heads, Hidden = 4 * Model) keep their definition.
SMALL = {"Vocab": 23, "Model": 16, "Heads": 4, "KVHeads": 2, "Head": 4, "Hidden": 12,
         "Layers": 2, "Context": 7, "Window": 3}


def _program(family):
    path = ROOT / "examples" / family.example
    plain = tndsl.load(path)
    derived = {d.name for d in plain.network.dims if d.size is not None
               and getattr(d.size, "free_symbols", None)}
    dims = {k: v for k, v in SMALL.items() if k not in derived}
    return tndsl.load(path, dims=dims, extra_dims="ignore")


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.name)
def family(request):
    return request.param, _program(request.param)


def test_verify_compiled_passes(family):
    _, program = family
    report = program.verify_compiled(dims=dict(program.sizes), seed=3)  # the small sizes
    assert report.ok, report.differences


def test_a_block_figure_renders(family):
    _, program = family
    figure = program.render("blocks.0.out")
    assert "digraph" in figure.source and "blocks.0" in figure.source
    assert program.render("blocks.0.attn.scores").source


def test_paths_expand_the_logits(family):
    from tndsl.interp.paths import expand_paths
    _, program = family
    names = {eq.name for eq in program.network.equations}
    # Soft-capped logits (Gemma 2) are a box: paths split the linear network inside it,
    # which the family file names `unembedded`.
    logits = "unembedded" if "unembedded" in names else "logits"
    expansion = expand_paths(program, logits)
    checked = expansion.program()       # the written file parses and checks
    assert any(eq.name == logits for eq in checked.network.equations)
    if "ln_final.x" not in names:       # post-norm (BERT): every block output is a norm
        return
    stream = expand_paths(program, "ln_final.x")   # pre-norm: a sum of paths
    stream.program()      # with output biases too (GPT-2, Pythia, GPT-BigCode, BLOOM)
    assert len(stream.terms) >= 1 + 2 * program.sizes["Layers"], stream.terms


def test_hooks_cache_and_intervene(family):
    from tndsl.interp import hooks
    _, program = family
    model = program.module().double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    tokens = torch.randint(0, 23, (2, 5), generator=generator)
    logits, cache = hooks.run_with_cache(model, tokens, names=["blocks.1.attn.pattern"])
    pattern = cache["blocks.1.attn.pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    with hooks.intervene(model, {"blocks.1.attn.pattern": lambda p: p.flip(-1)}):
        assert not torch.allclose(model(tokens), logits)


def test_tensor_parallel_plan(family):
    from tndsl.passes.shard import shard_plan
    spec, program = family
    plan = shard_plan(program, list(spec.shard), 2)
    text = plan.render()
    if "Heads" in spec.shard:
        assert "blocks.0.attn.W_Q" in text
    assert "blocks.0.mlp.W_in" in text


def test_cost_report(family):
    from tndsl.passes.cost import costs
    _, program = family
    report = costs(program, "blocks.0")
    assert "blocks.0.attn" in report.render()
