"""What elaboration and checking mean: paths, versions, forward uses, legs, sizes."""
import pytest
import sympy

import tndsl
from tndsl.lang.errors import TnErrors
from tndsl.lang import ir
from tndsl.lang.errors import SizeError, TnError, UnknownNameError

HEADER = "dim N = 3\ndim M = 4\ninput x[i: N]\n"


def names(program):
    return [eq.name for eq in program.equations]


def test_loop_rebinding_makes_versions_and_later_uses_see_the_last():
    program = tndsl.parse(HEADER + """
        y[i] = x[i]
        for l in 0..3 {
            y[i] = 2 * y[i]
        }
        z[i] = y[i]
    """)
    assert names(program) == ["y", "y@1", "y@2", "y@3", "z"]
    uses = {eq.name: [r.name for r in ir.refs(eq.rhs)] for eq in program.equations}
    assert uses["y@1"] == ["y"] and uses["y@3"] == ["y@2"] and uses["z"] == ["y@3"]


def test_forward_use_refers_to_the_final_definition():
    program = tndsl.parse(HEADER + "z[i] = y[i]\ny[i] = 2 * x[i]\n")
    assert [r.name for r in ir.refs(program.equation("z").rhs)] == ["y"]


def test_block_instances_name_params_and_intermediates_under_their_path():
    program = tndsl.parse(HEADER + """
        block Scale(v[i: N]) -> [i: N] {
            param w[i: N]
            scaled[i] = v[i] * w[i]
            return scaled[i]
        }
        for l in 0..2 {
            x2[i] = Scale(x) as layers.{l}.scale
        }
        out[i] = layers.1.scale.scaled[i]
    """)
    assert [t.name for t in program.params] == ["layers.0.scale.w", "layers.1.scale.w"]
    assert "layers.1.scale.scaled" in names(program)
    assert [i.path for i in program.network.instances] == ["layers.0.scale", "layers.1.scale"]
    assert [r.name for r in ir.refs(program.equation("out").rhs)] == ["layers.1.scale.scaled"]


def test_block_argument_binds_bare_names_positionally_and_expressions_by_leg_name():
    program = tndsl.parse(HEADER + """
        input a[k: N]
        block Id(v[i: N]) -> [i: N] {
            return v[i]
        }
        y[i] = Id(a) as first
        z[i] = Id(2 * x[i]) as second
    """)
    assert program.equation("first.v").rhs.terms[0].factors[0] == ir.Ref("a", ("i",))
    assert program.equation("second.v").rhs.terms[0].coefficient == 2


def test_block_output_can_be_renamed_at_the_call():
    program = tndsl.parse(HEADER + """
        block Id(v[i: N]) -> [i: N] {
            return v[i]
        }
        y[k] = Id(x)[k] as id
    """)
    assert program.equation("y").legs == (ir.Leg("k", "N"),)


def test_nested_blocks_extend_the_path():
    program = tndsl.load("examples/gpt2_small.tn", dims={"Layers": 2})
    params = {t.name for t in program.params}
    assert {"blocks.1.ln2.w", "blocks.0.attn.W_Q", "blocks.1.mlp.b_out", "ln_final.b"} <= params
    assert program.shape("blocks.0.attn.W_Q") == (12, 768, 64)


def test_gpt2_small_has_transformer_lens_parameter_count():
    # 124,439,808 of GPT-2 small with tied embeddings, plus the untied W_U and b_U
    # that TransformerLens keeps: 768 * 50257 + 50257.
    program = tndsl.load("examples/gpt2_small.tn")
    assert program.parameter_count() == 124_439_808 + 768 * 50257 + 50257


def test_equation_legs_take_dims_from_the_tensors_they_bind():
    program = tndsl.parse(HEADER + "param W[i: N, j: M]\ny[j] = x[i] * W[i, j]\n")
    eq = program.equation("y")
    assert eq.legs == (ir.Leg("j", "M"),)
    assert eq.index_dims == (ir.Leg("i", "N"), ir.Leg("j", "M"))


