"""Issue 22 ("no silent wrong model"), the compiled module's inputs: token ids outside
the vocabulary, negative, boolean or non-integer, and float inputs of another dtype
than the params, are each a clear error naming the input (and the valid range), never a
silently wrong row or a raw error from a generated line. The oracle for valid ids is
plain indexing of the embedding."""
import pytest
import torch

import tndsl

EMBED = """\
dim Vocab = 7
dim Pos = 4
dim Model = 3
input tokens[p: Pos, v: onehot Vocab]
input x[p: Pos, m: Model]
param W_E[v: Vocab, m: Model]
y[p, m] = tokens[p, v] * W_E[v, m] + x[p, m]
"""


@pytest.fixture(scope="module")
def embed():
    module = tndsl.parse(EMBED, "embed.tn").module()
    return module


def test_valid_ids_at_both_ends_read_their_rows(embed):
    tokens = torch.tensor([0, 6, 3, 0])
    x = torch.zeros(4, 3)
    assert torch.equal(embed(tokens, x), embed.W_E.detach()[tokens])
    assert embed(tokens.unsqueeze(0).expand(2, 4), x).shape == (2, 4, 3)
    assert embed(torch.zeros(0, 4, dtype=torch.long), x).shape == (0, 4, 3)  # no ids at all
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        assert torch.equal(embed(tokens.to(dtype), x), embed.W_E.detach()[tokens])


@pytest.mark.parametrize("ids, bad", [([0, 1, -1, 2], "-1"), ([0, 7, 1, 2], "7"),
                                      ([0, 1, 2, -100], "-100"), ([2**40, 0, 0, 0], str(2**40))])
def test_out_of_range_ids_are_a_value_error_naming_the_input_and_range(embed, ids, bad):
    with pytest.raises(ValueError, match=rf"input tokens holds token ids, which must be in "
                                         rf"\[0, 7\); got {bad}"):
        embed(torch.tensor(ids), torch.zeros(4, 3))


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.float64, torch.complex64])
def test_non_integer_ids_are_a_value_error_naming_the_range(embed, dtype):
    tokens = torch.tensor([0, 1, 1, 0]).to(dtype)
    with pytest.raises(ValueError, match=r"input tokens holds token ids in \[0, 7\) and "
                                         rf"must be an integer tensor, got {dtype}"):
        embed(tokens, torch.zeros(4, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_float_inputs_of_another_dtype_are_a_clear_error(embed, dtype):
    with pytest.raises(TypeError, match=rf"input x is {dtype} but the model's params are "
                                        r"torch.float32: convert the input"):
        embed(torch.tensor([0, 1, 2, 3]), torch.zeros(4, 3, dtype=dtype))
    model64 = tndsl.parse(EMBED, "embed.tn").module().to(torch.float64)
    assert model64(torch.tensor([0, 1, 2, 3]), torch.zeros(4, 3, dtype=torch.float64)).dtype \
        == torch.float64


def test_autocast_may_mix_dtypes(embed):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embed(torch.tensor([0, 1, 2, 3]), torch.zeros(4, 3, dtype=torch.bfloat16))


def test_a_gpt2_family_model_refuses_id_minus_one_as_hf_does():
    """The issue's case: id -1 silently read the last vocabulary row (HF raises)."""
    program = tndsl.load("examples/gpt2_small.tn", {"Layers": 1, "Vocab": 11, "Model": 8,
                                                    "Heads": 2, "Context": 5})
    module = program.module()
    with pytest.raises(ValueError, match=r"\[0, 11\); got -1"):
        module(torch.tensor([1, 2, -1]))
    with pytest.raises(ValueError, match=r"\[0, 11\); got 11"):
        module(torch.tensor([[1, 2, 11]]))


def test_ids_are_checked_under_torch_compile_too(embed):
    """A branch on the ids' values would break a fullgraph compile: there the range is an
    assert op in the graph."""
    compiled = torch.compile(embed, fullgraph=True, backend="eager")
    x = torch.zeros(4, 3)
    tokens = torch.tensor([0, 6, 3, 0])
    assert torch.equal(compiled(tokens, x), embed.W_E.detach()[tokens])
    with pytest.raises(RuntimeError, match=r"input tokens holds token ids, which must be in "
                                           r"\[0, 7\)"):
        compiled(torch.tensor([0, -1, 3, 0]), x)
