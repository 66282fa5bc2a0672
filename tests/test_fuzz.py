"""Fuzzing the whole pipeline (docs/robustness.md): random valid programs must compile
to the same values as the reference evaluator; damaged examples may fail, but only with
a located TnError, never another exception and never a hang."""
import ast

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

import tndsl
from tndsl.verify import equivalent
from tndsl.verify.compiled import compare_compiled
from tndsl.verify.symbolic import Expander, render_polynomial
from fuzzing import bounded, mutations, run_pipeline, valid_programs

def fuzz(cases: int):
    """Deterministic (derandomized) runs of a fixed size without shrinking, so CI time is
    predictable; a failure prints the whole generated program, which reproduces it."""
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@fuzz(200)
@given(valid_programs())
def test_random_valid_programs_compile_to_the_reference(text):
    with bounded(60):
        program = tndsl.parse(text, "random.tn")
        outputs = [eq.name for eq in program.outputs]
        report = compare_compiled(program, dims={}, outputs=outputs)
    assert report.ok, text + "\n" + report.render()


@fuzz(100)
@given(valid_programs())
def test_box_free_equations_equal_their_own_expansion(text):
    with bounded(60):
        program = tndsl.parse(text, "random.tn")
        rebound = {eq.name.split("@")[0] for eq in program.equations if "@" in eq.name}
        for eq in program.equations:
            if eq.instance or not eq.indices or eq.name.split("@")[0] in rebound:
                continue
            expander = Expander(program)
            dims = {leg.name: leg.dim for leg in eq.index_dims}
            poly = expander.side(eq.rhs, eq.indices, dims)
            if not poly or expander.has_boxes:
                continue  # box-free equations only: a box's diagonal has no .tn spelling
            expanded = render_polynomial(poly)
            result = equivalent(program, eq.name, expanded, legs=eq.indices)
            assert result.status == "proven", (text, expanded, result.render())


@fuzz(600)
@given(mutations())
def test_damaged_examples_fail_only_with_located_errors(text):
    with bounded(60):
        try:
            run_pipeline(text)
        except tndsl.TnError:
            raise AssertionError("run_pipeline lets no TnError escape")  # pragma: no cover


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
    allowed_calls = {"_param", "_check_input", "_attach", "HookPoint", "super", "zip", "range",
                     "str", "getattr"}
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