def test_box_legs_are_the_indices_shared_with_the_outside():
    # Inside relu, j is contracted (it never leaves the box); k is shared with C.
    program = tndsl.load("examples/nested_boxes.tn")
    box = program.equation("y").rhs.terms[0].factors[0]
    assert isinstance(box, ir.Box) and box.function == "sigmoid"
    assert program.equation("y").legs == (ir.Leg("i", "N"), ir.Leg("l", "L"))


def test_coefficients_are_exact_sympy_expressions():
    program = tndsl.load("examples/attention_head.tn")
    coefficient = program.equation("scores").rhs.terms[0].coefficient
    assert coefficient == 1 / sympy.sqrt(sympy.Symbol("Head", positive=True, integer=True))


def test_symbolic_dims_stay_symbolic_until_given():
    program = tndsl.load("examples/mlp.tn")
    batch = sympy.Symbol("Batch", positive=True, integer=True)
    assert program.shape("x") == (batch, 16)
    assert tndsl.load("examples/mlp.tn", dims={"Batch": 8}).shape("x") == (8, 16)


def test_dims_given_at_load_override_and_derived_dims_follow():
    program = tndsl.load("examples/multihead_attention.tn", dims={"Model": 64})
    assert program.sizes["Head"] == 16


def test_a_consistent_size_for_a_derived_dim_is_accepted():
    program = tndsl.load("examples/multihead_attention.tn",
                         dims={"Model": 64, "Heads": 4, "Head": 16})
    assert program.sizes["Head"] == 16 and program.shape("W_Q")[-1] == 16


def test_an_inconsistent_size_for_a_derived_dim_names_both_values():
    with pytest.raises(SizeError) as info:
        tndsl.load("examples/multihead_attention.tn", dims={"Head": 4})
    message = str(info.value)
    assert "Model/Heads is 8" in message and "4 was given" in message
    assert info.value.span is not None and info.value.span.line > 0


def test_one_bad_dim_gives_one_error_not_a_cascade():
    # Before: the refusal left every dim unsized, so the loop over Layers also failed.
    with pytest.raises(SizeError) as info:
        tndsl.load("examples/gpt2_small.tn", dims={"Head": 16, "Layers": 2})
    assert not isinstance(info.value, TnErrors)
    assert "loop bound" not in str(info.value)


def test_unknown_dim_given_at_load_suggests_a_match():
    with pytest.raises(UnknownNameError) as info:
        tndsl.load("examples/mlp.tn", dims={"Bacth": 8})
    assert "Batch" in info.value.hint


def test_scalar_size_expression_that_does_not_divide_is_reported_at_load():
    with pytest.raises(SizeError, match="not a positive integer"):
        tndsl.load("examples/multihead_attention.tn", dims={"Model": 30})


def test_ones_broadcasts_explicitly():
    program = tndsl.parse(HEADER + "param b[j: M]\ny[i, j] = x[i] * ones[j] + b[j] * ones[i]\n")
    assert program.equation("y").legs == (ir.Leg("i", "N"), ir.Leg("j", "M"))


def test_ones_cannot_be_redefined():
    with pytest.raises(TnError, match="built-in"):
        tndsl.parse(HEADER + "ones[i] = x[i]\n")


def test_checks_take_einstein_free_legs_or_explicit_ones():
    program = tndsl.parse(HEADER + """
        param A[i: N, j: N]
        check A[i, j] == A[j, i]
        check diag: [i] A[i, i] == A[i, i]
    """)
    first, second = program.checks
    assert first.legs == (ir.Leg("i", "N"), ir.Leg("j", "N"))
    assert second.label == "diag" and second.legs == (ir.Leg("i", "N"),)


def test_the_same_source_elaborates_to_equal_networks():
    a = tndsl.load("examples/gpt2_small.tn", dims={"Layers": 2}).network
    b = tndsl.load("examples/gpt2_small.tn", dims={"Layers": 2}).network
    assert a == b and a is not b


def test_comments_are_ignored_everywhere():
    program = tndsl.parse("# header\ndim N = 3 # size\ninput x[i: N] # x\ny[i] = # here\n x[i]\n")
    assert names(program) == ["y"]
