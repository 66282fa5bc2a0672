"""Compiled modules: equal to the reference evaluator, readable, deterministic, safe."""
import ast
import subprocess
import sys

import pytest
import torch

import tndsl
from tndsl.lang.errors import ResourceError, TnError
from tndsl.verify.compiled import compare_compiled
from tndsl.verify.numeric import random_tensors, small_program
from tndsl.verify.reference import Reference
from conftest import EXAMPLES, ROOT


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_compiles_and_equals_the_reference(path):
    report = compare_compiled(tndsl.load(path))
    assert report.ok, report.render()
    assert report.worst <= 1e-10  # issue 16 acceptance: float64 within 1e-10 (relative)
    assert all(scale > 0 for scale in report.scales.values())  # not comparing zeros


BOXES = """
dim A = 3
dim B = 4
dim C = 5
input x[a: A, b: B]
input y[b: B, c: C]
e[a, c] = relu(x[a, b] * y[b, c]) + gelu(x[a, b] * y[b, c]) + gelu_tanh(x[a, b] * y[b, c])
    + tanh(x[a, b] * y[b, c]) + σ(x[a, b] * y[b, c]) + silu(x[a, b] * y[b, c])
    + exp(x[a, b] * y[b, c]) + identity(x[a, b] * y[b, c])
ln[a, b] = layernorm[a, b](x[a, b]) + rmsnorm[b](x[a, b])
sm[a, b] = softmax[a, b](x[a, b]) + softmax[a](x[a, b] where a != b)
masked[a, c] = (x[a, b] * y[b, c] where a <= c and c > a) - 0.5 * ones[a] * y[b, c] * ones[b]
scaled[c] = y[b, c] * ones[b] / sqrt(A) * A
"""


def test_every_box_and_mask_form_equals_the_reference():
    report = compare_compiled(tndsl.parse(BOXES, "boxes.tn"), dims={})
    assert report.ok, report.render()


def test_causal_softmax_gives_exact_zeros_even_for_fully_masked_rows():
    program = tndsl.parse("dim P = 4\ninput x[p: P, s: P]\n"
                          "y[p, s] = softmax[s](x[p, s] where s < p)\n")
    module = program.module().double()
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    y = module(x)
    assert torch.equal(y[0], torch.zeros(4, dtype=torch.float64))  # row 0 keeps nothing
    assert torch.equal(y.triu(), torch.zeros(4, 4, dtype=torch.float64))
    assert torch.allclose(y[1:].sum(-1), torch.ones(3, dtype=torch.float64))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_batch_dimensions_are_carried_through():
    program = small_program(tndsl.load(ROOT / "examples" / "attn_only_2l.tn"))
    module = program.module().double()
    values = random_tensors(program, torch.Generator().manual_seed(1))
    tokens = torch.randint(0, program.sizes["Vocab"], (2, 3, program.sizes["Context"]))
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(values[name])
        batched = module(tokens)
    context, heads = program.sizes["Context"], program.sizes["Heads"]
    assert batched.shape == (2, 3, heads, context, context)  # kq_comp, the final equation
    for i in range(2):
        for j in range(3):
            one = Reference(program, {**values, "tokens": tokens[i, j]})["kq_comp"]
            assert torch.allclose(batched[i, j], one, atol=1e-10, rtol=0)


def test_one_hot_tokens_become_an_embedding_lookup():
    source = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims={"Layers": 1}).compile().source
    assert "self.embed.W_E[tokens]" in source
    assert "one_hot" not in source


def test_one_hot_falls_back_to_a_matrix_when_no_param_can_be_indexed():
    program = tndsl.parse("dim P = 3\ndim V = 4\ninput t[p: P, v: onehot V]\ninput x[v: V]\n"
                          "y[p] = t[p, v] * x[v]\n")
    assert "F.one_hot(t, 4)" in program.compile().source
    assert compare_compiled(program, dims={}).ok


