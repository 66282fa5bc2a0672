"""Generation against Hugging Face's `generate`, and the decoding cache against the
uncached model.

Each family's random checkpoint is saved with a tiny word-level tokenizer built with the
`tokenizers` library (no network) and loaded with `tndsl.from_pretrained`. The oracle
is transformers' own `generate` (greedy, its default DynamicCache) on the float64 model
made exact by `float64_oracle` (tests/hf_models.py); the tokens must be equal one
for one, for a single prompt and for a left-padded batch, for every causal family.
"""
import json

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

import tndsl
from tndsl.interp.generate import GenerateError
from tndsl.models.tokenizer import TokenizerError
from tndsl.passes.decode import DecodeError

from hf_models import CASES, float64_oracle, save

WORDS = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(93)]  # the 97 ids


def _save_tokenizer(folder, bos_processor=False):
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)},
                                           unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos_processor:  # as Llama's tokenizer.json puts BOS first itself
        from tokenizers.processors import TemplateProcessing
        tokenizer.post_processor = TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))


def _checkpoint(case, folder, eos=2):
    model_class, config = CASES[case]()
    config._attn_implementation = "sdpa"
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, eos, 3
    hf = save(model_class, config, folder)
    _save_tokenizer(folder, bos_processor=case.startswith("llama"))
    return float64_oracle(hf.to(torch.float64)).eval()


# Every causal family (BERT is not one: see the last test).
FAMILIES = ["gpt2", "llama", "mistral", "pythia", "qwen2", "gemma", "qwen3", "olmo2",
            "phi3", "stablelm", "gpt_bigcode"]


def _load(case, folder):
    hf = _checkpoint(case, folder)
    return hf, tndsl.from_pretrained(folder, torch.float64)


@pytest.mark.parametrize("case", FAMILIES)
def test_greedy_equals_hugging_face_generate_token_for_token(case, tmp_path):
    hf, model = _load(case, tmp_path)
    prompt = torch.tensor([[5, 17, 9, 30, 12, 8]])
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=12, do_sample=False,
                               attention_mask=torch.ones_like(prompt))
    out = tndsl.generate(model, prompt, 12)
    assert out.tokens.tolist() == expected.tolist()
    assert out.new_tokens.shape == (1, expected.size(1) - 6)


