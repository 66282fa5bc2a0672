"""GPT-2-small-shaped forward pass and training step: the compiled .tn model against
Hugging Face's GPT2LMHeadModel (sdpa and eager attention) and a hand-written SDPA model,
all with the same weights, interleaved in one run; with --llama, a Llama-shaped row
(GQA 12/4) against LlamaForCausalLM, through from_pretrained; --gemma2, a Gemma-2-shaped
row (soft-capped attention) against Gemma2ForCausalLM; --moe, a small Mixtral (expert
dispatch) against MixtralForCausalLM and the same model computing every expert.

    python bench/forward.py [--layers 12] [--repeat 5] [--threads 2] [--rows 4x128,1x512,1x1024]
                            [--compile | --steady] [--memory] [--matvec] [--no-fuse NAME]
                            [--fuse NAME] [--baseline-tree DIR] [--plain-linear]
                            [--llama] [--gemma2] [--moe] [--moe-block] [--experts N]
                            [--only-families]

Rows: forward under no_grad at each batch x context, and one training step (forward,
loss, backward) at the first size; then what the token-id check (ids in [0, Vocab), one
min and one max per call) costs of each compiled forward. Ratio = contender / compiled (above 1: the compiled
model is faster). --compile: torch.compile first-call times (cold and warm Inductor
cache, fresh processes) and steady state of the compiled model and the hand-written
one; --steady: the steady state alone. --memory: peak memory above the weights of one 1 x 1024 forward (each contender
in a fresh process, from its peak resident size). --matvec: per-call time of a
compiled 64 x 64 matrix-vector product against `W @ x`, a hand-written nn.Module, the
minimal one and an empty module call.
--profile: torch.profiler's top operators instead of the table (with --llama, of the
Llama-shaped pair). --baseline-tree DIR: add the model that another tndsl checkout (an
older commit: `git worktree add /tmp/old main`) compiles from the same .tn file, with the
same weights, to the table and to the torch.compile steady state: old and new code in
one run. --plain-linear: add the compiled model with `_linear` always F.linear (no
oneDNN kernel, as TNDSL_AUTOTUNE=0 gives). The header names the CPU (`lscpu`'s model
name).
Needs `transformers` (the test extra).
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import tndsl
from tndsl.passes.fusion import resolve
from tndsl.models.weights import load_hf_gpt2, load_state

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpt2_small.tn"


class HandWritten(nn.Module):
    """GPT-2 as one would write it in torch (fused QKV, F.layer_norm, SDPA), reading the
    same TransformerLens-layout weights."""

    def __init__(self, w, layers, heads):
        super().__init__()
        self.layers, self.heads = layers, heads
        model = w["embed.W_E"].shape[1]
        self.params = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v.clone())
                                        for k, v in w.items()})
        for l in range(layers):  # fused QKV weight, as a (3 * model, model) linear
            b = f"blocks__{l}__attn__"
            qkv = torch.cat([w[f"blocks.{l}.attn.W_{k}"].permute(0, 2, 1).reshape(model, model)
                             for k in "QKV"])
            self.params[b + "W_QKV"] = nn.Parameter(qkv)
            self.params[b + "b_QKV"] = nn.Parameter(torch.cat(
                [w[f"blocks.{l}.attn.b_{k}"].reshape(model) for k in "QKV"]))
            self.params[b + "W_O_t"] = nn.Parameter(
                w[f"blocks.{l}.attn.W_O"].reshape(model, model).t().contiguous())
            self.params[f"blocks__{l}__mlp__W_in_t"] = nn.Parameter(
                w[f"blocks.{l}.mlp.W_in"].t().contiguous())
            self.params[f"blocks__{l}__mlp__W_out_t"] = nn.Parameter(
                w[f"blocks.{l}.mlp.W_out"].t().contiguous())
        self.params["unembed__W_U_t"] = nn.Parameter(w["unembed.W_U"].t().contiguous())

    def forward(self, tokens):
        p = self.params
        n = tokens.shape[-1]
        resid = p["embed__W_E"][tokens] + p["pos_embed__W_pos"][:n]
        model = resid.shape[-1]
        for l in range(self.layers):
            b = f"blocks__{l}__"
            x = F.layer_norm(resid, (model,), p[b + "ln1__w"], p[b + "ln1__b"], 1e-5)
            qkv = F.linear(x, p[b + "attn__W_QKV"], p[b + "attn__b_QKV"])
            q, k, v = qkv.unflatten(-1, (3, self.heads, model // self.heads)).unbind(-3)
            z = F.scaled_dot_product_attention(q.transpose(-2, -3), k.transpose(-2, -3),
                                               v.transpose(-2, -3), is_causal=True)
            z = z.transpose(-2, -3).flatten(-2)
            resid = resid + F.linear(z, p[b + "attn__W_O_t"], p[b + "attn__b_O"])
            x = F.layer_norm(resid, (model,), p[b + "ln2__w"], p[b + "ln2__b"], 1e-5)
            h = F.gelu(F.linear(x, p[b + "mlp__W_in_t"], p[b + "mlp__b_in"]), approximate="tanh")
            resid = resid + F.linear(h, p[b + "mlp__W_out_t"], p[b + "mlp__b_out"])
        x = F.layer_norm(resid, (model,), p["ln_final__w"], p["ln_final__b"], 1e-5)
        return F.linear(x, p["unembed__W_U_t"], p["unembed__b_U"])


def median_times(fns: dict, repeat: int) -> dict[str, float]:
    """Round-robin, in rotating order, so drift in the machine's speed hits every
    contender alike; the median of each."""
    for fn in fns.values():
        fn()  # warm up
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_name() -> str:
    """The CPU's model name, as `lscpu` gives it (Linux), else the platform's word."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def baseline_module(tree: str, layers: int, context: int):
    """The module the tndsl checkout at `tree` compiles from the example (its own
    `tndsl compile`, in a subprocess), built from the file it writes."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "baseline.py"
        subprocess.run([sys.executable, "-m", "tndsl", "compile", str(EXAMPLE), "--dim",
                        f"Context={context}", "--dim", f"Layers={layers}", "-o", str(out)],
                       env={**os.environ, "PYTHONPATH": str(Path(tree).resolve())},
                       check=True, capture_output=True)
        source = out.read_text()
    # The root is the last `nn.Module` class (helpers such as KVCache may follow it).
    root = [n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef)
            and any(ast.unparse(b) == "nn.Module" for b in n.bases)][-1]
    namespace: dict = {"__name__": "tndsl_baseline"}
    exec(compile(source, "<baseline>", "exec"), namespace)  # tndsl's generated code
    return namespace[root]()


def build(layers: int, context: int, device: str = "cpu", no_fuse=(), fuse=(),
          baseline_tree=None, plain_linear=False, **options):
    import transformers
    torch.manual_seed(0)
    models = {}
    for attention in ("sdpa", "eager"):
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=layers, n_positions=context,
                                         attn_implementation=attention)
        models[f"HF {attention}"] = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        models["HF sdpa"].save_pretrained(folder)
        state = load_hf_gpt2(folder)
    program = tndsl.load(EXAMPLE, dims={"Context": context, "Layers": layers})
    compiled = program.module(**options)
    load_state(compiled, state)
    variants = {}
    for name in no_fuse:  # the compiled model without one pass: what that pass is worth
        variants[f"tndsl --no-fuse {name}"] = program.module(**options, no_fuse=[name])
        load_state(variants[f"tndsl --no-fuse {name}"], state)
    for name in fuse:  # with an opt-in pass added
        variants[f"tndsl --fuse {name}"] = program.module(
            **options, fuse=sorted(resolve(True) | {name}))
        load_state(variants[f"tndsl --fuse {name}"], state)
    if plain_linear:  # its own generated namespace: only its `_linear` loses the kernel
        variants["tndsl F.linear"] = program.module(**options)
        type(variants["tndsl F.linear"]).forward.__globals__["_onednn_linear"] = None
        load_state(variants["tndsl F.linear"], state)
    if baseline_tree:
        variants["baseline"] = baseline_module(baseline_tree, layers, context)
        load_state(variants["baseline"], state)
    models = {"tndsl compiled": compiled.eval(), **models,
              "hand-written SDPA": HandWritten(state, layers, 12).eval(),
              **{k: m.eval() for k, m in variants.items()}}
    return {k: m.to(device) for k, m in models.items()}


def _logits(model, tokens):
    out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


def table(args) -> tuple[list[tuple], nn.Module]:
    """The timed rows, and the compiled model they timed."""
    rows = [tuple(int(x) for x in r.split("x")) for r in args.rows.split(",")]
    longest = max(c for _, c in rows)
    models = build(args.layers, longest, args.device, args.no_fuse, args.fuse,
                   args.baseline_tree, args.plain_linear)
    results = []
    for batch, context in rows:
        tokens = torch.randint(0, 50257, (batch, context), device=args.device)
        with torch.no_grad():
            reference = _logits(models["HF eager"], tokens)
            for name, model in models.items():
                assert (_logits(model, tokens) - reference).abs().max() < 1e-3, name
        fns = {name: (lambda m=model: _no_grad(m, tokens)) for name, model in models.items()}
        results.append((f"forward {batch}x{context}", median_times(fns, args.repeat)))
    batch, context = rows[0]
    tokens = torch.randint(0, 50257, (batch, context), device=args.device)
    for model in models.values():
        model.train()
    fns = {name: (lambda m=model: _step(m, tokens)) for name, model in models.items()}
    results.append((f"training step {batch}x{context}", median_times(fns, args.repeat)))
    return results, models["tndsl compiled"]


def id_check_cost(args, results, compiled) -> list[str]:
    """The token-id check every compiled forward runs (the generated module's own
    `_check_ids`: one min and one max of the ids), timed alone at each forward row, as a
    share of the compiled forward's median time from the same run."""
    check_ids = compiled.forward.__globals__["_check_ids"]
    lines = []
    for row, times in results:
        if not row.startswith("forward "):
            continue
        batch, context = (int(x) for x in row.split()[1].split("x"))
        tokens = torch.randint(0, 50257, (batch, context), device=args.device)
        calls = 200
        seconds = median_times({"check": lambda: [check_ids(tokens, "tokens", 50257)
                                                  for _ in range(calls)]},
                               args.repeat)["check"] / calls
        lines.append(f"| {row} | {seconds * 1e6:.1f} us | "
                     f"{100 * seconds / times['tndsl compiled']:.3f}% |")
    return lines


