"""The decoding plan derived from the IR (tndsl/passes/decode.py): what is cached, which
legs run over the new positions and which over all, and the located refusals of files
where decoding one position at a time would not give the whole sequence's values. The
compiled cache is checked against the uncached module (the oracle: the same diagram run
on the whole sequence) for files no family table knows, growing and static
(`max_length`), and under torch.compile, where a static cache decodes in two graphs."""
from pathlib import Path

import pytest
import torch

import tndsl
from tndsl.passes.decode import ALL, NEW, DecodeError, NoPositions, derive

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"Vocab": 50, "Model": 16, "Heads": 4, "KVHeads": 2, "Head": 4, "Hidden": 24,
         "Layers": 2}

HEAD = """dim Context = 12
dim Model = 8
dim Vocab = 11
input tokens[p: Context, v: onehot Vocab]
param E[v: Vocab, m: Model]
x[p, m] = tokens[p, v] * E[v, m]
"""


def _plan(text, name="t.tn"):
    program = tndsl.parse(HEAD + text, name)
    return program, derive(program.network, program.sizes)


def test_a_transformer_caches_its_keys_and_values_after_rotary():
    program = tndsl.load(ROOT / "examples" / "mistral.tn", dims={**SMALL, "Window": 3})
    plan = derive(program.network, program.sizes)
    assert plan.dim == "Context"
    assert plan.cached == tuple((f"blocks.{l}.attn.{t}", 0) for l in (0, 1) for t in "kv")
    assert plan.roles["blocks.0.attn.scores"] == (None, NEW, ALL)
    assert plan.roles["blocks.0.attn.pattern"] == (None, NEW, ALL)
    assert plan.roles["blocks.0.attn.q"] == (NEW, None, None)
    assert plan.roles["rotary"] == (NEW, None, None)  # applied at the new positions only
    assert plan.role("blocks.0.attn.z", "s") == ALL
    assert not plan.also_new


def test_a_key_read_straight_from_the_residual_is_what_is_cached():
    # attn_only_2l.tn folds W_K into the scores: the block's input x is read at keys.
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn")
    plan = derive(program.network, program.sizes)
    assert plan.cached == (("blocks.0.attn.x", 0), ("blocks.1.attn.x", 0))
    assert plan.also_new == {"blocks.0.attn.x", "blocks.1.attn.x"}  # queries read it too


@pytest.mark.parametrize("body, where, words", [
    ("s[p, t] = x[p, m] * x[t, m]\nw[p, t] = softmax[t](s[p, t])\ny[p, m] = w[p, t] * x[t, m]\n",
     "t.tn:8:11", "softmax over the positions `t`"),
    ("s[p, t] = x[p, m] * x[t, m]\nw[p, t] = softmax[t](s[p, t] where t >= p)\n"
     "y[p, m] = w[p, t] * x[t, m]\n", "t.tn:8:11", "without a causal mask"),
    ("s[p, t] = x[p, m] * x[t, m]\nw[p, t] = softmax[t](s[p, t] where t <= p + 1)\n"
     "y[p, m] = w[p, t] * x[t, m]\n", "t.tn:8:11", "without a causal mask"),
    ("y[p, m] = layernorm[p](x[p, m])\n", "t.tn:7:11", "layernorm over the positions"),
    ("s[p, t] = x[p, m] * x[t, m]\nw[p, t] = softmax[t](s[p, t] where t <= p)\n"
     "y[p, m] = s[p, t] * x[t, m]\n", "t.tn:9:11", "sums over the positions `t`"),
])
def test_a_file_that_looks_ahead_is_refused_where_it_does(body, where, words):
    with pytest.raises(DecodeError) as info:
        _plan(body)
    message = str(info.value)
    assert where in message and words in message and "^" in message


def test_masks_that_only_look_back_are_accepted():
    for condition in ("t <= p", "t < p", "p >= t", "t == p - 1", "t <= p and p - t < 3"):
        _, plan = _plan(f"s[p, t] = x[p, m] * x[t, m]\n"
                        f"w[p, t] = softmax[t](s[p, t] where {condition})\n"
                        f"y[p, m] = w[p, t] * x[t, m]\n")
        assert plan.cached == (("x", 0),)


def test_a_program_without_positions_has_no_plan():
    program = tndsl.load(ROOT / "examples" / "mlp.tn")
    with pytest.raises(NoPositions):
        derive(program.network, program.sizes)
    assert not hasattr(program.module(), "new_cache")


def _random_model(program, outputs=None):
    model = program.module(outputs).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return model


def _incremental_equals_whole(program, tokens, outputs=None, chunks=(4, 1, 2, 1),
                              max_length=None):
    model = _random_model(program, outputs)
    with torch.no_grad():
        whole = model(tokens)
        cache, parts, start = model.new_cache(max_length=max_length), [], 0
        for n in chunks:
            parts.append(model(tokens[..., start:start + n], cache=cache))
            start += n
    scale = max(1.0, whole.abs().max().item())  # relative to the values' size
    return (torch.cat(parts, dim=-2) - whole[..., :start, :]).abs().max().item() / scale


@pytest.mark.parametrize("max_length", [None, 12])  # growing; static, as long as Context
def test_a_users_own_causal_model_decodes_with_the_derived_cache(max_length):
    # A masked causal mixing with a learnt position table: nothing a family table knows.
    program, _ = _plan("param P[p: Context, m: Model]\nparam W[m: Model, n: Model]\n"
                       "h[p, m] = x[p, m] + P[p, m]\n"
                       "s[p, t] = h[p, m] * W[m, n] * h[t, n]\n"
                       "w[p, t] = softmax[t](s[p, t] where t < p + 1 and p - t < 3)\n"
                       "y[p, m] = w[p, t] * h[t, m] + h[p, m]\n")
    tokens = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    assert _incremental_equals_whole(program, tokens, max_length=max_length) < 1e-12