def test_generated_code_names_intermediates_and_imports_only_torch():
    source = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims={"Layers": 2}).compile().source
    # Names are relative to the block's class: Attention's pattern, MLP's post.
    attention = source.split("class Attention(")[1].split("\nclass ")[0]
    mlp = source.split("class MLP(")[1].split("\nclass ")[0]
    assert "\n            pattern = " in attention and "\n        post = " in mlp
    assert "\n        logits = " in source
    imports = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.add(node.module)
    # torch's own modules only (torch.nn.modules.module: the global hook dicts), and
    # the standard library's os and time for `_linear`'s kernel choice.
    assert imports == {"math", "os", "time", "torch", "torch.nn.functional",
                       "torch.nn.modules.module"}


def test_generated_code_is_byte_identical_across_runs_and_hash_seeds():
    script = ("import tndsl, sys; sys.stdout.write(tndsl.load('examples/gpt2_small.tn', "
              "dims={'Layers': 2}).compile().source)")
    outputs = {subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, env={"PYTHONHASHSEED": seed, "PATH": ""},
                              check=True).stdout
               for seed in ("0", "1", "12345")}
    assert len(outputs) == 1


def test_contraction_order_is_planned_pairwise():
    source = tndsl.load(ROOT / "examples" / "attention_head.tn").compile().source
    scores = source.split("# scores")[1].split("# pattern")[0]
    # A four-operand term becomes three two-operand contractions (einsum or matmul).
    steps = [line for line in scores.splitlines()
             if "torch.einsum" in line or " @ " in line or "_linear(" in line]
    assert len(steps) == 3
    assert all(line.split("'")[1].count(",") == 1 for line in steps if "einsum" in line)
    assert "torch.einsum('...pm,...me,...ne,...sn" not in source


def test_matrix_products_become_matmuls_with_fused_biases():
    source = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims={"Layers": 1}).compile().source
    assert "logits = _linear(final, self.unembed.W_U.t(), self.unembed.b_U)" in source
    assert "pre = _linear(x, self.W_in.t(), self.b_in)" in source


# A vector times a weight with two output legs: `v @ W.reshape(3, 9)` must be bracketed
# before `.unflatten(-1, (3, 3))`, which binds tighter than `@` (found by the long fuzzer:
# unbracketed, the vector was contracted with the wrong leg of the weight, silently).
VECTOR_TWO_OUT_LEGS = """
dim A = 3
dim D = 3
dim U = 3
param T1[l0: D, l1: U, l2: A]
param T3[l0: D, l1: U, l2: A]
param gA[i: A]
E1[d, a2] = T1[k12, k13, k14] * ones[k12, k14] * T3[d, k13, a2] * gA[k15] * ones[k15]
"""


def test_a_vector_times_a_weight_with_two_output_legs_equals_the_reference():
    program = tndsl.parse(VECTOR_TWO_OUT_LEGS, "vector.tn")
    report = compare_compiled(program, dims={})
    assert report.ok, report.render()
    assert all(scale > 0 for scale in report.scales.values())
    assert ".reshape(3, 9)).unflatten(-1, (3, 3))" in program.compile(["E1"]).source


def test_params_are_registered_under_their_full_paths():
    module = tndsl.load(ROOT / "examples" / "gpt2_small.tn",
                        dims={"Layers": 2, "Model": 16, "Vocab": 11, "Context": 5,
                              "Heads": 2}).module()
    names = dict(module.named_parameters())
    assert names["blocks.1.attn.W_Q"].shape == (2, 16, 8)
    assert torch.equal(names["blocks.0.ln1.w"], torch.ones(16))      # init ones
    assert torch.equal(names["blocks.0.mlp.b_in"], torch.zeros(64))  # init zeros
    assert 0.01 < names["embed.W_E"].std().item() < 0.03             # normal(0.02)


def test_intermediate_over_the_memory_budget_is_refused_at_compile_time():
    program = tndsl.parse("dim N = 1000\ninput a[i: N]\ninput b[j: N]\n"
                          "outer[i, j] = a[i] * b[j]\nc[i, j, k] = outer[i, j] * a[k]\n")
    with pytest.raises(ResourceError, match=r"3\.7 GiB.*budget of 1\.0 GiB") as info:
        program.compile(memory_budget=2**30)
    assert info.value.span is not None and info.value.span.line == 5