def _no_grad(model, tokens):
    with torch.no_grad():
        _logits(model, tokens)


def _step(model, tokens):
    model.zero_grad(set_to_none=True)
    logits = _logits(model, tokens)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()


def compile_child(name: str, args) -> None:
    """One contender's torch.compile first call at 4 x 128, in a fresh process using the
    Inductor cache folder the parent set (empty, or filled by this contender alone)."""
    models = build(args.layers, 128, args.device)
    tokens = torch.randint(0, 50257, (4, 128), device=args.device)
    compiled = torch.compile(models[name])
    start = time.perf_counter()
    _no_grad(compiled, tokens)
    first = time.perf_counter() - start
    print(json.dumps({"first": first}))


def compile_times(args) -> dict:
    """torch.compile times of each contender, alternating, `--compile-runs` rounds; the
    medians. Each round runs a contender twice in fresh processes sharing one new
    Inductor cache folder: the first call of the first process compiles from nothing
    (`cold`: a cache warm from the other contender or an earlier run would serve kernels
    it has seen and hide the compile time); the second process's first call finds its
    own graphs and kernels cached, as a rerun of the same script does (`warm`: tracing,
    guards and cache lookups). Steady state: both compiled models in this process,
    interleaved (`compiled_steady`)."""
    import os
    runs = {name: [] for name in ("tndsl compiled", "hand-written SDPA")}
    for _ in range(args.compile_runs):
        for name in runs:
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache,
                       "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
                cold, warm = (json.loads(subprocess.run(
                    [sys.executable, __file__, "--compile-child", name, "--layers",
                     str(args.layers), "--threads", str(args.threads), "--repeat",
                     str(args.repeat), "--device", args.device],
                    capture_output=True, text=True, check=True, env=env
                ).stdout.strip().splitlines()[-1]) for _ in range(2))
            runs[name].append({"cold": cold["first"], "warm": warm["first"]})
    steady = compiled_steady(args)
    times = {name: {key: statistics.median(r[key] for r in got) for key in ("cold", "warm")}
             | {"steady": steady[name], "runs": got}
             for name, got in runs.items()}
    if "baseline" in steady:  # steady state only: the old tree's first call is not at issue
        times["baseline"] = {"cold": math.nan, "warm": math.nan, "steady": steady["baseline"],
                             "runs": []}
    return times


