"""Fuzzing the whole pipeline (docs/robustness.md): random valid programs must compile
to the same values as the reference evaluator and equal their own symbolic expansion;
sentences derived from the grammar alone and damaged examples may fail, but only with
a located TnError, never another exception and never a hang. Every grammar production
and IR node kind must be generated at least COVERAGE_LEAST times in this run, and
deliberately broken lowerings (mutants) must be caught."""
import ast

import pytest
import torch
from hypothesis import given

import tndsl
from tndsl.render.dot import to_dot
from tndsl.verify import equivalent
from tndsl.verify.compiled import compare_compiled
from tndsl.verify.symbolic import Expander, render_polynomial
from fuzzing import (FUZZ_DIMS, MUTANTS, Coverage, bounded, compiled_mismatches,
                     expansion_failures, fuzz, grammar_sentences, mutant, mutations,
                     run_part, run_pipeline, valid_programs)

VALID_CASES, EXPANSION_CASES, GRAMMAR_CASES, DAMAGED_CASES = 160, 50, 600, 240
DAMAGED_PARTS = 4  # each a test of its own, so the workers share them
COVERAGE_LEAST = 5  # each production and IR kind at least this often in the run
COVERAGE = Coverage()  # filled by the tests below, checked by the coverage test


@fuzz(VALID_CASES)
@given(valid_programs())
def test_random_valid_programs_compile_to_the_reference(text):
    with bounded(60):
        program = tndsl.parse(text, "random.tn", FUZZ_DIMS)
        COVERAGE.record("valid", text, program)
        mismatches, overflowed = compiled_mismatches(text, program)
    COVERAGE.cases["valid: outputs the reference overflowed on"] += overflowed
    assert not mismatches, text + "\n" + mismatches[0]


@fuzz(EXPANSION_CASES)
@given(valid_programs())
def test_equations_equal_their_own_expansion_and_checks_hold(text):
    with bounded(60):
        failures = expansion_failures(text)
    assert not failures, text + "\n" + "\n".join(failures)


@fuzz(GRAMMAR_CASES)
@given(grammar_sentences())
def test_any_sentence_of_the_grammar_fails_only_with_a_located_error(text):
    COVERAGE.record("grammar", text)
    with bounded(60):
        run_pipeline(text)  # lets only TnError escape, and catches it


