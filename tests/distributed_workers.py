"""What each of the 2 gloo processes of tests/test_distributed.py runs.

One launch runs every scenario (process start-up and imports dominate the time); each
rank saves what it measured with torch.save under OUT/rank{r}/, and the test process
compares that with its own single-process oracles (Hugging Face, the unsharded module,
an unsliced einsum). Nothing here asserts: a worker that fails raises, and spawn reports
it to the test.
"""
from __future__ import annotations

import datetime
import importlib.util
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tndsl
from tndsl.parallel import distributed as tdist
from tndsl.interp.hooks import run_with_cache
from tndsl.passes.shard import shard_plan
from tndsl.parallel.slicing import contract_sliced, plan_slices
from tndsl.models import load_hf
from tndsl.models.weights import load_hf_gpt2, load_state

ROOT = Path(__file__).resolve().parent.parent
GPT2_DIMS = {"Context": 16, "Vocab": 64, "Model": 32, "Heads": 4, "Layers": 2}
CACHED = "blocks.1.attn.pattern"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, job: dict) -> None:
    mp.spawn(_entry, args=(world, free_port(), job), nprocs=world, join=True)


def _entry(rank: int, world: int, port: int, job: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh("cpu", (world,))
        out = Path(job["out"]) / f"rank{rank}"
        out.mkdir(parents=True, exist_ok=True)
        for scenario in job["scenarios"]:
            result = SCENARIOS[scenario](rank, world, mesh, job)
            torch.save(result, out / f"{scenario}.pt")
        dist.barrier()  # no rank tears down while another still communicates
    finally:
        dist.destroy_process_group()


def gpt2_program():
    return tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims=GPT2_DIMS)


def gpt2_module(program, checkpoint):
    module = program.module()
    load_state(module, load_hf_gpt2(checkpoint))
    return module.double()


def tensor_parallel(rank, world, mesh, job):
    program = gpt2_program()
    model = tdist.parallelize(gpt2_module(program, job["checkpoint"]), mesh,
                              ("Heads", "Hidden"), program=program)
    tokens = job["tokens"]
    with torch.no_grad(), tdist.CommunicationLog() as log:
        logits = model(tokens)
    _, cache = run_with_cache(model, tokens, names=[CACHED])
    # The backward through the sharded model: gradients of every param, made whole.
    loss = model(tokens).square().mean()
    loss.backward()
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    w_q = model.get_parameter("blocks.0.attn.W_Q")
    return {"logits": logits, "comm": log.records, "cache": tdist.gather(cache)[CACHED],
            "cache_placement": str(cache[CACHED].placements),
            "w_q_local_shape": tuple(w_q.to_local().shape),
            "w_q_placement": str(w_q.placements), "loss": loss.detach(), "grads": grads,
            "local": local_params(model)}


def local_params(model):
    """param path -> (its placements, the shape of this rank's slice)"""
    return {name: (str(p.placements), tuple(p.to_local().shape))
            for name, p in model.named_parameters()}


