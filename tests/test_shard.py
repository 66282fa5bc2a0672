"""The tensor-parallel plan (tndsl.passes.shard): sharded params, roles, collectives and
their bytes, and the located errors for dims that cannot be sharded."""
import json
import subprocess
import sys

import pytest
import sympy

import tndsl
from tndsl.lang import dims as dimmod
from tndsl.lang.errors import TnError, UnknownNameError
from tndsl.passes.shard import ShardError, shard_plan
from conftest import ROOT

GPT2 = ROOT / "examples" / "gpt2_small.tn"
Context, Model, Vocab = (dimmod.symbol(n) for n in ("Context", "Model", "Vocab"))


def gpt2(**dims):
    return tndsl.load(GPT2, dims={"Layers": 2, **dims})


def test_gpt2_heads_and_hidden_is_megatron_layout():
    plan = shard_plan(gpt2(), ("Heads", "Hidden"), 4)
    # Axes read off the declarations: W_Q[h, m, e], W_O[h, e, m], W_in[m, f], W_out[f, m].
    expected = {"attn.W_Q": (0, "column"), "attn.W_K": (0, "column"),
                "attn.W_V": (0, "column"), "attn.b_Q": (0, "column"),
                "attn.W_O": (0, "row"), "mlp.W_in": (1, "column"),
                "mlp.b_in": (0, "column"), "mlp.W_out": (0, "row")}
    for layer in (0, 1):
        for name, (axis, role) in expected.items():
            param = plan.param(f"blocks.{layer}.{name}")
            assert param.axis == axis, name
            assert [r for _, r in param.uses] == [role], name
        assert f"blocks.{layer}.attn.b_O" in plan.replicated
        assert f"blocks.{layer}.mlp.b_out" in plan.replicated
    assert "embed.W_E" in plan.replicated and "unembed.W_U" in plan.replicated
    # One all-reduce per sublayer, where the row-parallel product ends.
    assert [(c.kind, c.equation, c.contracted) for c in plan.collectives] == [
        ("all-reduce", f"blocks.{l}.{s}.out", d)
        for l in (0, 1) for s, d in (("attn", "Heads"), ("mlp", "Hidden"))]
    for c in plan.collectives:
        assert plan.payload(c) == 4 * Context * Model
        assert plan.traffic(c) == sympy.Rational(3, 2) * 4 * Context * Model  # 2(N-1)/N
    assert plan.total_payload == 16 * Context * Model
    assert plan.value(plan.total_payload) == 16 * 1024 * 768
    assert plan.placements["blocks.0.attn.q"].dim == "Heads"
    assert plan.placements["blocks.0.mlp.post"].dim == "Hidden"
    assert plan.placements["blocks.0.out"] is None and plan.placements["logits"] is None


def test_sharded_vocab_gathers_the_looked_up_table_and_the_logits():
    plan = shard_plan(gpt2(Vocab=64), "Vocab", 2, bytes_per_entry=8)
    # Compiled code indexes W_E with the token ids; the table is gathered, once.
    assert plan.param("embed.W_E").uses == (("resid", "lookup"),)
    assert plan.param("unembed.W_U").uses == (("logits", "column"),)
    kinds = [(c.kind, c.equation, c.per_input) for c in plan.collectives]
    assert kinds == [("all-gather", "resid", False), ("all-gather", "logits", True)]
    table, logits = plan.collectives
    assert plan.payload(table) == 8 * Vocab * Model
    assert plan.payload(logits) == 8 * Context * Vocab
    assert plan.traffic(logits) == 4 * Context * Vocab
    assert plan.placements["resid"] is None


def test_a_product_with_a_onehot_input_that_is_no_lookup_is_row_parallel():
    program = tndsl.parse("dim N = 4\ndim V = 6\ninput t[i: N, v: onehot V]\n"
                          "param E[v: V, i: N]\nparam F[v: V]\n"
                          "y[i] = t[i, v] * E[v, i] * F[v]\n", "t.tn")
    plan = shard_plan(program, "V", 2)  # v meets two params: a contraction, not a lookup
    assert [(c.kind, c.equation) for c in plan.collectives] == [("all-reduce", "y")]