def test_unknown_path_optimizer_lists_the_valid_ones():
    with pytest.raises(TnError) as info:
        tndsl.load(ROOT / "examples" / "attention_head.tn").compile(optimizer="fastest")
    assert "valid: auto, optimal, dp, greedy, random-greedy" in info.value.hint


def test_every_optimizer_gives_the_same_model():
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn")
    for optimizer in ("optimal", "dp", "greedy", "random-greedy"):
        assert compare_compiled(program, optimizer=optimizer).ok


def test_unsized_dims_are_read_from_the_inputs():
    module = tndsl.load(ROOT / "examples" / "mlp.tn").module()
    assert module(torch.randn(7, 16)).shape == (7, 4)
    assert module(torch.randn(2, 7, 16)).shape == (2, 7, 4)


def test_a_param_with_an_unsized_dim_is_an_error():
    program = tndsl.parse("dim N\nparam w[i: N]\ninput x[i: N]\ny[i] = w[i] * x[i]\n")
    with pytest.raises(TnError, match="no size"):
        program.compile()


def test_wrong_input_shapes_and_dtypes_are_clear_errors():
    module = tndsl.load(ROOT / "examples" / "attn_only_2l.tn").module()
    # Context = 32 is a sequence length: shorter is fine, longer is refused.
    with pytest.raises(ValueError, match=r"input tokens must have shape \(\.\.\., <=32\)"):
        module(torch.zeros(33, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        module(torch.zeros(32))


def test_dtype_conversion_and_no_forced_device():
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn",
                         dims={"Layers": 1, "Model": 16, "Vocab": 11, "Context": 5, "Heads": 2})
    module = program.module().to(torch.bfloat16)
    assert module(torch.randint(0, 11, (5,))).dtype == torch.bfloat16
    # The only mention of a device: `_linear` picks oneDNN's kernel for CPU tensors.
    source = program.compile().source.replace('x.device.type != "cpu"', "")
    assert "cpu" not in source and "cuda" not in source


def test_several_outputs_come_back_as_a_dict():
    module = tndsl.load(ROOT / "examples" / "orthodox.tn").module(["dot", "trace"])
    # float64: a float32 dot product near 0 differs from `u @ w` by more than rtol.
    values = {n: torch.randn(s, dtype=torch.float64) for n, s in
              [("A", (4, 3)), ("B", (3, 5)), ("C", (5, 4)), ("u", (4,)), ("w", (4,))]}
    result = module.double()(**values)
    assert set(result) == {"dot", "trace"}
    assert torch.allclose(result["dot"], values["u"] @ values["w"])
    assert torch.allclose(result["trace"], torch.trace(values["A"] @ values["B"] @ values["C"]))


def test_cli_compile_writes_a_standalone_module(tmp_path):
    out = tmp_path / "head.py"
    result = subprocess.run([sys.executable, "-m", "tndsl", "compile",
                             "examples/attention_head.tn", "-o", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    probe = ("import sys, torch; sys.path.insert(0, '.'); import head; "
             "print(tuple(head.AttentionHead()(torch.randn(16, 32)).shape))")
    check = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                           text=True)
    assert check.stdout.strip() == "(16, 32)", check.stderr


def test_cli_verify_compiled_reports_and_passes():
    result = subprocess.run([sys.executable, "-m", "tndsl", "verify", "--compiled",
                             "examples/multihead_attention.tn"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "passed: largest difference" in result.stdout


@pytest.mark.parametrize("example, dims", [("attention_head", None), ("mlp", None),
                                           ("gpt2_small", {"Layers": 1}),
                                           ("llama", {"Layers": 1})])
def test_generated_code_matches_golden(example, dims, golden):
    name = f"examples/{example}.tn"  # as the CLI shows it, wherever the checkout is
    source = tndsl.parse((ROOT / name).read_text(), name, dims).compile().source
    golden(ROOT / "tests" / "golden" / "code" / f"{example}.py.txt", source)