def compiled_class(path, name):
    """A class from a file `tndsl compile` wrote, imported as any Python file."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def compiled_parallelize(rank, world, mesh, job):
    # The file of `tndsl compile --shard Heads,Hidden`: its own parallelize method.
    model = compiled_class(job["compiled"], "Gpt2Small")()
    load_state(model, load_hf_gpt2(job["checkpoint"]))
    model = model.double().parallelize(mesh)
    tokens = job["tokens"]
    with torch.no_grad(), tdist.CommunicationLog() as log:
        logits = model(tokens)
    loss = model(tokens).square().mean()
    loss.backward()
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    # A mesh the split dims do not divide is refused at run time.
    small = compiled_class(job["compiled_odd"], "AttnOnly2l")()
    try:
        small.parallelize(mesh)
        refused = "no error"
    except ValueError as e:
        refused = str(e)
    return {"logits": logits, "comm": log.records, "local": local_params(model),
            "loss": loss.detach(), "grads": grads, "refused": refused}


def tensor_parallel_vocab(rank, world, mesh, job):
    # Vocab too: the embedding lookup is row-parallel (a partial sum per rank), the
    # unembedding column-parallel (logits sharded, gathered at the end).
    program = gpt2_program()
    model = tdist.parallelize(gpt2_module(program, job["checkpoint"]), mesh,
                              ("Heads", "Hidden", "Vocab"), program=program)
    with torch.no_grad(), tdist.CommunicationLog() as log:
        logits = model(job["tokens"])
    return {"logits": logits, "comm": log.records}


def fsdp_step(rank, world, mesh, job):
    program = gpt2_program()
    model = tdist.fully_shard(gpt2_module(program, job["checkpoint"]), mesh, program=program)
    tokens = job["tokens"][rank::world]  # data parallel: each rank its share of the batch
    optimiser = torch.optim.SGD(model.parameters(), lr=job["lr"])
    loss = next_token_loss(model, tokens)
    loss.backward()
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    optimiser.step()
    after = {name: p.detach().full_tensor() for name, p in model.named_parameters()}
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return {"loss": mean_loss / world, "grads": grads, "after": after,
            "units": model.tndsl_fsdp_units,
            "local_numel": sum(p.to_local().numel() for p in model.parameters())}


def next_token_loss(model, tokens):
    logits = model(tokens)[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             tokens[:, 1:].reshape(-1))


def sliced(rank, world, mesh, job):
    program = tndsl.parse(job["network"], "ring.tn")
    plan = plan_slices(program, "total", memory_budget=job["budget"])
    value = contract_sliced(plan, job["tensors"])
    return {"value": value, "nslices": plan.nslices, "slice_bytes": plan.slice_bytes,
            "unsliced_bytes": plan.unsliced_largest * plan.bytes_per_entry}


ATTN_ONLY_DIMS = {"Context": 8, "Vocab": 40, "Model": 16, "Heads": 4}


def attn_only():
    """The attention-only model with its params from seed 2, and a batch of tokens."""
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn", dims=ATTN_ONLY_DIMS)
    torch.manual_seed(2)
    tokens = torch.randint(0, ATTN_ONLY_DIMS["Vocab"], (3, ATTN_ONLY_DIMS["Context"]))
    return program, program.module(["logits"]).double(), tokens


def tensor_parallel_attn_only(rank, world, mesh, job):
    # Each head's output is summed over heads inside the block (`head_out * ones[h]`):
    # the reduction belongs there, not at the logits the partial sum would reach.
    program, module, tokens = attn_only()
    model = tdist.parallelize(module, mesh, ("Heads",), program=program)
    with torch.no_grad(), tdist.CommunicationLog() as log:
        logits = model(tokens)
    return {"logits": logits, "comm": log.records}


def tensor_parallel_llama(rank, world, mesh, job):
    # Grouped-query attention: sharding Heads shards KVHeads with it (through `group`).
    model = tndsl.from_pretrained(job["llama"], torch.float64)
    model = tdist.parallelize(model, mesh, ("Heads", "Hidden"), program=model.tndsl_program)
    with torch.no_grad(), tdist.CommunicationLog() as log:
        logits = model(job["llama_tokens"])
    result = {"logits": logits, "comm": log.records, "local": local_params(model)}
    # The same through the method `tndsl compile --shard` writes into the file.
    program, state = load_hf(job["llama"])
    path = Path(job["out"]) / f"rank{rank}" / "llama_tp.py"
    generated = program.compile(shard=("Heads", "Hidden"))
    path.write_text(generated.source)
    compiled = compiled_class(path, generated.class_name)()
    load_state(compiled, state)
    compiled = compiled.double().parallelize(mesh)
    with torch.no_grad(), tdist.CommunicationLog() as log:
        result["compiled_logits"] = compiled(job["llama_tokens"])
    result["compiled_comm"] = log.records
    result["compiled_local"] = local_params(compiled)
    return result


class Block(torch.nn.Module):
    """A block with its own forward, as a structured compiled module has them."""

    def __init__(self, width):
        super().__init__()
        self.W_in = torch.nn.Parameter(torch.randn(width, 2 * width) / width ** 0.5)
        self.W_out = torch.nn.Parameter(torch.randn(2 * width, width) / width ** 0.5)

    def forward(self, x):
        return x + torch.tanh(x @ self.W_in) @ self.W_out


class Structured(torch.nn.Module):
    def __init__(self, width=8, layers=3):
        super().__init__()
        self.W_E = torch.nn.Parameter(torch.randn(16, width))
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(layers))
        self.W_U = torch.nn.Parameter(torch.randn(width, 16) / width ** 0.5)

    def forward(self, tokens):
        x = self.W_E[tokens]
        for block in self.blocks:
            x = block(x)
        return x @ self.W_U


def structured_model():
    torch.manual_seed(3)
    return Structured().double()


def fsdp_blocks(rank, world, mesh, job):
    model = tdist.fully_shard(structured_model(), mesh)
    tokens = job["tokens"][rank::world] % 16
    loss = next_token_loss(model, tokens)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return {"units": model.tndsl_fsdp_units, "loss": mean_loss / world,
            "grads": {n: p.grad.full_tensor() for n, p in model.named_parameters()}}


def mistakes(rank, world, mesh, job):
    """Messages of the TnErrors parallelize raises for misuse."""
    program = gpt2_program()
    found = {}
    anonymous = program.module()    # a module that does not say which program it came from
    del anonymous.tndsl_program
    attempts = {
        "no program": lambda: tdist.parallelize(anonymous, mesh, ("Heads",)),
        "plan for 4": lambda: tdist.parallelize(
            program.module(), mesh, plan=shard_plan(program, ("Heads",), 4)),
        "layernorm": lambda: tdist.parallelize(program.module(), mesh, ("Model",),
                                               program=program),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            found[name] = "no error"
        except tndsl.TnError as e:
            found[name] = str(e)
    return found


SCENARIOS = {"tensor_parallel": tensor_parallel, "fsdp_step": fsdp_step, "sliced": sliced,
             "fsdp_blocks": fsdp_blocks, "mistakes": mistakes,
             "tensor_parallel_attn_only": tensor_parallel_attn_only,
             "tensor_parallel_vocab": tensor_parallel_vocab,
             "tensor_parallel_llama": tensor_parallel_llama,
             "compiled_parallelize": compiled_parallelize}