def _error(program, dims, ranks=2) -> TnError:
    with pytest.raises(TnError) as info:
        shard_plan(program, dims, ranks)
    return info.value


def test_a_normalising_box_over_the_sharded_leg_is_an_error_at_the_box():
    error = _error(gpt2(), ["Model"])
    text = error.render()
    assert all(isinstance(e, ShardError) for e in error.errors)  # one per layer norm
    assert len(error.errors) == 5
    assert "`blocks.0.ln1.normalized` applies layernorm[m] over the sharded leg m: Model" in text
    assert "gather inside the box" in text
    assert "gpt2_small.tn:22:24" in text and "^^^^" in text


def test_two_sharded_indices_in_one_product_is_an_error_naming_the_equation():
    text = _error(gpt2(), ["Context"]).render()
    assert "`blocks.0.attn.scores` multiplies factors sharded along different legs " \
           "(p: Context, s: Context)" in text
    assert "gpt2_small.tn:38:23" in text


def test_a_dim_not_divisible_by_the_mesh_is_an_error_at_its_declaration():
    text = _error(gpt2(), ["Heads"], ranks=5).render()
    assert "dim `Heads` = 12 is not divisible by the mesh size 5" in text
    assert "gpt2_small.tn:8:5" in text


def test_unknown_dims_list_the_valid_ones():
    error = _error(gpt2(), ["Heds"])
    assert isinstance(error, UnknownNameError)
    assert "did you mean `Heads`" in error.hint and "valid: Context, Vocab" in error.hint


SOURCE = """\
dim N = 4
dim A = 6
dim B = 8
input x[i: N]
param P[a: A, b: B]
param U[i: N, a: A]
param V[i: N, b: B]
y[a, b] = x[i] * U[i, a] * V[i, b]
z[a] = U[i, a] * x[i]
w[a] = z[a] + P[a, b] * V[i, b] * x[i]
s[a] = softmax[a](z[a])
"""


def test_a_param_with_two_sharded_legs_is_an_error_at_the_param():
    text = _error(tndsl.parse(SOURCE, "t.tn"), ["A", "B"]).render()
    assert "param `P` has 2 legs on sharded dims (a: A, b: B)" in text
    assert "t.tn:5:" in text


def test_products_and_sums_of_differently_sharded_values():
    program = tndsl.parse(SOURCE.replace("param P[a: A, b: B]\n", "")
                          .replace("w[a] = z[a] + P[a, b] * V[i, b] * x[i]\n", ""), "t.tn")
    with pytest.raises(TnError) as info:
        shard_plan(program, ["A", "B"], 2, outputs=["y"])
    assert "`y` multiplies factors sharded along different legs (a: A, b: B)" in str(info.value)
    with pytest.raises(TnError) as info:
        shard_plan(program, ["A"], 2, outputs=["s"])
    assert "`s` applies softmax[a] over the sharded leg a: A" in str(info.value)
    with pytest.raises(UnknownNameError):
        shard_plan(program, ["A"], 2, outputs=["nope"])


def test_a_partial_sum_is_reduced_before_it_meets_a_sharded_value():
    program = tndsl.parse("dim N = 4\ndim A = 6\ndim M = 3\ninput x[i: N]\n"
                          "param U[i: N, m: M]\nparam Q[m: M]\nparam S[a: A]\n"
                          "param W[m: M, a: A]\n"
                          "y[m, a] = U[i, m] * x[i] * ones[a] + Q[m] * S[a]\n"
                          "z[a] = (U[i, m] * x[i] + Q[m]) * W[m, a]\n"
                          "g[m, a] = gelu_tanh(U[i, m] * x[i]) * S[a]\n"
                          "out[m, a] = y[m, a] + z[a] * ones[m] + g[m, a]\n", "t.tn")
    plan = shard_plan(program, ["N", "A"], 2)
    # y: the first term sums over the sharded i (partial), the second keeps the sharded a;
    # z: the bracket is partial, the product with W keeps a; g: a box needs its argument
    # whole. Each reduces before meeting a slice; `out` stays sharded along a and is
    # gathered.
    assert [(c.kind, c.equation, c.where, [l.name for l in c.legs], c.contracted)
            for c in plan.collectives] == [
        ("all-reduce", "y", "before adding sharded terms", ["m", "a"], "N"),
        ("all-reduce", "z", "before a product", ["m"], "N"),
        ("all-reduce", "g", "before gelu_tanh", ["m"], "N"),
        ("all-gather", "out", "output", ["m", "a"], "")]
    assert plan.placements["y"].name == "a" and plan.placements["out"].name == "a"


