"""Tensor parallelism, FSDP2 and sliced contraction on 1 vs 2 ranks, in one run.

    python bench/distributed.py [--layers 4] [--model 256] [--context 128] [--batch 4]
                                [--repeat 5] [--device cpu|cuda]

Each rank runs with one thread (2 ranks = the 2 cores; 1 rank = the baseline). Per rank
and mode: median forward (TP) or training-step (FSDP2) time, the params each rank holds,
its peak memory (CUDA: max allocated; CPU: peak resident set of the process, which
includes the ~0.3 GB of torch itself), and the bytes of all-reduces measured against the
plan's prediction (`ShardPlan.total_payload` × batch). On CUDA with one GPU only the
single-rank baseline runs. Prints a table with the 2-rank / 1-rank ratios.
"""
from __future__ import annotations

import argparse
import datetime
import os
import resource
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tndsl  # noqa: E402
from tndsl import distributed as tdist  # noqa: E402
from tndsl.passes.shard import shard_plan  # noqa: E402
from tndsl.slicing import contract_sliced, plan_slices  # noqa: E402
from timing import median_seconds  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpt2_small.tn"
RING = """\
dim Bond = 64
dim Phys = 8
param A[a: Bond, x: Phys, b: Bond]
param B[b: Bond, y: Phys, c: Bond]
param C[c: Bond, x: Phys, d: Bond]
param D[d: Bond, y: Phys, e: Bond]
param E[e: Bond, z: Phys, f: Bond]
param F[f: Bond, z: Phys, a: Bond]
total[] = A[a, x, b] * B[b, y, c] * C[c, x, d] * D[d, y, e] * E[e, z, f] * F[f, z, a]
"""
SLICE_BUDGET = 1024 * 1024  # bytes per slice; far less than the unsliced ring needs


def worker(rank: int, world: int, port: int, options: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cuda = options["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh(options["device"], (world,))
    device = torch.device(options["device"], rank) if cuda else torch.device("cpu")
    dims = {"Layers": options["layers"], "Model": options["model"], "Heads": 8,
            "Context": options["context"], "Vocab": 2048}
    program = tndsl.load(EXAMPLE, dims=dims)
    tokens = torch.randint(0, dims["Vocab"], (options["batch"], dims["Context"]),
                           generator=torch.Generator().manual_seed(0)).to(device)
    rows = {}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def peak_and_reset():
        if cuda:
            peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # tensor parallel forward
    torch.manual_seed(0)
    model = tdist.parallelize(program.module().to(device), mesh, ("Heads", "Hidden"),
                              program=program)
    with torch.no_grad():
        with tdist.CommunicationLog() as log:
            model(tokens)
        seconds = median_seconds(lambda: (model(tokens), sync()), options["repeat"])
    plan = shard_plan(program, ("Heads", "Hidden"), world)
    rows["tensor parallel forward"] = {
        "seconds": seconds, "params": _local_bytes(model), "peak": peak_and_reset(),
        "measured": log.total_bytes,
        # a 1-rank mesh has no partial sums: DTensor (rightly) communicates nothing
        "predicted": int(plan.value(plan.total_payload)) * options["batch"] * (world > 1)}
    del model

    # FSDP2 training step (data parallel: each rank its share of the batch)
    torch.manual_seed(0)
    model = tdist.fully_shard(program.module().to(device), mesh, program=program)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    mine = tokens[rank::world]

    def step():
        logits = model(mine)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 mine[:, 1:].reshape(-1))
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        sync()

    step()
    rows["FSDP2 training step"] = {"seconds": median_seconds(step, options["repeat"]),
                                   "params": _local_bytes(model), "peak": peak_and_reset()}
    del model, optimiser

    # sliced contraction
    ring = tndsl.parse(RING, "ring.tn")
    generator = torch.Generator().manual_seed(0)
    tensors = {t.name: torch.randn(*[ring.sizes[l.dim] for l in t.legs], generator=generator,
                                   dtype=torch.float64).to(device) for t in ring.params}
    slices = plan_slices(ring, "total", memory_budget=SLICE_BUDGET)
    rows[f"sliced contraction ({slices.nslices} slices)"] = {
        "seconds": median_seconds(lambda: (contract_sliced(slices, tensors), sync()),
                                  options["repeat"]),
        "params": sum(t.numel() * t.element_size() for t in tensors.values()),
        "peak": peak_and_reset(), "slice_bytes": slices.slice_bytes,
        "unsliced_bytes": slices.unsliced_largest * slices.bytes_per_entry}
    torch.save(rows, Path(out) / f"world{world}_rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _local_bytes(model) -> int:
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel()
               * p.element_size() for p in model.parameters())


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--model", type=int, default=256)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    options = vars(parser.parse_args())
    worlds = [1, 2]
    if options["device"] == "cuda":
        worlds = [w for w in worlds if w <= torch.cuda.device_count()]
    out = tempfile.mkdtemp()
    results = {}
    for world in worlds:
        mp.spawn(worker, args=(world, _port(), options, out), nprocs=world, join=True)
        results[world] = [torch.load(Path(out) / f"world{world}_rank{r}.pt", weights_only=True)
                          for r in range(world)]
    print(f"GPT-2 shape: {options['layers']} layers, model {options['model']}, 8 heads, "
          f"context {options['context']}, batch {options['batch']}, vocab 2048; "
          f"{options['device']}, 1 thread per rank")
    print("| what | ranks | rank | median s | ratio to 1 rank | params held | peak memory "
          "| all-reduce bytes measured / predicted |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for what in results[worlds[0]][0]:
        base = results[1][0][what]["seconds"]
        for world in worlds:
            for rank, rows in enumerate(results[world]):
                row = rows[what]
                comm = (f"{row['measured']:,} / {row['predicted']:,}"
                        if "measured" in row else
                        f"slice {row['slice_bytes']:,} B ≤ budget {SLICE_BUDGET:,} B "
                        f"(unsliced {row['unsliced_bytes']:,} B)" if "slice_bytes" in row
                        else "")
                print(f"| {what} | {world} | {rank} | {row['seconds']:.4f} | "
                      f"{row['seconds'] / base:.2f} | {_mb(row['params'])} | "
                      f"{_mb(row['peak'])} | {comm} |")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


if __name__ == "__main__":
    main()