@pytest.mark.parametrize("part", range(DAMAGED_PARTS))
def test_damaged_examples_fail_only_with_located_errors(part):
    def damaged(text):
        with bounded(60):
            try:
                run_pipeline(text)
            except tndsl.TnError:
                raise AssertionError("run_pipeline lets no TnError escape")  # pragma: no cover

    run_part(damaged, mutations(), DAMAGED_CASES // DAMAGED_PARTS, part)


def test_every_production_and_ir_kind_is_generated_often_enough():
    """The coverage of this run: fails if a production of grammar/tn.lark or an IR node
    kind was generated fewer than COVERAGE_LEAST times. Run alone, it runs the two
    generating tests first."""
    if COVERAGE.cases["valid"] < VALID_CASES or COVERAGE.cases["grammar"] < GRAMMAR_CASES:
        COVERAGE.__init__()
        test_random_valid_programs_compile_to_the_reference()
        test_any_sentence_of_the_grammar_fails_only_with_a_located_error()
    report = COVERAGE.report()
    print(report)  # pytest -s shows it; bench/fuzz_long.py prints it too
    missing = COVERAGE.below(COVERAGE_LEAST)
    assert not missing, "\n".join(missing) + "\n\n" + report
    # Outputs the reference evaluator overflowed on are not compared: keep them rare.
    assert COVERAGE.cases["valid: outputs the reference overflowed on"] <= VALID_CASES // 20


# ---- mutants: the fuzzer must catch a deliberately broken lowering ------------------------

MUTANT_WITNESS = {  # a program each mutant certainly gets wrong: proof the patch bites
    "coefficient": "dim N = 3\ninput a[i: N]\ninput b[i: N]\ny[i] = 2 * (a[i] + b[i])\n",
    "sum": "dim N = 3\ninput a[i: N]\ninput b[i: N]\ny[i] = a[i] + b[i]\n",
    "diagonal": "dim N = 3\nparam W[i: N, j: N]\ny[] = W[c, c]\n",
}


@pytest.mark.parametrize("name", MUTANTS)
def test_each_mutant_breaks_its_lowering_and_is_undone(name):
    program = tndsl.parse(MUTANT_WITNESS[name])
    with mutant(name):
        assert not compare_compiled(program).ok
    assert compare_compiled(program).ok


@pytest.mark.parametrize("name", MUTANTS)
def test_the_fuzzer_catches_each_mutant(name):
    """Random valid programs, compiled by the mutant, until one differs from the
    reference (bench/fuzz_long.py --mutants measures the share of programs that do)."""
    caught: list[str] = []

    @fuzz(150)
    @given(valid_programs())
    def run(text):
        if caught:
            return
        with bounded(60), mutant(name):
            try:
                mismatches, _ = compiled_mismatches(text)
            except tndsl.TnError:
                return
            except Exception as e:  # a crash is caught too, if less politely
                caught.append(f"{type(e).__name__}: {e}\n{text}")
                return
        if mismatches:
            caught.append(mismatches[0] + "\n" + text)

    run()
    assert caught, f"the `{name}` mutant survived 150 random programs"


def test_the_expansion_of_a_summed_out_leg_reads_back():
    # The normal form drops `ones[k]` where another factor has k; the printer must put
    # it back, or the written expansion has an open index.
    program = tndsl.parse("dim N = 3\ninput x[i: N]\ninput y[j: N]\n"
                          "z[j] = x[k] * ones[k] * y[j]\n")
    eq = program.equation("z")
    poly = Expander(program).side(eq.rhs, eq.indices, {l.name: l.dim for l in eq.index_dims})
    assert equivalent(program, "z", render_polynomial(poly), legs=eq.indices).status == "proven"


def test_the_expansion_of_terms_with_dummies_of_different_dims_reads_back():
    # Dummy names run on across monomials: one name stands for one dim in an equation.
    program = tndsl.parse("dim N = 3\ndim M = 2\ninput x[i: N]\ninput y[j: M]\n"
                          "input z[k: N]\nv[k] = x[i] * x[i] * z[k] + y[j] * y[j] * z[k]\n")
    eq = program.equation("v")
    poly = Expander(program).side(eq.rhs, eq.indices, {l.name: l.dim for l in eq.index_dims})
    assert equivalent(program, "v", render_polynomial(poly), legs=eq.indices).status == "proven"


def test_errors_from_damage_are_located():
    text = open(tndsl.__file__.replace("tndsl/__init__.py", "examples/orthodox.tn")).read()
    with pytest.raises(tndsl.TnError) as info:
        tndsl.parse(text.replace("C[k, i]", "C[k, i", 1), "damaged.tn")
    assert info.value.span is not None and "damaged.tn:" in info.value.render()


# ---- regressions found by fuzzing ---------------------------------------------------------

def test_a_full_contraction_through_matmul_leaves_no_stray_dimension():
    text = ("dim B = 4\ndim C = 3\nparam T1[l0: B, l1: B]\nparam T2[l0: C]\n"
            "E0[c] = T1[b3, b] * T1[b3, b] * T2[c]\nE1[] = E0[c] * E0[c]\n")
    program = tndsl.parse(text)
    assert program.module(["E0"])().shape == (3,)
    assert compare_compiled(program, dims={}, outputs=["E0", "E1"]).ok


def test_a_check_whose_legs_come_only_from_a_broken_equation_is_not_a_crash():
    text = ("dim N = 2\ninput x[i: N]\nbad[h] = x[h] * x[h, h]\n"
            "check bad[h] == bad[h]\n")
    with pytest.raises(tndsl.TnError, match="`x` has 1 leg"):
        tndsl.parse(text)

@pytest.mark.parametrize("n", [1000, 10000])
def test_very_long_sums_products_and_negations_do_not_recurse(n):
    text = ("dim N = 2\ninput x[i: N]\ny[i] = " + " + ".join(["x[i]"] * n) +
            "\nz[i] = " + "-" * n + "x[i]\n")
    with bounded(60):
        program = tndsl.parse(text)
        module = program.module(["y", "z"])
    x = torch.tensor([1.0, 2.0])
    result = module(x)
    assert torch.equal(result["y"], n * x) and torch.equal(result["z"], x)


def test_deep_nesting_is_a_located_error():
    text = "dim N = 2\ninput x[i: N]\ny[i] = " + "relu(" * 100 + "x[i]" + ")" * 100 + "\n"
    with pytest.raises(tndsl.TnError, match="nested deeper than 64"):
        tndsl.parse(text)


def test_a_product_of_too_many_tensors_is_refused_at_compile_time():
    program = tndsl.parse("dim N = 2\ninput x[i: N]\ny[i] = " + " * ".join(["x[i]"] * 300) + "\n")
    with pytest.raises(tndsl.TnError, match="multiplies 300 tensors"):
        program.compile()


@pytest.mark.parametrize("init, mean, std", [("normal()", 0.0, 0.02), ("normal(0.5)", 0.0, 0.5),
                                              ("normal(1, 2)", 1.0, 2.0)])
def test_normal_init_with_zero_one_or_two_arguments_builds(init, mean, std):
    # `init normal()` (no arguments) failed when the module was built (found by fuzzing).
    torch.manual_seed(0)
    module = tndsl.parse(f"dim N = 20000\nparam w[i: N] init {init}\ny[i] = w[i]\n").module()
    w = module.w.detach()
    assert abs(float(w.mean()) - mean) < 5 * std / 20000 ** 0.5
    assert abs(float(w.std()) / std - 1) < 0.03


def test_a_term_of_one_hot_inputs_only_computes_in_the_models_dtype():
    # The one-hot matrix took torch.get_default_dtype() (float32) when nothing else in
    # the term was float: a float64 model lost precision (found by fuzzing; 2e-8).
    text = ("dim C = 4\ndim B = 3\ninput t[p: B, v: onehot C]\nparam w[c: C]\n"
            "same[p, q] = t[p, v] * t[q, v]\ny[] = gelu_tanh(t[p, v] * t[p, v]) + w[c] * ones[c]\n")
    program = tndsl.parse(text)
    assert compare_compiled(program, outputs=["same", "y"], tolerance=1e-12).ok
    module = program.module(["same", "y"]).double()
    tokens = torch.tensor([0, 3, 0])
    result = module(tokens)
    assert result["same"].dtype == result["y"].dtype == torch.float64
    assert torch.equal(result["same"], (tokens[:, None] == tokens[None, :]).double())


def test_a_one_hot_term_beside_a_bracketed_sum_builds():
    # `F.one_hot(...).to(a + b.dtype)`: the operand's code was pasted before `.dtype`
    # without brackets (found by fuzzing; a TypeError when the model ran).
    text = ("dim C = 3\ninput t[v: onehot C]\ninput a[i: C]\ninput b[i: C]\n"
            "y[] = (a[v] + b[v]) * t[v] * t[w] * (a[w] - b[w])\n")
    program = tndsl.parse(text)
    assert compare_compiled(program, outputs=["y"], tolerance=1e-12).ok


@pytest.mark.parametrize("rhs, label", [("1", "1"), ("N", "N"), ("1 + 2", "2")])
def test_an_equation_of_numbers_only_draws_its_number(rhs, label):
    # `s[] = 1` crashed the DOT writer with an IndexError: a term with no factors and
    # coefficient 1 drew nothing (found by the grammar fuzzer).
    dot = to_dot(tndsl.parse(f"dim N = 3\ns[] = {rhs}\n"))
    assert f'label="{label}"' in dot and 'class="coefficient"' in dot


# ---- hostile names --------------------------------------------------------------------------

HOSTILE = ["__import__", "eval", "exec", "open", "print", "self", "torch", "F", "nn", "math",
           "class", "lambda", "import", "None", "True", "_param", "_check_input", "inputs",
           "os.system", "sys.path", "__builtins__", "__import__.os"]


def test_hostile_names_stay_inert_in_generated_code():
    names = [n for n in HOSTILE if n.replace(".", "").replace("_", "").isalnum() or
             n.startswith("_")]
    lines = ["dim N = 3"]
    lines += [f"input {n}[i: N]" for n in names if "." not in n][:6]
    lines += [f"param {n}[i: N]" for n in names[6:]]
    inputs = [n for n in names if "." not in n][:6]
    params = names[6:]
    terms = " + ".join(f"{n}[i]" for n in inputs + params)
    lines.append(f"out[i] = {terms}")
    text = "\n".join(lines) + "\n"
    try:
        program = tndsl.parse(text, "hostile.tn")
    except tndsl.TnError as e:  # names the grammar refuses are refused cleanly
        pytest.fail(e.render())
    generated = program.compile()
    tree = ast.parse(generated.source)
    # The generated classes are what the names reach; the helpers above them (HookPoint
    # among them) are fixed text.
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name != "HookPoint"]
    # Builtins are reserved by the namespace, so no `.tn` name becomes one.
    allowed_calls = {"_param", "_check_input", "_attach", "HookPoint", "super",
                     "zip", "range", "str", "getattr"}
    for node in (node for cls in classes for node in ast.walk(cls)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id in allowed_calls, ast.unparse(node)
        if isinstance(node, ast.Attribute) and ast.unparse(node) != "super().__init__":
            # Only torch / F / nn / self / tensors' own methods: never __import__ or os.
            assert not node.attr.startswith("__"), ast.unparse(node)
        if isinstance(node, ast.Name):
            assert not node.id.startswith("__"), node.id
            assert node.id not in {"eval", "exec", "open", "print", "__import__", "os", "sys"}
    module = generated.build()
    values = {n: torch.randn(3) for n in generated.arguments}
    expected = sum(values.values()) + sum(p for p in module.parameters())
    assert torch.allclose(module(**values), expected)
    assert {n for n, _ in module.named_parameters()} == {p for p in params if "." not in p} | \
        {p for p in params if "." in p}


@pytest.mark.parametrize("name", ["forward", "sys.modules", "training", "a.to.b",
                                  "__class__.__bases__"])
def test_param_named_like_a_module_attribute_is_an_error_not_a_crash(name):
    program = tndsl.parse(f"dim N = 2\nparam {name}[i: N]\ny[i] = {name}[i]\n")
    with pytest.raises(tndsl.TnError, match="attribute of torch.nn.Module"):
        program.compile()