def compiled_steady(args) -> dict[str, float]:
    """Steady-state time of each contender under torch.compile, both compiled in one
    process and timed round-robin (at least 9 rounds): separate processes run minutes
    apart, and this machine's speed drifts by more than the difference measured."""
    models = build(args.layers, 128, args.device, baseline_tree=args.baseline_tree)
    tokens = torch.randint(0, 50257, (4, 128), device=args.device)
    names = ("tndsl compiled", "hand-written SDPA") + (("baseline",) if args.baseline_tree else ())
    compiled = {name: torch.compile(models[name]) for name in names}
    return median_times({name: (lambda m=m: _no_grad(m, tokens)) for name, m in compiled.items()},
                        max(args.repeat, 9))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(name: str, layers: int) -> None:
    """Peak resident memory of one 1 x 1024 forward above the resident size before it
    (the weights): the peak is reset just before (Linux: /proc/self/clear_refs)."""
    import gc
    models = build(layers, 1024)
    model = models.pop(name)
    del models
    gc.collect()
    tokens = torch.randint(0, 50257, (1, 1024))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (VmHWM)
    before = _status_kb("VmRSS")
    _no_grad(model, tokens)
    peak = _status_kb("VmHWM")
    print(json.dumps({"name": name, "peak_mb": (peak - before) / 1024}))