@pytest.mark.parametrize("case", ["gpt2", "llama", "mistral", "qwen2"])
def test_left_padded_batch_equals_hugging_face(case, tmp_path):
    hf, model = _load(case, tmp_path)
    rows = [[5, 17, 9, 30, 12, 8, 4], [22, 6], [7, 7, 40, 11]]
    out = tndsl.generate(model, rows, 9)
    longest = max(map(len, rows))
    ids = torch.tensor([[3] * (longest - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=False,
                               pad_token_id=3)
    assert out.tokens.tolist() == expected.tolist()
    assert out.pad.tolist() == [0, 5, 3]


@pytest.mark.parametrize("case", ["mistral", "pythia"])  # a window; partial rotary
def test_cached_and_uncached_logits_agree(case, tmp_path):
    _, model = _load(case, tmp_path)
    prompt = [[5, 17, 9, 30, 12, 8], [4, 4, 21]]
    cached = tndsl.generate(model, prompt, 6, return_logits=True, stop_at_eos=False)
    uncached = tndsl.generate(model, prompt, 6, return_logits=True, stop_at_eos=False,
                              use_cache=False)
    assert cached.tokens.tolist() == uncached.tokens.tolist()
    assert (cached.logits - uncached.logits).abs().max().item() < 1e-10
    assert cached.logits.abs().max() > 1


def test_incremental_calls_equal_one_call_and_a_static_cache_too(tmp_path):
    _, model = _load("mistral", tmp_path)  # window 4 < the 11 positions
    tokens = torch.randint(4, 44, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model(tokens)
        for max_length in (None, 16):
            cache = model.new_cache(max_length=max_length)
            parts = [model(tokens[:, :5], cache=cache)]
            parts += [model(tokens[:, k:k + 3], cache=cache) for k in (5, 8)]
            assert cache.length == 11
            assert (torch.cat(parts, dim=1) - whole).abs().max().item() < 1e-10


def test_compiled_generation_equals_hugging_face_and_compiles_two_graphs(tmp_path, fresh_dynamo):
    from torch._dynamo.testing import CompileCounter
    hf, model = _load("llama", tmp_path)
    prompt = torch.tensor([[5, 17, 9, 30, 12, 8]])
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=12, do_sample=False,
                               attention_mask=torch.ones_like(prompt))
    counter = CompileCounter()
    options = {"backend": counter, "fullgraph": True}  # fullgraph: no graph breaks
    out = tndsl.generate(model, prompt, 12, compile=options)
    assert out.tokens.tolist() == expected.tolist()
    assert counter.frame_count == 2          # the prompt; every one of the 11 later steps
    assert tndsl.generate(model, prompt, 12, compile=options).tokens.tolist() \
        == expected.tolist() and counter.frame_count == 2  # kept on the model: reused
    # Other prompt lengths and max_new_tokens: the two graphs once more, with those
    # sizes dynamic (torch.compile's automatic dynamic shapes), then no more.
    for length, n in ((4, 9), (9, 5), (3, 14)):
        other = torch.randint(4, 90, (1, length), generator=torch.Generator().manual_seed(n))
        assert tndsl.generate(model, other, n, compile=options).tokens.tolist() \
            == tndsl.generate(model, other, n).tokens.tolist()
    assert counter.frame_count == 4
    # Steering and reading activations while compiled: as the eager model does.
    steering = {"blocks.0.out": lambda x: x + 3.0}
    names = ["blocks.1.attn.pattern", "blocks.0.out"]
    eager = tndsl.generate(model, prompt, 12, hooks=steering, return_cache=names)
    for _ in range(2):
        steered = tndsl.generate(model, prompt, 12, hooks=steering, return_cache=names,
                                 compile=options)
        assert steered.tokens.tolist() == eager.tokens.tolist() != expected.tolist()
        for name in names:
            assert steered.cache[name].shape == eager.cache[name].shape
            assert (steered.cache[name] - eager.cache[name]).abs().max().item() < 1e-10
    assert counter.frame_count == 6  # the hooks are guarded: two more graphs, once
    # The recipe without compile=: a model compiled already runs as it is, with a static
    # cache, and its hooks are named as the model's.
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    again = tndsl.generate(compiled, prompt, 12, hooks=steering, return_cache=names)
    assert again.tokens.tolist() == eager.tokens.tolist() and counter.frame_count == 2
    with pytest.raises(GenerateError, match="compiled already"):
        tndsl.generate(compiled, prompt, 2, compile=True)
    import copy  # the compiled forms stay with their model, out of a copy of it
    twin = copy.deepcopy(model)
    assert not twin.__dict__["_tndsl_compiled"] and model.__dict__["_tndsl_compiled"]


@pytest.mark.slow  # reason: Inductor compiles two graphs (~30-70 s on 2 shared cores)
def test_generation_compiled_by_inductor_equals_hugging_face(tmp_path):
    hf, model = _load("mistral", tmp_path)
    prompt = torch.tensor([[5, 17, 9, 30, 12, 8]])
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=10, do_sample=False,
                               attention_mask=torch.ones_like(prompt))
    out = tndsl.generate(model, prompt, 10, compile=True, return_logits=True)
    assert out.tokens.tolist() == expected.tolist()
    uncached = tndsl.generate(model, prompt, 10, return_logits=True, use_cache=False)
    assert (out.logits - uncached.logits).abs().max().item() < 1e-10


@pytest.mark.parametrize("case", ["llama", "mistral"])  # rotary; and a window of 4
def test_a_static_cache_with_left_padding_equals_hugging_face(case, tmp_path):
    hf, model = _load(case, tmp_path)
    rows = [[5, 17, 9, 30, 12, 8, 4], [22, 6], [7, 7, 40, 11]]
    out = tndsl.generate(model, rows, 9, max_length=20, return_cache=["blocks.1.attn.pattern"])
    ids = torch.tensor([[3] * (7 - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (7 - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=False,
                               pad_token_id=3)
    assert out.tokens.tolist() == expected.tolist()
    if case == "mistral":  # compiled too (padding and the window masked from tensors)
        compiled = tndsl.generate(model, rows, 9, compile={"backend": "eager",
                                                           "fullgraph": True})
        assert compiled.tokens.tolist() == expected.tolist()
    growing = tndsl.generate(model, rows, 9, return_cache=["blocks.1.attn.pattern"])
    pattern = out.cache["blocks.1.attn.pattern"]  # cut from max_length keys to 16
    assert pattern.shape == growing.cache["blocks.1.attn.pattern"].shape
    assert (pattern - growing.cache["blocks.1.attn.pattern"]).abs().max().item() < 1e-12


def test_generation_options_for_the_static_cache_are_checked(tmp_path):
    _, model = _load("qwen2", tmp_path)
    prompt = torch.tensor([[5, 17, 9]])
    with pytest.raises(GenerateError, match="max_length 10 cannot hold") as info:
        tndsl.generate(model, prompt, 8, max_length=10)
    assert "max_length=11" in info.value.hint
    with pytest.raises(GenerateError, match="no argument 'modes'") as info:
        tndsl.generate(model, prompt, 2, compile={"modes": "max-autotune"})
    assert "mode" in info.value.hint and "backend" in info.value.hint
    with pytest.raises(GenerateError, match="compile must be True, False or a dict"):
        tndsl.generate(model, prompt, 2, compile="inductor")
    with pytest.raises(GenerateError, match="compile needs the cache"):
        tndsl.generate(model, prompt, 2, compile=True, use_cache=False)


def test_text_in_text_out_with_the_checkpoints_tokenizer(tmp_path):
    _, model = _load("llama", tmp_path)
    assert model.to_tokens("w3 w4").tolist() == [[1, 7, 8]]        # BOS: its tokenizer adds it
    assert model.to_tokens("w3 w4", prepend_bos=False).tolist() == [[7, 8]]
    assert model.to_str_tokens("w3 w4") == ["<s>", "w3", "w4"]
    assert model.to_tokens(["w3", "w4 w5"]).tolist() == [[3, 1, 7], [1, 8, 9]]  # left pad
    out = model.generate("w3 w4 w5", max_new_tokens=5, stop_at_eos=False)
    assert out.text[0].startswith("<s> w3 w4 w5")
    assert len(out.new_text[0].split()) == 5
    assert model.to_string(out.new_tokens[0]) == out.new_text[0]


def test_gpt2_has_no_bos_unless_asked(tmp_path):
    _, model = _load("gpt2", tmp_path)
    assert model.to_tokens("w0").tolist() == [[4]]
    assert model.to_tokens("w0", prepend_bos=True).tolist() == [[1, 4]]


def test_a_folder_without_tokenizer_loads_and_text_is_a_clear_error(tmp_path):
    model_class, config = CASES["qwen2"]()
    save(model_class, config, tmp_path)
    model = tndsl.from_pretrained(tmp_path)
    assert model.tokenizer is None
    assert model.generate(torch.tensor([5, 6]), 2).tokens.shape == (1, 4)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        model.to_tokens("hello")
    with pytest.raises(TokenizerError, match="no tokenizer"):
        tndsl.generate(model, "hello", 2)


def test_sampling_is_seeded_and_top_k_one_is_greedy(tmp_path):
    _, model = _load("qwen2", tmp_path)
    prompt = torch.tensor([[5, 17, 9]])
    a = tndsl.generate(model, prompt, 8, do_sample=True, temperature=1.5, top_p=0.9, seed=4)
    b = tndsl.generate(model, prompt, 8, do_sample=True, temperature=1.5, top_p=0.9, seed=4)
    assert a.tokens.tolist() == b.tokens.tolist()
    greedy = tndsl.generate(model, prompt, 8)
    assert tndsl.generate(model, prompt, 8, do_sample=True, top_k=1, seed=1).tokens.tolist() \
        == greedy.tokens.tolist()
    with pytest.raises(GenerateError, match="top_p"):
        tndsl.generate(model, prompt, 2, do_sample=True, top_p=1.5)


def test_top_p_and_top_k_keep_what_hugging_faces_warpers_keep():
    from tndsl.interp.generate import _choose
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).double()
    for top_k, top_p in ((5, None), (None, 0.7), (10, 0.5)):
        expected = scores.float()
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p:
            expected = TopPLogitsWarper(top_p)(None, expected)
        allowed = torch.isfinite(expected)
        for seed in range(20):
            draw = _choose(scores, True, 1.0, top_k, top_p,
                           torch.Generator().manual_seed(seed))
            assert allowed.gather(1, draw[:, None]).all()


def test_stop_tokens_finish_a_row_which_then_pads(tmp_path):
    _, model = _load("qwen2", tmp_path)
    prompt = torch.tensor([[5, 17, 9], [6, 6, 6]])
    free = tndsl.generate(model, prompt, 6, stop_at_eos=False)
    stop = int(free.new_tokens[0, 1])
    out = tndsl.generate(model, prompt, 6, stop=stop, stop_at_eos=False)
    row = out.new_tokens[0].tolist()
    assert row[:2] == free.new_tokens[0, :2].tolist()
    assert all(t == 3 for t in row[2:])  # finished: the pad token after the stop


def test_hooks_steer_every_step_and_the_cache_covers_every_position(tmp_path):
    _, model = _load("llama", tmp_path)
    prompt = torch.tensor([[5, 17, 9, 30]])
    plain = tndsl.generate(model, prompt, 6, stop_at_eos=False)
    seen = []

    def steer(x):
        seen.append(x.shape[-2])
        return x + 3.0
    steered = tndsl.generate(model, prompt, 6, stop_at_eos=False,
                             hooks={"blocks.0.out": steer},
                             return_cache=["blocks.1.attn.pattern", "blocks.0.out"])
    assert seen[0] == 4 and set(seen[1:]) == {1}           # the prompt, then one a step
    assert steered.tokens.tolist() != plain.tokens.tolist()
    # The cache equals one forward over the whole output with the same hook.
    with tndsl.hooks.intervene(model, {"blocks.0.out": lambda x: x + 3.0}):
        _, full = tndsl.hooks.run_with_cache(model, steered.tokens,
                                             names=["blocks.1.attn.pattern", "blocks.0.out"])
    for name in full:
        assert steered.cache[name].shape == full[name].shape
        assert (steered.cache[name] - full[name]).abs().max().item() < 1e-10


def test_a_non_causal_file_cannot_generate_and_says_where(tmp_path):
    program = tndsl.parse(
        "dim Context\ndim Vocab = 11\ndim Model = 4\n"
        "input tokens[p: Context, v: onehot Vocab]\nparam E[v: Vocab, m: Model]\n"
        "x[p, m] = tokens[p, v] * E[v, m]\n"
        "pattern[p, s] = softmax[s](x[p, m] * x[s, m])\n"
        "logits[p, v] = pattern[p, s] * x[s, m] * E[v, m]\n", "bidirectional.tn")
    model = program.module()
    with pytest.raises(DecodeError) as info:
        tndsl.generate(model, torch.tensor([1, 2, 3]), 2)
    assert "bidirectional.tn:7" in str(info.value) and "causal" in str(info.value)
    assert tndsl.generate(model, torch.tensor([1, 2, 3]), 2, use_cache=False).tokens.shape \
        == (1, 5)


def test_the_tutorial_steering_script_runs_on_the_documented_api(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "steering", __import__("pathlib").Path(__file__).resolve().parent.parent
        / "examples" / "steering.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.main(tmp_path)
    assert (tmp_path / "sae-steering.png").stat().st_size > 1000
    assert result["steered"].tokens.tolist() != result["plain"].tokens.tolist()
    assert result["steered"].text[0].startswith("<s> the golden gate bridge is")


def test_a_masked_language_model_is_refused_with_its_reason(tmp_path):
    model_class, config = CASES["bert"]()
    save(model_class, config, tmp_path)
    model = tndsl.from_pretrained(tmp_path, torch.float64)
    with pytest.raises(DecodeError, match="without a causal mask") as info:
        model.generate(torch.tensor([5, 6, 7]), 2)
    assert "bert.tn:" in str(info.value)
