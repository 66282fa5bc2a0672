"""The layout pass (tndsl.passes.layout): a param whose legs a GEMM merges in another
order is stored with that order's strides, so the forward copies no weight; its shape,
state_dict entry and values are those of the declared order."""
import copy
import io

import pytest
import torch

import tndsl
from tndsl.passes.layout import storage_orders
from tndsl.models.weights import contiguous_params, load_safetensors, save_safetensors
from conftest import ROOT, loaded, small_gpt2

QKV = ("W_Q", "W_K", "W_V")
SMALL = {"Layers": 2, "Context": 8, "Model": 64, "Heads": 4, "Vocab": 16}
COPIES = {"aten::clone", "aten::copy_", "aten::contiguous", "aten::_unsafe_view"}


def test_the_first_use_decides_and_the_identity_is_left_out():
    uses = [("W_Q", (1, 0, 2)), ("W_U", (0, 1)), ("W_Q", (0, 2, 1)), ("W_K", (2, 0, 1))]
    assert storage_orders(uses) == {"W_Q": (1, 0, 2), "W_K": (2, 0, 1)}
    assert storage_orders([]) == {}


def _gpt2(**options):
    program, values, tokens = small_gpt2(SMALL)
    return loaded(program, values, **options), values, tokens


def test_qkv_are_stored_model_major_with_their_declared_shape_and_values():
    model, values, _ = _gpt2()
    plain, _, _ = _gpt2(no_fuse=["layout"])
    assert list(model.state_dict()) == list(plain.state_dict())
    for name, param in model.named_parameters():
        assert param.shape == values[name].shape and torch.equal(param, values[name])
        assert plain.get_parameter(name).is_contiguous()
        leaf = name.rsplit(".", 1)[-1]
        # Model-major: (Model, Heads, Head) is the storage, so its merge is a view.
        assert param.is_contiguous() == (leaf not in QKV), name
        if leaf in QKV:
            assert param.permute(1, 0, 2).is_contiguous(), name


def test_initial_values_do_not_depend_on_the_layout():
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims=SMALL)
    torch.manual_seed(5)
    stored = program.module().state_dict()
    torch.manual_seed(5)
    declared = program.module(no_fuse=["layout"]).state_dict()
    assert all(torch.equal(stored[k], declared[k]) for k in declared)


def _copies(model, *args) -> set[str]:
    """The copying ops a second forward runs on anything bigger than a scalar (rms_norm
    turns its eps into a tensor with a 0-d copy)."""
    with torch.no_grad():
        model(*args)  # rotary tables are built on a first call, then cached
        with torch.profiler.profile(record_shapes=True) as prof:
            model(*args)
    # Not copies of a weight: addmm (F.linear with a bias) first writes the broadcast
    # bias into its result, as any nn.Linear does; matmul (F.linear without one) views
    # its 2-D result with the batch dims again (`_unsafe_view`, no data moved).
    exempt = {("aten::copy_", "aten::addmm"), ("aten::_unsafe_view", "aten::matmul")}
    return {e.name for e in prof.events()
            if e.name in COPIES and any(len(shape) for shape in e.input_shapes)
            and (e.name, e.cpu_parent.name if e.cpu_parent else None) not in exempt}


@pytest.mark.parametrize("example, dims", [
    ("gpt2_small.tn", {"Layers": 2, "Context": 16, "Model": 64, "Heads": 4, "Vocab": 50}),
    ("mistral.tn", {"Layers": 2, "Model": 64, "Heads": 4, "KVHeads": 2, "Head": 16,
                    "Vocab": 50, "Hidden": 96, "Window": 16}),
])
def test_the_forward_copies_no_weight(example, dims):
    program = tndsl.load(ROOT / "examples" / example, dims=dims)
    tokens = torch.randint(0, 50, (2, 16))
    assert _copies(program.module().eval(), tokens) == set()
    # Without the pass each Q/K/V merge copies: what the check above would catch.
    assert "aten::clone" in _copies(program.module(no_fuse=["layout"]).eval(), tokens)


def test_the_layout_survives_conversion_copying_saving_and_loading(tmp_path):
    model, values, tokens = _gpt2()
    with torch.no_grad():
        expected = model(tokens)

    def stored_model_major(m):
        return all(m.get_submodule(f"blocks.{b}.attn").get_parameter(n).permute(1, 0, 2)
                   .is_contiguous() for b in range(2) for n in QKV)

    for converted in (copy.deepcopy(model), copy.deepcopy(model).float().double(),
                      copy.deepcopy(model).to(torch.float32)):
        assert stored_model_major(converted)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh, _, _ = _gpt2()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert stored_model_major(fresh)
    save_safetensors(model, tmp_path / "w.safetensors")  # safetensors wants contiguous
    again, _, _ = _gpt2()
    with torch.no_grad():
        for p in again.parameters():
            p.zero_()
    load_safetensors(again, tmp_path / "w.safetensors")
    assert stored_model_major(again)
    with torch.no_grad():
        for m in (fresh, again):
            assert torch.equal(m(tokens), expected)


def test_training_gives_the_declared_layouts_gradients_and_steps():
    model, _, tokens = _gpt2()
    plain, _, _ = _gpt2(no_fuse=["layout"])
    for m in (model, plain):
        logits = m(tokens)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                          tokens[:, 1:].flatten()).backward()
    declared = dict(plain.named_parameters())
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, declared[name].grad, atol=1e-12, rtol=0), name
        assert param.grad.stride() == param.stride(), name  # laid out like its param
    for m in (model, plain):
        torch.optim.AdamW(m.parameters(), lr=1e-2).step()
    for name, param in model.named_parameters():
        assert torch.allclose(param, declared[name], atol=1e-12, rtol=0), name
    assert model.blocks[0].attn.W_Q.permute(1, 0, 2).is_contiguous()


def test_contiguous_params_undoes_the_layout_in_place_for_tools_that_need_it():
    model, _, tokens = _gpt2()
    with torch.no_grad():
        expected = model(tokens)
    with pytest.raises(RuntimeError, match="view"):  # what FSDP2 and friends run into
        torch.nn.utils.parameters_to_vector(model.parameters())
    before = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert contiguous_params(model) is model
    assert all(a is b and a.is_contiguous() for a, b in zip(before, model.parameters()))
    assert torch.nn.utils.parameters_to_vector(model.parameters()).numel() == \
        sum(p.numel() for p in before)
    with torch.no_grad():
        assert torch.equal(model(tokens), expected)
    W_Q = model.blocks[0].attn.W_Q
    start = W_Q.detach().clone()
    model(tokens).sum().backward()
    optimizer.step()  # the optimizer still holds the model's params: it moves them
    assert torch.allclose(W_Q, start - 0.1 * W_Q.grad, atol=1e-12, rtol=0)
