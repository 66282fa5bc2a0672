"""Tensor parallelism, FSDP2 and sliced contraction on 1 vs 2 ranks, in one run.

    python bench/distributed.py [--layers 4] [--model 256] [--context 128] [--batch 4]
                                [--repeat 5] [--device cpu|cuda]

Each rank runs with one thread (2 ranks = the 2 cores; 1 rank = the baseline). Modes:
tensor-parallel forward of GPT-2 (`tndsl.parallel.distributed.parallelize`), the same through
the `parallelize(mesh)` method `tndsl compile --shard` writes into the file, a Llama
with grouped-query attention (8 query heads over 2 KV heads, sharded together), an
FSDP2 training step, and a sliced contraction. Per rank and mode: median forward (TP)
or training-step (FSDP2) time, the params each rank holds, its peak memory while it
runs them and the growth over the memory in use when they began, i.e. the working
memory on top of the built model (CUDA: max allocated; CPU: peak resident set, reset
through /proc/self/clear_refs, which includes the ~0.3 GB of torch itself), and the bytes of
collectives measured against the plan's prediction (`ShardPlan.total_payload` × batch).
On CUDA with one GPU only the single-rank baseline runs. Prints a table with the
2-rank / 1-rank ratios.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
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
from tndsl.lang import dims as dimmod  # noqa: E402
from tndsl.parallel import distributed as tdist  # noqa: E402
from tndsl.passes.shard import shard_plan  # noqa: E402
from tndsl.parallel.slicing import contract_sliced, plan_slices  # noqa: E402
from timing import median_seconds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from networks import ring_of_six  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE = EXAMPLES / "gpt2_small.tn"
RING = ring_of_six(bond=64, phys=8)
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
        if cuda:  # growth over what was allocated when the mode began
            peak = torch.cuda.max_memory_allocated()
            grown = peak - _RSS_AT_RESET[0]
            torch.cuda.reset_peak_memory_stats()
            _RSS_AT_RESET[0] = torch.cuda.memory_allocated()
            return peak, grown
        return _peak_rss_and_reset()

    def tensor_parallel(what, model, program, tokens, sizes=None):
        peak_and_reset()  # the model is built: what follows is the forwards' working memory
        with torch.no_grad():
            with tdist.CommunicationLog() as log:
                model(tokens)
            seconds = median_seconds(lambda: (model(tokens), sync()), options["repeat"])
        plan = shard_plan(program, ("Heads", "Hidden"), world)
        payload = dimmod.evaluate(plan.total_payload, {**plan.sizes, **(sizes or {})})
        rows[what] = {
            "seconds": seconds, "params": _local_bytes(model), "peak": peak_and_reset(),
            "measured": log.total_bytes,
            # a 1-rank mesh has no partial sums: DTensor (rightly) communicates nothing
            "predicted": int(payload) * tokens.shape[0] * (world > 1)}

    torch.manual_seed(0)
    model = tdist.parallelize(program.module().to(device), mesh, ("Heads", "Hidden"),
                              program=program)
    tensor_parallel("tensor parallel forward", model, program, tokens)
    del model

    # the same plan through the method `tndsl compile --shard` writes into the file
    compiled = Path(out) / f"gpt2_tp_rank{rank}.py"
    compiled.write_text(program.compile(shard=("Heads", "Hidden"), ranks=world).source)
    spec = importlib.util.spec_from_file_location(compiled.stem, compiled)
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    torch.manual_seed(0)
    model = generated.Gpt2Small().to(device).parallelize(mesh)
    tensor_parallel("tensor parallel forward, compiled --shard", model, program, tokens)
    del model

    # grouped-query attention: KV heads sharded with their query heads
    llama = tndsl.load(EXAMPLES / "llama.tn", dims={
        "Layers": options["layers"], "Model": options["model"], "Heads": 8, "KVHeads": 2,
        "Head": options["model"] // 8, "Hidden": options["model"] * 8 // 3 // 2 * 2,
        "Vocab": dims["Vocab"]})
    torch.manual_seed(0)
    model = tdist.parallelize(llama.module().to(device), mesh, ("Heads", "Hidden"),
                              program=llama)
    tensor_parallel("tensor parallel forward, Llama GQA 8/2 heads", model, llama, tokens,
                    {"Context": dims["Context"]})
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

    peak_and_reset()
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
    peak_and_reset()
    rows[f"sliced contraction ({slices.nslices} slices)"] = {
        "seconds": median_seconds(lambda: (contract_sliced(slices, tensors), sync()),
                                  options["repeat"]),
        "params": sum(t.numel() * t.element_size() for t in tensors.values()),
        "peak": peak_and_reset(), "slice_bytes": slices.slice_bytes,
        "unsliced_bytes": slices.unsliced_largest * slices.bytes_per_entry}
    torch.save(rows, Path(out) / f"world{world}_rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


_RSS_AT_RESET = [0]  # resident (CUDA: allocated) bytes when the current mode began


def _peak_rss_and_reset() -> tuple[int, int]:
    """(peak resident set of this process since the last call, its growth over the
    resident set then). Linux: VmHWM, reset to the current VmRSS by writing 5 to
    /proc/self/clear_refs; elsewhere the lifetime peak (ru_maxrss) and no growth."""
    try:
        with open("/proc/self/status") as status:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status
                      if line.startswith(("VmHWM:", "VmRSS:"))}
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 0
    peak, grown = fields["VmHWM"], fields["VmHWM"] - _RSS_AT_RESET[0]
    _RSS_AT_RESET[0] = fields["VmRSS"]
    return peak, grown


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
          f"{options['device']}, 1 thread per rank; Llama: 8 query heads over 2 KV heads, "
          f"hidden {options['model'] * 8 // 3 // 2 * 2}")
    print("| what | ranks | rank | median s | ratio to 1 rank | params held "
          "| peak memory (+ growth in the mode) | collective bytes measured / predicted |")
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
                      f"{_mb(row['peak'][0])} (+{_mb(row['peak'][1])}) | {comm} |")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


if __name__ == "__main__":
    main()
