"""What each of the 2 gloo processes of tests/test_distributed.py runs.

One launch runs every scenario (process start-up and imports dominate the time); each
rank saves what it measured with torch.save under OUT/rank{r}/, and the test process
compares that with its own single-process oracles (Hugging Face, the unsharded module,
an unsliced einsum). Nothing here asserts: a worker that fails raises, and spawn reports
it to the test.
"""
from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tndsl
from tndsl import distributed as tdist
from tndsl.hooks import run_with_cache
from tndsl.slicing import contract_sliced, plan_slices
from tndsl.weights import load_hf_gpt2, load_state

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
            "w_q_placement": str(w_q.placements), "loss": loss.detach(), "grads": grads}


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


SCENARIOS = {"tensor_parallel": tensor_parallel, "fsdp_step": fsdp_step, "sliced": sliced}