def memory(args) -> dict:
    """Each contender in a fresh process."""
    out = {}
    for name in ("tndsl compiled", "HF sdpa", "HF eager", "hand-written SDPA"):
        result = subprocess.run([sys.executable, __file__, "--memory-child", name,
                                 "--layers", str(args.layers), "--threads", str(args.threads)],
                                capture_output=True, text=True, check=True)
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


class HandMatvec(nn.Module):
    """The small module a user would write: one param, `self.W @ x`."""

    def __init__(self, weight):
        super().__init__()
        self.W = nn.Parameter(weight)

    def forward(self, x):
        return self.W @ x


class MinimalMatvec(HandMatvec):
    """The floor of any module holding its weight as a Parameter: the param read from
    the dict, no checks, no hooks, `torch.mv`."""

    def forward(self, x):
        return torch.mv(self._parameters["W"], x)


def matvec(args) -> dict[str, float]:
    """Seconds per call of a compiled 64 x 64 matrix-vector product, a hand-written
    nn.Module doing it, the minimal module, `W @ x` on a plain tensor, the same product
    on an nn.Parameter (a Tensor subclass: torch's argument parsing takes a slower path
    for it), and an empty nn.Module call, interleaved."""
    program = tndsl.parse("dim M = 64\ndim N = 64\ninput x[m: M]\nparam W[n: N, m: M]\n"
                          "y[n] = W[n, m] * x[m]\n", "matvec.tn")
    model = program.module().eval()
    hand = HandMatvec(model.W.detach().clone()).eval()
    minimal = MinimalMatvec(model.W.detach().clone()).eval()
    weight = model.W.detach().clone()
    param = nn.Parameter(weight.clone())
    empty = nn.Identity()
    x = torch.randn(64)
    calls = 2000

    def loop(fn):
        def run():
            with torch.no_grad():
                for _ in range(calls):
                    fn()
        return run

    times = median_times({"compiled": loop(lambda: model(x)),
                          "hand-written nn.Module": loop(lambda: hand(x)),
                          "minimal nn.Module": loop(lambda: minimal(x)),
                          "W @ x": loop(lambda: weight @ x),
                          "torch.mv(Parameter, x)": loop(lambda: torch.mv(param, x)),
                          "empty nn.Module call": loop(lambda: empty(x))}, args.repeat)
    return {name: t / calls for name, t in times.items()}


