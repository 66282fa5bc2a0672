"""tndsl.parallel.distributed on 2 gloo processes on CPU: tensor-parallel GPT-2 against Hugging
Face, the communication it does against the plan's prediction, an FSDP2 training step
against one process, and a sliced contraction against an unsliced einsum.

The processes are started once for the module (tests/distributed_workers.py); each test
reads what the ranks saved and compares it with an oracle computed here.
"""
import subprocess
import sys

import pytest
import torch
import transformers  # the GPT-2 oracle

import tndsl
from tndsl.interp.hooks import run_with_cache
from tndsl.passes.shard import shard_plan
from tndsl.models.weights import load_hf_gpt2, load_state
from distributed_workers import ATTN_ONLY_DIMS, CACHED, GPT2_DIMS, ROOT, attn_only, \
    gpt2_program, launch, next_token_loss, structured_model
from tndsl.parallel import distributed as tdist
from tndsl.lang.dims import evaluate
from networks import ring_of_six
from hf_models import float64_oracle, randomize

# Grouped-query attention: 4 query heads over 2 KV heads, one KV head per rank.
LLAMA = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)

WORLD = 2
RING = ring_of_six(bond=6, phys=5)
SLICE_BUDGET = 2000  # bytes: the unsliced ring needs 900 float64 entries at once


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=GPT2_DIMS["Layers"], n_embd=GPT2_DIMS["Model"], n_head=GPT2_DIMS["Heads"],
        vocab_size=GPT2_DIMS["Vocab"], n_positions=GPT2_DIMS["Context"], bos_token_id=0,
        eos_token_id=0, attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF starts biases at 0 and norms at 1; make every weight count
        for param in hf.parameters():
            param.add_(0.1 * torch.randn_like(param))
    hf.save_pretrained(folder / "gpt2")
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, GPT2_DIMS["Vocab"], (4, GPT2_DIMS["Context"]), generator=generator)
    ring = tndsl.parse(RING, "ring.tn")
    tensors = {t.name: torch.randn(*[ring.sizes[l.dim] for l in t.legs], generator=generator,
                                   dtype=torch.float64) for t in ring.params}
    llama_config = transformers.LlamaConfig(**LLAMA)
    llama_config._attn_implementation = "sdpa"  # eager's softmax is float32 (test_families)
    llama = randomize(transformers.LlamaForCausalLM(llama_config), 4)
    llama.save_pretrained(folder / "llama")
    llama_tokens = torch.randint(0, LLAMA["vocab_size"], (2, 10), generator=generator)
    compiled = folder / "gpt2_tp.py"
    result = subprocess.run(
        [sys.executable, "-m", "tndsl", "compile", str(ROOT / "examples" / "gpt2_small.tn"),
         *[f"--dim={k}={v}" for k, v in GPT2_DIMS.items()], "--shard", "Heads,Hidden",
         "-o", str(compiled)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # planned for 1 rank: 3 heads are fine there, not on the 2-rank mesh
    compiled_odd = folder / "attn_only_odd.py"
    compiled_odd.write_text(tndsl.load(ROOT / "examples" / "attn_only_2l.tn",
                                       dims={**ATTN_ONLY_DIMS, "Heads": 3, "Model": 15})
                            .compile(shard="Heads", ranks=1).source)
    job = {"out": str(folder / "out"), "checkpoint": str(folder / "gpt2"), "tokens": tokens,
           "compiled": str(compiled), "compiled_odd": str(compiled_odd),
           "lr": 0.5, "network": RING, "tensors": tensors, "budget": SLICE_BUDGET,
           "llama": str(folder / "llama"), "llama_tokens": llama_tokens,
           "scenarios": ["tensor_parallel", "fsdp_step", "sliced", "fsdp_blocks", "mistakes",
                         "tensor_parallel_attn_only", "tensor_parallel_vocab",
                         "tensor_parallel_llama", "compiled_parallelize"]}
    launch(WORLD, job)

    def result(rank, scenario):
        return torch.load(folder / "out" / f"rank{rank}" / f"{scenario}.pt", weights_only=True)

    return {"hf": hf.double(), "job": job, "result": result,
            "llama": float64_oracle(llama.eval().to(torch.float64))}


def single_process_gpt2(run):
    module = gpt2_program().module()
    load_state(module, load_hf_gpt2(run["job"]["checkpoint"]))
    return module.double()


def test_tensor_parallel_gpt2_equals_hugging_face_on_both_ranks(run):
    tokens = run["job"]["tokens"]
    with torch.no_grad():
        expected = run["hf"](tokens).logits
    for rank in range(WORLD):
        result = run["result"](rank, "tensor_parallel")
        assert result["logits"].dtype == torch.float64
        assert (result["logits"] - expected).abs().max() < 1e-10
        # Really sharded: each rank holds half of the heads of W_Q[h, m, e].
        assert result["w_q_placement"] == "(Shard(dim=0),)"
        assert result["w_q_local_shape"] == (GPT2_DIMS["Heads"] // WORLD, GPT2_DIMS["Model"],
                                             GPT2_DIMS["Model"] // GPT2_DIMS["Heads"])


def test_compiled_parallelize_method_equals_hugging_face_and_the_library_plan(run):
    tokens = run["job"]["tokens"]
    with torch.no_grad():
        expected = run["hf"](tokens).logits
    plan = shard_plan(gpt2_program(), ("Heads", "Hidden"), WORLD, bytes_per_entry=8)
    module = single_process_gpt2(run)
    loss = module(tokens).square().mean()
    loss.backward()
    for rank in range(WORLD):
        result = run["result"](rank, "compiled_parallelize")
        assert result["logits"].dtype == torch.float64
        assert (result["logits"] - expected).abs().max() < 1e-10
        # the same param -> placement table (and local slices) as tndsl.parallel.distributed's
        library = run["result"](rank, "tensor_parallel")["local"]
        assert result["local"] == library
        assert result["local"]["blocks.1.mlp.W_in"] == (
            "(Shard(dim=1),)", (GPT2_DIMS["Model"], 2 * GPT2_DIMS["Model"]))
        assert result["local"]["embed.W_E"][0] == "(Replicate(),)"
        assert result["comm"] == predicted(plan, tokens.shape[0])
        assert abs(result["loss"] - loss.detach()) < 1e-12
        for name, param in module.named_parameters():
            assert (result["grads"][name] - param.grad).abs().max() < 1e-10, name
        assert result["refused"] == "dim Heads = 3 is not divisible by the mesh size 2"


def predicted(plan, batch):
    """The plan's collectives as (kind, bytes) for a batch of inputs."""
    return [(c.kind, int(plan.value(plan.payload(c))) * (batch if c.per_input else 1))
            for c in plan.collectives]


def test_tensor_parallel_communication_is_what_the_plan_predicts(run):
    plan = shard_plan(gpt2_program(), ("Heads", "Hidden"), WORLD, bytes_per_entry=8)
    expected = predicted(plan, run["job"]["tokens"].shape[0])
    assert len(expected) == 2 * GPT2_DIMS["Layers"]  # one per attention, one per MLP
    assert {kind for kind, _ in expected} == {"all-reduce"}
    for rank in range(WORLD):
        assert run["result"](rank, "tensor_parallel")["comm"] == expected


def test_sharding_vocab_too_equals_hugging_face_and_the_plan(run):
    tokens = run["job"]["tokens"]
    with torch.no_grad():
        expected = run["hf"](tokens).logits
    plan = shard_plan(gpt2_program(), ("Heads", "Hidden", "Vocab"), WORLD, bytes_per_entry=8)
    # the embedding table gathered for the lookup, 4 all-reduces, the logits gathered
    assert [c.kind for c in plan.collectives] == ["all-gather"] + ["all-reduce"] * 4 + [
        "all-gather"]
    for rank in range(WORLD):
        result = run["result"](rank, "tensor_parallel_vocab")
        assert (result["logits"] - expected).abs().max() < 1e-10
        assert result["comm"] == predicted(plan, tokens.shape[0])


def test_tensor_parallel_llama_shards_kv_heads_with_their_query_heads(run):
    tokens = run["job"]["llama_tokens"]
    with torch.no_grad():
        expected = run["llama"](tokens).logits
    assert expected.dtype == torch.float64 and expected.abs().max() > 1
    program = tndsl.from_pretrained(run["job"]["llama"]).tndsl_program
    plan = shard_plan(program, ("Heads", "Hidden"), WORLD, bytes_per_entry=8)
    sizes = {**plan.sizes, "Context": tokens.shape[-1]}
    head = LLAMA["hidden_size"] // LLAMA["num_attention_heads"]
    for rank in range(WORLD):
        result = run["result"](rank, "tensor_parallel_llama")
        assert (result["logits"] - expected).abs().max() < 1e-10
        # Each rank holds its 2 query heads and the one KV head they read.
        local = result["local"]
        assert local["blocks.1.attn.W_Q"] == ("(Shard(dim=0),)", (2, LLAMA["hidden_size"], head))
        assert local["blocks.1.attn.W_K"] == ("(Shard(dim=0),)", (1, LLAMA["hidden_size"], head))
        assert local["blocks.1.attn.W_V"] == ("(Shard(dim=0),)", (1, LLAMA["hidden_size"], head))
        # The plan's all-reduces, one per attention and one per MLP, and nothing else
        # (no gather of q, k or the pattern where the grouping repeats KV heads).
        assert result["comm"] == [
            ("all-reduce", int(evaluate(plan.payload(c), sizes)) * tokens.shape[0])
            for c in plan.collectives]
        assert len(result["comm"]) == 2 * LLAMA["num_hidden_layers"]
        # and the method `tndsl compile --shard` writes does the same
        assert (result["compiled_logits"] - expected).abs().max() < 1e-10
        assert result["compiled_local"] == local
        assert result["compiled_comm"] == result["comm"]


def test_partial_sums_are_reduced_where_the_plan_says_not_at_the_logits(run):
    # attn_only_2l sums heads inside each block (`head_out[h, p, m] * ones[h]`); left to
    # itself DTensor would carry the partial sum through the residual stream into the
    # logits and all-reduce [p, Vocab] there (and gather params on the way).
    program, module, tokens = attn_only()
    with torch.no_grad():
        expected = module(tokens)
    plan = shard_plan(program, ("Heads",), WORLD, outputs=["logits"], bytes_per_entry=8)
    assert [c.equation for c in plan.collectives] == ["blocks.0.attn.out", "blocks.1.attn.out"]
    for rank in range(WORLD):
        result = run["result"](rank, "tensor_parallel_attn_only")
        assert (result["logits"] - expected).abs().max() < 1e-12
        assert result["comm"] == predicted(plan, tokens.shape[0])


def test_tensor_parallel_cache_gathers_and_gradients_equal_one_process(run):
    tokens = run["job"]["tokens"]
    module = single_process_gpt2(run)
    _, cache = run_with_cache(module, tokens, names=[CACHED])
    loss = module(tokens).square().mean()
    loss.backward()
    for rank in range(WORLD):
        result = run["result"](rank, "tensor_parallel")
        # pattern[batch, h, p, s]: sharded by head
        assert result["cache_placement"] == "(Shard(dim=1),)"
        assert (result["cache"] - cache[CACHED]).abs().max() < 1e-12
        assert abs(result["loss"] - loss.detach()) < 1e-12
        for name, param in module.named_parameters():
            assert (result["grads"][name] - param.grad).abs().max() < 1e-10, name


def test_fsdp2_training_step_equals_one_process(run):
    job = run["job"]
    module = single_process_gpt2(run)
    loss = next_token_loss(module, job["tokens"])
    loss.backward()
    with torch.no_grad():
        after = {name: p - job["lr"] * p.grad for name, p in module.named_parameters()}
    total = sum(p.numel() for p in module.parameters())
    for rank in range(WORLD):
        result = run["result"](rank, "fsdp_step")
        assert abs(result["loss"] - loss.detach()) < 1e-10
        for name, param in module.named_parameters():
            assert (result["grads"][name] - param.grad).abs().max() < 1e-10, name
            assert (result["after"][name] - after[name]).abs().max() < 1e-10, name
        assert result["local_numel"] < total  # each rank holds only its shard
    # Each block instance the generated module calls is a unit, then the root.
    assert run["result"](0, "fsdp_step")["units"] == ("blocks.0", "blocks.1", "ln_final", "")


def test_sliced_contraction_equals_the_unsliced_value_within_the_budget(run):
    tensors = run["job"]["tensors"]
    expected = torch.einsum("axb,byc,cxd,dye,ezf,fza->", *(tensors[n] for n in "ABCDEF"))
    for rank in range(WORLD):
        result = run["result"](rank, "sliced")
        assert result["nslices"] >= WORLD
        assert result["slice_bytes"] <= SLICE_BUDGET < result["unsliced_bytes"]
        assert abs(result["value"] - expected) < 1e-10 * expected.abs()


def test_fsdp2_wraps_each_called_block_then_the_root(run):
    module = structured_model()
    loss = next_token_loss(module, run["job"]["tokens"] % 16)
    loss.backward()
    for rank in range(WORLD):
        result = run["result"](rank, "fsdp_blocks")
        assert result["units"] == ("blocks.0", "blocks.1", "blocks.2", "")
        assert abs(result["loss"] - loss.detach()) < 1e-10
        for name, param in module.named_parameters():
            assert (result["grads"][name] - param.grad).abs().max() < 1e-10, name


def test_block_units_come_from_the_program_and_skip_param_containers():
    program = gpt2_program()
    compiled = program.module()
    assert tdist._block_paths(compiled, program) == ["blocks.0", "blocks.1", "ln_final"]
    # The generated module calls each block instance as a submodule (a ModuleList entry,
    # or an attribute): each is an FSDP unit.
    assert all(tdist._is_called_submodule(compiled, p) for p in ("blocks.0", "ln_final"))
    assert not tdist._is_called_submodule(compiled, "no.such.path")
    structured = structured_model()
    assert tdist._block_paths(structured, None) == ["blocks.0", "blocks.1", "blocks.2"]
    assert tdist._is_called_submodule(structured, "blocks.1")


def test_misuse_of_parallelize_is_a_clear_error(run):
    found = run["result"](0, "mistakes")
    assert "parallelize needs the program the model was compiled from" in found["no program"]
    assert "the plan is for 4 ranks, the mesh has 2" in found["plan for 4"]
    assert "applies layernorm[m] over the sharded leg m: Model" in found["layernorm"]