@pytest.mark.parametrize("max_length", [None, 10])
@pytest.mark.parametrize("example", ["gpt2_small", "attn_only_2l", "mistral"])
def test_examples_decode_incrementally_with_hooks_on_the_pattern(example, max_length):
    program = _example(example)
    tokens = torch.randint(0, program.sizes["Vocab"], (2, 8),
                           generator=torch.Generator().manual_seed(1))
    outputs = ["logits"]
    assert _incremental_equals_whole(program, tokens, outputs, max_length=max_length) < 1e-12
    model = _random_model(program, outputs)
    seen = []
    name = "blocks.1.attn.hook_pattern"
    model.get_submodule(name).register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(tokens[:, :6])
        whole = seen.pop()                     # [batch, heads, 6, 6]: the oracle's rows
        cache = model.new_cache(max_length=max_length)
        model(tokens[:, :5], cache=cache)
        model(tokens[:, 5:6], cache=cache)
    new = seen[-1]
    # The new query over every key so far; a static cache's buffer is max_length wide,
    # its keys after the query weighted 0.
    assert new.shape[-2:] == (1, 6 if max_length is None else max_length)
    assert (new[..., :6] - whole[..., 5:, :]).abs().max().item() < 1e-12
    assert not new[..., 6:].any()


def _example(name, context=12):
    gpt2 = {"Vocab": 50, "Model": 16, "Heads": 4, "Layers": 2, "Context": context}
    dims = {"mistral": {**SMALL, "Window": 3}, "gpt2_small": gpt2,
            "llama": SMALL}.get(name, {})
    return tndsl.load(ROOT / "examples" / f"{name}.tn", dims=dims)


def test_a_cache_past_the_learnt_positions_is_a_clear_error():
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn",
                         dims={"Vocab": 50, "Model": 16, "Heads": 4, "Layers": 1, "Context": 6})
    model = program.module()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="past the 6 positions"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


# ---- the static cache under torch.compile ------------------------------------------------

@pytest.mark.parametrize("example", ["gpt2_small", "llama", "mistral"])  # learnt
def test_a_compiled_model_decodes_with_a_static_cache_and_two_graphs(example, fresh_dynamo):
    # positions; rotary with grouped key/value heads; a window of 3.
    from torch._dynamo.testing import CompileCounter
    model = _random_model(_example(example, context=40), ["logits"]).eval()
    tokens = torch.randint(0, 50, (2, 37), generator=torch.Generator().manual_seed(2))
    counter = CompileCounter()
    # dynamic=False: every shape is static, and fullgraph=True: no graph breaks.
    compiled = torch.compile(model, backend=counter, dynamic=False, fullgraph=True)
    with torch.no_grad():
        whole = model(tokens)  # the oracle: the same diagram run whole, eager, uncached
        for _ in range(2):     # a second generation reuses both graphs
            cache = model.new_cache(max_length=40)
            parts = [compiled(tokens[:, :5], cache=cache)]
            parts += [compiled(tokens[:, k:k + 1], cache=cache) for k in range(5, 37)]
            assert (torch.cat(parts, dim=1) - whole).abs().max().item() < 1e-10
    # One graph for the prompt, one for all 32 single-token steps.
    assert counter.frame_count == 2
    assert cache.length == 37


def test_a_static_cache_refuses_what_it_cannot_hold():
    model = _random_model(_example("llama"))
    with pytest.raises(ValueError, match="max_length must be a whole number"):
        model.new_cache(max_length=0)
    cache = model.new_cache(max_length=6)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)  # exactly full: allowed
        with pytest.raises(ValueError, match="holds 6 positions; this call would make 7"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
        # Compiled, the bound is an assert op in the graph (no branch on the length).
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        cache = model.new_cache(max_length=6)
        compiled(torch.zeros(1, 5, dtype=torch.long), cache=cache)
        compiled(torch.zeros(1, 1, dtype=torch.long), cache=cache)
        with pytest.raises(RuntimeError, match="more positions than max_length"):
            compiled(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    gpt2 = _random_model(_example("gpt2_small", context=8))
    with pytest.raises(ValueError, match="max_length 9 is past the 8 positions"):
        gpt2(torch.zeros(1, 2, dtype=torch.long), cache=gpt2.new_cache(max_length=9))


@pytest.mark.parametrize("example", ["gpt2_small", "llama", "mistral", "attn_only_2l"])
def test_generated_code_names_only_globals_it_defines(example):
    # Each helper is emitted only where used; a call it makes to one left out (as
    # `_cached_attention` once named `_windowed_attention` in files without a window)
    # would be a NameError on the branch that reaches it. Every global any function
    # or method of the generated module loads must exist.
    import builtins
    import dis
    import types
    module = _example(example).module()
    namespace = type(module).forward.__globals__
    missing = set()

    def check(code):
        for instruction in dis.get_instructions(code):
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME") and \
                    instruction.argval not in namespace and \
                    not hasattr(builtins, instruction.argval):
                missing.add((code.co_name, instruction.argval))
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                check(const)
    for value in list(namespace.values()):
        functions = [value] if isinstance(value, types.FunctionType) else \
            [v for v in vars(value).values() if isinstance(v, (types.FunctionType, property))] \
            if isinstance(value, type) and value.__module__ == type(module).__module__ else []
        for fn in functions:
            for f in (fn.fget, fn.fset) if isinstance(fn, property) else (fn,):
                if f is not None:
                    check(f.__code__)
    assert not missing
    assert ("_cached_attention" in namespace) == (example != "attn_only_2l")  # unfused