def test_cost_shard_on_the_command_line():
    run = lambda *args: subprocess.run([sys.executable, "-m", "tndsl", "cost", str(GPT2),
                                        "--dim", "Layers=1", *args],
                                       capture_output=True, text=True, cwd=ROOT)
    result = run("--shard", "Heads,Hidden", "--ranks", "4")
    assert result.returncode == 0, result.stderr
    assert "blocks.0.attn.W_O   Shard(0) along h: Heads  row-parallel in blocks.0.attn.out" \
        in result.stdout
    assert "total payload  8*Context*Model = 6.0 MiB" in result.stdout
    as_json = json.loads(run("--shard", "Heads", "--json").stdout)
    assert [c["equation"] for c in as_json["collectives"]] == ["blocks.0.attn.out"]
    assert as_json["collectives"][0]["payload"] == "4*Context*Model"
    failed = run("--shard", "Model")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "gather inside the box" in failed.stderr


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").rglob("*.tn")))
def test_every_dim_of_every_example_gives_a_plan_or_a_located_error(example):
    path = next((ROOT / "examples").rglob(example))
    program = tndsl.load(path, dims={"Layers": 2} if example == "gpt2_small.tn" else None)
    for dim in program.network.dims:
        for ranks in (1, 2, 3):
            try:
                plan = shard_plan(program, [dim.name], ranks)
            except TnError as error:  # never another exception
                errors = getattr(error, "errors", [error])
                assert all(e.span is not None for e in errors), error.render()
                continue
            plan.render(), plan.to_json()
            for c in plan.collectives:
                assert plan.payload(c).free_symbols <= {dimmod.symbol(d.name)
                                                        for d in program.network.dims}


LLAMA = ROOT / "examples" / "llama.tn"
LLAMA_DIMS = {"Layers": 1, "Heads": 8, "KVHeads": 2, "Model": 64, "Head": 8, "Hidden": 96,
              "Vocab": 50}