def build_llama(args):
    """The Llama-shaped pair: 12 layers (by default), model 768, GQA with 12 query heads
    on 4 key/value heads, loaded with tndsl.from_pretrained from the HF model's own
    checkpoint; and tokens, batch 1 x context 128."""
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048,
        num_hidden_layers=args.layers, num_attention_heads=12, num_key_value_heads=4,
        max_position_embeddings=512)
    hf = transformers.LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        module = tndsl.from_pretrained(folder, torch.float32)
    device = torch.device(args.device)
    module, hf = module.to(device).eval(), hf.to(device)
    tokens = torch.randint(0, config.vocab_size, (1, 128), device=device)
    with torch.inference_mode():
        assert (module(tokens) - hf(tokens).logits).abs().max() < 1e-3
    return {"tndsl compiled": module, "HF LlamaForCausalLM": hf}, tokens


def llama_row(args) -> None:
    """The Llama-shaped row; goal: at most 0.9x HF's time."""
    models, tokens = build_llama(args)
    times = median_times({name: (lambda m=model: _no_grad(m, tokens))
                          for name, model in models.items()}, args.repeat)
    compiled = times["tndsl compiled"]
    batch, context = tokens.shape
    print(f"\nLlama shape: {args.layers} layers, model 768, GQA 12/4, batch {batch} x "
          f"context {context}, {tokens.device.type}")
    print(f"{'forward':<28}{'median s':>10}{'ratio to compiled':>20}")
    for name, seconds in times.items():
        print(f"{name:<28}{seconds:>10.4f}{seconds / compiled:>20.2f}")


