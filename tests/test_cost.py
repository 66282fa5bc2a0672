"""`tndsl cost`: symbolic FLOPs agree with opt_einsum and scale as they should."""
import json
import subprocess
import sys

import opt_einsum
import sympy

import tndsl
from tndsl.lang import dims as dimmod, ir
from tndsl.passes.cost import costs
from conftest import ROOT

Context = dimmod.symbol("Context")


def test_gpt2_attention_is_quadratic_and_mlp_linear_in_context():
    report = costs(tndsl.load(ROOT / "examples" / "gpt2_small.tn"), "blocks.5")
    totals = report.by_instance()
    attention, mlp = totals["blocks.5.attn"], totals["blocks.5.mlp"]
    assert sympy.degree(attention, Context) == 2
    assert sympy.degree(mlp, Context) == 1
    heads, head = dimmod.symbol("Heads"), dimmod.symbol("Head")
    # scores and pattern·v: 2 * Context² * Head * Heads each.
    assert attention.coeff(Context, 2) == 4 * head * heads


def test_flops_agree_with_opt_einsums_contract_path():
    # Independently: build each box-free, ones-free term's einsum and ask opt_einsum.
    compared = 0
    for example in ("attention_head", "multihead_attention", "orthodox", "attn_only_2l"):
        program = tndsl.load(ROOT / "examples" / f"{example}.tn")
        report = {t.equation: t for t in costs(program).terms if not t.where}
        for eq in program.equations:
            term = eq.rhs.terms[0]
            if len(eq.rhs.terms) != 1 or len(term.factors) < 2 or not all(
                    isinstance(f, ir.Ref) and f.name != ir.ONES and
                    f.name not in {t.name for t in program.inputs if t.onehot}
                    for f in term.factors):
                continue
            dims = {leg.name: program.sizes[leg.dim] for leg in eq.index_dims}
            letters = {name: chr(97 + k) for k, name in enumerate(sorted(dims))}
            spec = ",".join("".join(letters[i] for i in f.indices) for f in term.factors) \
                + "->" + "".join(letters[i] for i in eq.indices)
            shapes = [tuple(dims[i] for i in f.indices) for f in term.factors]
            optimize = "optimal" if len(shapes) <= 4 else "dp"
            _, info = opt_einsum.contract_path(spec, *shapes, shapes=True, optimize=optimize)
            ours = dimmod.evaluate(report[eq.name].flops, program.sizes)
            assert int(ours) == int(info.opt_cost), (example, eq.name)
            assert int(dimmod.evaluate(report[eq.name].largest, program.sizes)) \
                == int(info.largest_intermediate)
            compared += 1
    assert compared >= 20


def test_naive_left_to_right_is_never_cheaper_than_the_plan():
    for term in costs(tndsl.load(ROOT / "examples" / "attn_only_2l.tn")).terms:
        sizes = tndsl.load(ROOT / "examples" / "attn_only_2l.tn").sizes
        assert dimmod.evaluate(term.flops, sizes) <= dimmod.evaluate(term.naive, sizes)


def test_unsized_dims_stay_symbolic():
    report = costs(tndsl.load(ROOT / "examples" / "mlp.tn"))
    batch = dimmod.symbol("Batch")
    assert sympy.degree(report.total, batch) == 1
    assert "Batch" in report.render()


def test_cli_cost_prints_the_table_and_json():
    text = subprocess.run([sys.executable, "-m", "tndsl", "cost", "examples/attention_head.tn",
                           "scores"], cwd=ROOT, capture_output=True, text=True)
    assert text.returncode == 0
    assert "flops    2*Context**2*Head + 4*Context*Head*Model = 20,480" in text.stdout
    data = json.loads(subprocess.run(
        [sys.executable, "-m", "tndsl", "cost", "--json", "examples/gpt2_small.tn", "blocks.0"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert "Context**2" in data["by_instance"]["blocks.0.attn"]
    assert data["dominant"] == "4*Context*Hidden*Model"


def test_unknown_name_is_an_error_with_a_suggestion():
    result = subprocess.run([sys.executable, "-m", "tndsl", "cost", "examples/attention_head.tn",
                             "scorez"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "scores" in result.stderr


def test_fixed_tensors_cost_their_compiled_forms_not_a_dense_contraction():
    # Counted by hand from codegen/fixed.py's forms: the rotary map turns each rotated
    # entry with two products and a sum; the grouping repeats k and v (no FLOPs), so the
    # scores cost what dense multi-head attention's do.
    report = costs(tndsl.load(ROOT / "examples" / "llama.tn"), "blocks.0.attn")
    terms = {t.equation: t for t in report.terms}
    heads, kv, head = (dimmod.symbol(d) for d in ("Heads", "KVHeads", "Head"))
    assert terms["blocks.0.attn.q"].flops == 3 * Context * head * heads
    assert terms["blocks.0.attn.k"].flops == 3 * Context * head * kv
    assert terms["blocks.0.attn.scores"].flops == 2 * Context ** 2 * head * heads
    assert terms["blocks.0.attn.z"].flops == 2 * Context ** 2 * head * heads
    assert terms["blocks.0.attn.scores"].order[0].startswith("repeat(blocks.0.attn.k)")
    # Partial rotary (GPT-NeoX turns a quarter of each head): a quarter of the work.
    pythia = {t.equation: t for t in costs(tndsl.load(ROOT / "examples" / "pythia.tn"),
                                           "blocks.0.attn").terms}
    assert pythia["blocks.0.attn.q"].flops == sympy.Rational(3, 4) * Context * head * heads