def test_sharding_heads_shards_the_kv_heads_they_read_through_the_grouping():
    program = tndsl.load(LLAMA, dims=LLAMA_DIMS)
    plan = shard_plan(program, ("Heads", "Hidden"), 2)
    assert [(a.dim, a.partner, a.through) for a in plan.aligned] == [
        ("KVHeads", "Heads", "group")]
    # W_K[g, m, e] and W_V[g, m, e] split along their KV heads, column-parallel.
    roles = {p.name.removeprefix("blocks.0."): (p.axis, p.leg.dim, [r for _, r in p.uses])
             for p in plan.params}
    assert roles == {"attn.W_Q": (0, "Heads", ["column"]), "attn.W_K": (0, "KVHeads", ["column"]),
                     "attn.W_V": (0, "KVHeads", ["column"]), "attn.W_O": (0, "Heads", ["row"]),
                     "mlp.W_gate": (1, "Hidden", ["column"]),
                     "mlp.W_in": (1, "Hidden", ["column"]), "mlp.W_out": (0, "Hidden", ["row"])}
    # scores = q[p, h, e] * group[h, g] * k[s, g, e] meets h and g without a gather:
    # the values stay split by query head, and the only collectives are Megatron's two.
    placements = {name.removeprefix("blocks.0.attn."): leg and (leg.name, leg.dim)
                  for name, leg in plan.placements.items() if name.startswith("blocks.0.attn.")}
    assert placements == {"x": None, "q_pre": ("h", "Heads"), "q": ("h", "Heads"),
                          "k_pre": ("g", "KVHeads"), "k": ("g", "KVHeads"),
                          "v": ("g", "KVHeads"), "scores": ("h", "Heads"),
                          "pattern": ("h", "Heads"), "z": ("h", "Heads"), "out": None}
    assert [(c.kind, c.equation, c.contracted) for c in plan.collectives] == [
        ("all-reduce", "blocks.0.attn.out", "Heads"), ("all-reduce", "blocks.0.mlp.out", "Hidden")]
    # Either dim of the grouping gives the same split; naming both too.
    for dims in (["KVHeads"], ["Heads", "KVHeads"]):
        other = shard_plan(program, dims, 2)
        assert {(p.name, p.axis) for p in other.params} == {
            (p.name, p.axis) for p in plan.params if "mlp" not in p.name}
    assert "and KVHeads with Heads, through the grouping `group`" in plan.render()
    assert json.loads(plan.to_json())["aligned"] == [
        {"dim": "KVHeads", "with": "Heads", "through": "group"}]


def test_a_grouping_that_cannot_be_split_evenly_is_an_error_at_the_grouping():
    program = tndsl.load(LLAMA, dims=LLAMA_DIMS)  # 8 query heads over 2 KV heads
    error = _error(program, ["Heads"], ranks=4)  # 8 % 4 == 0, but 2 KV heads over 4 ranks
    assert isinstance(error, ShardError)
    text = error.render()
    assert "the grouping `group` cannot be split evenly over 4 ranks" in text
    assert "KVHeads = 2 is not divisible by 4" in text
    assert "llama.tn:27:1" in text and "^^^^" in text
    # A mesh of one rank per KV head is fine.
    assert shard_plan(program, ["Heads"], 2).param("blocks.0.attn.W_K").axis == 0


def test_grouped_factors_without_the_grouping_tensor_still_need_a_gather():
    program = tndsl.parse("dim H = 4\ndim G = 2\ndim E = 3\n"
                          "fixed group[h: H, g: G] = grouping\n"
                          "param Q[h: H, e: E]\nparam K[g: G, e: E]\n"
                          "y[h, g] = Q[h, e] * K[g, e]\n"
                          "z[h] = Q[h, e] * group[h, g] * K[g, e]\n"
                          "w[g] = group[h, g] * Q[h, e] * K[g, e]\n", "g.tn")
    # y meets h and g without the grouping tying them: a gather, so an error.
    with pytest.raises(TnError) as info:
        shard_plan(program, ["H"], 2, outputs=["y"])
    assert "`y` multiplies factors sharded along different legs (g: G, h: H)" in str(info.value)
    # Through the grouping, z keeps h and w keeps g, with no communication but the
    # gathers of the sharded outputs.
    plan = shard_plan(program, ["H"], 2, outputs=["z", "w"])
    assert [(c.kind, c.equation, c.where) for c in plan.collectives] == [
        ("all-gather", "z", "output"), ("all-gather", "w", "output")]
    assert plan.placements["z"].name == "h" and plan.placements["w"].name == "g"


def test_cost_shard_heads_on_llama_prints_the_plan_and_its_communication():
    result = subprocess.run([sys.executable, "-m", "tndsl", "cost", str(LLAMA), "--dim",
                             "Layers=1", "--dim", "Context=128", "--shard", "Heads"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "and KVHeads with Heads, through the grouping `group`" in result.stdout
    assert "blocks.0.attn.W_K  Shard(0) along g: KVHeads  column-parallel in " \
           "blocks.0.attn.k_pre" in result.stdout
    # one all-reduce of [Context, Model] float32 entries: 4 * 128 * 4096 bytes
    assert "total payload  4*Context*Model = 2.0 MiB" in result.stdout