def profile(args) -> None:
    """torch.profiler's top operators for the compiled model and HF sdpa at 4 x 128 (with
    --llama: the Llama-shaped pair at 1 x 128; with --no-fuse NAME, also the model
    without that pass)."""
    if args.llama:
        models, tokens = build_llama(args)
    else:
        built = build(args.layers, 128, args.device, args.no_fuse, args.fuse)
        names = ("tndsl compiled", "HF sdpa", *(f"tndsl --no-fuse {n}" for n in args.no_fuse),
                 *(f"tndsl --fuse {n}" for n in args.fuse))
        models = {name: built[name] for name in names}
        tokens = torch.randint(0, 50257, (4, 128), device=args.device)
    for name, model in models.items():
        _no_grad(model, tokens)
        with torch.profiler.profile() as prof:
            _no_grad(model, tokens)
        print(f"--- {name}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def _family_pair(config, hf_class: str, attention: str, args, **options):
    """A family's pair at one shape: HF's model (random init) and the compiled module
    loaded from its checkpoint by tndsl.from_pretrained (and, as `fuse=False` or
    similar `options` say, another compiled contender); tokens 1 x 128."""
    import transformers
    torch.manual_seed(0)
    config._attn_implementation = attention
    hf = getattr(transformers, hf_class)(config).eval()
    models = {}
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        models["tndsl compiled"] = tndsl.from_pretrained(folder, torch.float32)
        for name, fuse in options.items():
            program = models["tndsl compiled"].tndsl_program
            module = program.module(**fuse).eval()
            module.load_state_dict(models["tndsl compiled"].state_dict())
            models[name] = module
    device = torch.device(args.device)
    models = {name: m.to(device).eval() for name, m in models.items()}
    hf = hf.to(device)
    tokens = torch.randint(0, config.vocab_size, (1, 128), device=device)
    with torch.inference_mode():
        for model in models.values():
            assert (model(tokens) - hf(tokens).logits).abs().max() < 1e-3
    return {**models, f"HF {hf_class} ({attention})": hf}, tokens


def _print_row(title: str, models, tokens, args) -> None:
    times = median_times({name: (lambda m=model: _no_grad(m, tokens))
                          for name, model in models.items()}, args.repeat)
    compiled = times["tndsl compiled"]
    print(f"\n{title}, batch {tokens.shape[0]} x context {tokens.shape[1]}, "
          f"{tokens.device.type}")
    print(f"{'forward':<44}{'median s':>10}{'ratio to compiled':>20}")
    for name, seconds in times.items():
        print(f"{name:<44}{seconds:>10.4f}{seconds / compiled:>20.2f}")


def gemma2_row(args) -> None:
    """Gemma-2-shaped: soft-capped attention (no SDPA: the compiled model takes the
    explicit path, q·k, tanh cap, masked softmax, ·v), alternating local (window 64) and
    global layers, GQA 8/4, against HF's Gemma2ForCausalLM with eager attention (the
    one that implements soft-capping)."""
    import transformers
    config = transformers.Gemma2Config(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, head_dim=96,
        num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
        sliding_window=64, max_position_embeddings=512)
    models, tokens = _family_pair(config, "Gemma2ForCausalLM", "eager", args)
    _print_row(f"Gemma 2 shape: {args.layers} layers, model 768, GQA 8/4, soft-capped",
               models, tokens, args)


def moe_row(args) -> None:
    """A small Mixtral (--experts, 8 by default, top 2, model 256, hidden 512, 4 layers): expert
    dispatch (each expert on its routed tokens) against HF's MixtralForCausalLM and
    against the same compiled model computing every expert densely (--no-fuse experts)."""
    import transformers
    config = transformers.MixtralConfig(
        vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, num_local_experts=args.experts,
        num_experts_per_tok=2, max_position_embeddings=512, sliding_window=None)
    models, tokens = _family_pair(
        config, "MixtralForCausalLM", "sdpa", args,
        **{"tndsl dense experts (--no-fuse experts)": {"no_fuse": ["experts"]}})
    _print_row(f"Mixtral shape: 4 layers, model 256, {args.experts} experts of hidden 512, "
               "top 2", models, tokens, args)


def moe_block_row(args) -> None:
    """The mixture-of-experts layer alone (Mixtral's, model 256, hidden 512, top 2, 512
    tokens), one thread, per-thread CPU time (robust to a loaded machine): expert dispatch
    against the dense sum over every expert and HF's MixtralSparseMoeBlock, same weights."""
    import transformers
    torch.set_num_threads(1)
    config = transformers.MixtralConfig(hidden_size=256, intermediate_size=512,
                                        num_local_experts=args.experts,
                                        num_experts_per_tok=2)
    config._experts_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.normal_(0, 0.05)
    text = (EXAMPLE.parent / "mixtral.tn").read_text()
    program = tndsl.parse(text, "mixtral.tn", dims={
        "Model": 256, "Hidden": 512, "Experts": args.experts, "Layers": 1, "Vocab": 8,
        "Heads": 8, "KVHeads": 4, "Head": 32}, consts={"TopK": 2})
    hidden = hf.experts.intermediate_dim
    state = {"W_router": hf.gate.weight.T,
             "W_gate": hf.experts.gate_up_proj[:, :hidden].transpose(1, 2),
             "W_in": hf.experts.gate_up_proj[:, hidden:].transpose(1, 2),
             "W_out": hf.experts.down_proj.transpose(1, 2)}
    from tndsl.codegen.torch import generate
    contenders = {}
    for name, options in (("tndsl dispatch", {}), ("tndsl dense", {"no_fuse": ["experts"]})):
        module = generate(program, ["blocks.0.mlp.out"], **options).build()
        block = module.blocks[0].mlp
        with torch.no_grad():
            for key, value in state.items():
                getattr(block, key).copy_(value)
        contenders[name] = block.eval()
    x = torch.randn(1, 512, 256)
    with torch.no_grad():
        expected = hf(x)
        for name, block in contenders.items():
            assert (block(x[0]) - expected[0]).abs().max() < 1e-4, name
    contenders["HF MixtralSparseMoeBlock"] = lambda t: hf(t.unsqueeze(0))
    times = {name: [] for name in contenders}
    with torch.no_grad():
        for fn in contenders.values():
            fn(x[0])
        for r in range(args.repeat):
            for name, fn in contenders.items():
                start = time.thread_time()
                fn(x[0])
                times[name].append(time.thread_time() - start)
    base = statistics.median(times["tndsl dispatch"])
    print(f"\nMoE layer alone: {args.experts} experts, top 2, model 256, hidden 512, 512 "
          "tokens, one thread, CPU time")
    for name, t in times.items():
        print(f"{name:<28}{statistics.median(t) * 1e3:>10.2f} ms"
              f"{statistics.median(t) / base:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", default="4x128,1x512,1x1024")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steady", action="store_true",
                        help="torch.compile steady state only (with --baseline-tree: old and new)")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--matvec", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-fuse", action="append", default=[], metavar="NAME",
                        help="add a contender: the compiled model without this pass")
    parser.add_argument("--fuse", action="append", default=[], metavar="NAME",
                        help="add a contender: the compiled model with this opt-in pass")
    parser.add_argument("--llama", action="store_true", help="add the Llama-shaped row")
    parser.add_argument("--gemma2", action="store_true",
                        help="add the Gemma-2-shaped row (soft-capped attention)")
    parser.add_argument("--moe", action="store_true",
                        help="add the Mixtral-shaped row (expert dispatch vs HF and dense)")
    parser.add_argument("--experts", type=int, default=8, help="experts in the --moe row")
    parser.add_argument("--moe-block", action="store_true",
                        help="the MoE layer alone: dispatch, dense and HF's, CPU time")
    parser.add_argument("--only-families", action="store_true",
                        help="skip the GPT-2 table: only the --llama/--gemma2/--moe rows")
    parser.add_argument("--baseline-tree", metavar="DIR",
                        help="add a contender: the model another tndsl checkout compiles")
    parser.add_argument("--plain-linear", action="store_true",
                        help="add a contender: the compiled model with F.linear only")
    parser.add_argument("--compile-runs", type=int, default=3,
                        help="fresh processes per contender for --compile (median)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--compile-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.layers)
        return
    if args.compile_child:
        compile_child(args.compile_child, args)
        return
    if args.profile:
        profile(args)
        return
    print(f"GPT-2 small shape, {args.layers} layers, {args.device}, CPU {cpu_name()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat}")
    if args.only_families:
        for flag, row in ((args.llama, llama_row), (args.gemma2, gemma2_row),
                          (args.moe, moe_row), (args.moe_block, moe_block_row)):
            if flag:
                row(args)
        return
    if args.steady:   # the steady state alone, as --help says: no eager table first
        steady = compiled_steady(args)
        print("\n| torch.compile steady state, 4x128 | " + " | ".join(steady) + " |")
        print("| --- |" + " ---: |" * len(steady))
        base = steady["tndsl compiled"]
        print("| s (ratio to tndsl compiled) | " + " | ".join(
            f"{t:.4f} ({t / base:.3f})" for t in steady.values()) + " |")
        return
    names = ["tndsl compiled", "HF sdpa", "HF eager", "hand-written SDPA",
             *(f"tndsl --no-fuse {n}" for n in args.no_fuse),
             *(f"tndsl --fuse {n}" for n in args.fuse),
             *(["tndsl F.linear"] if args.plain_linear else []),
             *(["baseline"] if args.baseline_tree else [])]
    print("| row | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    results, compiled = table(args)
    for row, times in results:
        base = times["tndsl compiled"]
        print(f"| {row} | " + " | ".join(f"{times[n]:.4f} s ({times[n] / base:.2f})"
                                         for n in names) + " |")
    print("\n| token-id check (inside the compiled forward) | per call | share of the forward |")
    print("| --- | ---: | ---: |")
    print("\n".join(id_check_cost(args, results, compiled)))
    if args.compile:
        times = compile_times(args)
        base = times["hand-written SDPA"]
        print(f"\n| torch.compile, 4x128, median of {args.compile_runs} (ratio to hand-written) "
              "| first call, cold "
              "cache | first call, warm cache (rerun) | steady state |")
        print("| --- | ---: | ---: | ---: |")
        for name, t in times.items():
            print(f"| {name} | " + " | ".join(
                f"{t[k]:.{1 if k != 'steady' else 4}f} s ({t[k] / base[k]:.2f})"
                for k in ("cold", "warm", "steady")) + " |")
        for name, t in times.items():
            print(f"{name}: runs " + "; ".join(
                f"cold {r['cold']:.1f} s, warm {r['warm']:.1f} s" for r in t["runs"]))
    if args.memory:
        for name, mb in memory(args).items():
            print(f"peak memory above the weights, 1x1024 forward, {name}: {mb:.0f} MB")
    if args.matvec:
        times = matvec(args)
        base = times["W @ x"]
        print("| 64x64 matvec, per call | " + " | ".join(times) + " |")
        print("| --- |" + " ---: |" * len(times))
        print("| us (ratio to W @ x) | " + " | ".join(
            f"{t * 1e6:.2f} ({t / base:.2f})" for t in times.values()) + " |")
    if args.llama:
        llama_row(args)
    if args.gemma2:
        gemma2_row(args)
    if args.moe:
        moe_row(args)


if __name__ == "__main__":
    main()
