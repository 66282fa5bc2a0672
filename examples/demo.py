"""The main job over the examples (`make demo`): check each, compile each to PyTorch and
verify it against the reference evaluator, then run GPT-2 small once on random tokens."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import tndsl

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "build" / "examples"


def main() -> int:
    BUILD.mkdir(parents=True, exist_ok=True)
    for path in sorted(HERE.glob("*.tn")):
        program = tndsl.load(path)
        print(f"{path.relative_to(HERE.parent)}: ok")
        print(program.summary())
        generated = program.compile()
        target = BUILD / f"{path.stem}.py"
        target.write_text(generated.source)
        report = program.verify_compiled()
        print(f"  compiled {target.relative_to(HERE.parent)}: class {generated.class_name}"
              f"({', '.join(generated.arguments)}) -> {', '.join(generated.outputs)}; "
              f"equals the reference evaluator to {report.worst:.1e} (relative)")
        if not report.ok:
            print(report.render())
            return 1
    program = tndsl.load(HERE / "gpt2_small.tn", dims={"Context": 128})
    model = program.module().eval()
    tokens = torch.randint(0, program.sizes["Vocab"], (1, 128))
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(tokens)
        seconds = time.perf_counter() - start
    print(f"GPT-2 small ({int(program.parameter_count()):,} parameters, random weights): forward "
          f"on 1 x 128 random token ids -> logits {tuple(logits.shape)} in {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
