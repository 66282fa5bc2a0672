"""GPT-2-small-shaped forward pass: the compiled .tn model against HF transformers'
GPT2LMHeadModel and a hand-written torch forward, all with the same weights, in one run;
then a Llama-shaped row (GQA 12/4) against LlamaForCausalLM, through from_pretrained.

    python bench/forward.py [--batch 4] [--context 128] [--layers 12] [--repeat 5]

Prints compile time and median forward times with their ratios to the compiled model
(a ratio above 1 means the baseline is slower). Needs `transformers` (the test extra).
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

import tndsl
from tndsl.weights import load_hf_gpt2, load_state

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpt2_small.tn"


def hand_written(w, tokens, layers, heads):
    """GPT-2 as one would write it in torch, reading the same TransformerLens-layout weights."""
    def layer_norm(x, prefix):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], w[prefix + ".w"], w[prefix + ".b"],
                                              eps=1e-5)

    n = tokens.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    resid = w["embed.W_E"][tokens] + w["pos_embed.W_pos"][:n]
    for l in range(layers):
        b = f"blocks.{l}."
        x = layer_norm(resid, b + "ln1")
        model = x.shape[-1]
        qkv = [x @ w[b + f"attn.W_{k}"].permute(1, 0, 2).reshape(model, model)
               + w[b + f"attn.b_{k}"].reshape(model) for k in "QKV"]
        q, k, v = (t.view(*t.shape[:-1], heads, model // heads).transpose(-2, -3) for t in qkv)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(model // heads)
        pattern = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        z = (pattern @ v).transpose(-2, -3).reshape(*x.shape[:-1], model)
        resid = resid + z @ w[b + "attn.W_O"].reshape(model, model) + w[b + "attn.b_O"]
        x = layer_norm(resid, b + "ln2")
        hidden = torch.nn.functional.gelu(x @ w[b + "mlp.W_in"] + w[b + "mlp.b_in"],
                                          approximate="tanh")
        resid = resid + hidden @ w[b + "mlp.W_out"] + w[b + "mlp.b_out"]
    return layer_norm(resid, "ln_final") @ w["unembed.W_U"] + w["unembed.b_U"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers, n_positions=args.context,
                                     attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        state = load_hf_gpt2(folder)

    start = time.perf_counter()
    program = tndsl.load(EXAMPLE, dims={"Context": args.context, "Layers": args.layers})
    generated = program.compile()
    compile_seconds = time.perf_counter() - start
    module = generated.build()
    load_state(module, state)
    device = torch.device(args.device)
    module, hf = module.to(device).eval(), hf.to(device)
    weights = {k: v.to(device) for k, v in state.items()}
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.context), device=device)

    def sync(fn):
        def run():
            with torch.inference_mode():
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

    with torch.inference_mode():
        reference = hf(tokens).logits
        assert (module(tokens) - reference).abs().max() < 1e-3
        assert (hand_written(weights, tokens, args.layers, 12) - reference).abs().max() < 1e-3

    times = median_times({
        "tndsl compiled": sync(lambda: module(tokens)),
        "HF GPT2LMHeadModel": sync(lambda: hf(tokens)),
        "hand-written torch": sync(lambda: hand_written(weights, tokens, args.layers, 12)),
    }, args.repeat)
    compiled = times["tndsl compiled"]

    print(f"GPT-2 small shape: {args.layers} layers, model 768, batch {args.batch} x context "
          f"{args.context}, {device.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"compile (load + check + plan + generate): {compile_seconds:.3f} s")
    print(f"{'forward':<28}{'median s':>10}{'ratio to compiled':>20}")
    for name, seconds in times.items():
        print(f"{name:<28}{seconds:>10.4f}{seconds / compiled:>20.2f}")
    llama_row(args, device, sync)


def llama_row(args, device, sync) -> None:
    """The Llama-shaped row: 12 layers (by default), model 768, GQA with 12 query heads
    on 4 key/value heads, loaded with tndsl.from_pretrained from the HF model's own
    checkpoint; goal: at most 0.9x HF's time."""
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048,
        num_hidden_layers=args.layers, num_attention_heads=12, num_key_value_heads=4,
        max_position_embeddings=max(args.context, 512))
    hf = transformers.LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        module = tndsl.from_pretrained(folder, torch.float32)
    module, hf = module.to(device).eval(), hf.to(device)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.context), device=device)
    with torch.inference_mode():
        assert (module(tokens) - hf(tokens).logits).abs().max() < 1e-3
    times = median_times({
        "tndsl compiled": sync(lambda: module(tokens)),
        "HF LlamaForCausalLM": sync(lambda: hf(tokens)),
    }, args.repeat)
    compiled = times["tndsl compiled"]
    print(f"\nLlama shape: {args.layers} layers, model 768, GQA 12/4, batch {args.batch} x "
          f"context {args.context}, {device.type}")
    print(f"{'forward':<28}{'median s':>10}{'ratio to compiled':>20}")
    for name, seconds in times.items():
        print(f"{name:<28}{seconds:>10.4f}{seconds / compiled:>20.2f}")


if __name__ == "__main__":
    main()
