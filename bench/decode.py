"""Decoding speed: a GPT-2-small-shaped model generating 64 tokens greedily after a
128-token prompt, batch 1, float32: `tndsl.generate` (the key/value cache derived from
the diagram) against Hugging Face's `generate` with its default cache (DynamicCache),
the same random weights loaded from one checkpoint folder, interleaved in one run.

    python bench/decode.py [--layers 12] [--prompt 128] [--new 64] [--repeat 5]
                           [--threads N] [--overhead]

Prints the median time per new token of each (the whole generate call, prefill
included, divided by the new tokens) and the ratio tndsl / HF (below 1: tndsl is
faster). --overhead: the time of one decode step of a 1-layer, 64-wide model, where
the per-call cost of Python and module calls dominates the arithmetic.
Needs `transformers` (the test extra). Both produce the same tokens (checked).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
import transformers

import tndsl


def checkpoint(folder, layers, model=768, heads=12, vocab=50257, context=1024):
    config = transformers.GPT2Config(n_layer=layers, n_embd=model, n_head=heads,
                                     vocab_size=vocab, n_positions=context,
                                     bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(folder)
    return hf


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(layers, prompt_len, new, repeat, model=768, heads=12, vocab=50257):
    with tempfile.TemporaryDirectory() as folder:
        hf = checkpoint(folder, layers, model, heads, vocab)
        ours = tndsl.from_pretrained(folder, context=prompt_len + new)
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)

    def hf_generate():
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=mask, max_new_tokens=new,
                               min_new_tokens=new, do_sample=False, pad_token_id=vocab - 1)

    def tndsl_generate():
        return tndsl.generate(ours, prompt, new, stop_at_eos=False, progress=False).tokens

    a, b = hf_generate(), tndsl_generate()  # warm up; the same tokens
    assert a.tolist() == b.tolist(), "tndsl and HF generated different tokens"
    times = {"tndsl": [], "hf": []}
    for _ in range(repeat):  # interleaved, so drifting load hits both alike
        times["hf"].append(timed(hf_generate)[0] / new)
        times["tndsl"].append(timed(tndsl_generate)[0] / new)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--overhead", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads")
    rows = [(f"GPT-2 small shape, {args.layers} layers, 1 x {args.prompt} + {args.new}",
             run(args.layers, args.prompt, args.new, args.repeat))]
    if args.overhead:
        rows.append(("1 layer, 64 wide, vocab 512, 1 x 16 + 64 (per-call overhead)",
                     run(1, 16, 64, args.repeat, model=64, heads=4, vocab=512)))
    print(f"\n| row | tndsl ms / token | HF ms / token | ratio tndsl / HF |")
    print("| --- | ---: | ---: | ---: |")
    for label, t in rows:
        print(f"| {label} | {t['tndsl'] * 1e3:.2f} | {t['hf'] * 1e3:.2f} | "
              f"{t['tndsl'] / t['hf']:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
