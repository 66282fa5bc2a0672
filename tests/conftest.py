"""Shared fixtures. Golden files are rewritten, not compared, under `--update-golden`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Generated `_linear` picks its GEMM kernel by timing on first use (docs/compiling.md);
# tests take F.linear always, so their results do not depend on the machine's load.
os.environ.setdefault("TNDSL_AUTOTUNE", "0")

# Under pytest-xdist (`make test`: one worker per core) each worker runs one torch
# thread, and so do the subprocesses it starts: two workers of two threads each on two
# cores spend their time waiting on each other (the induction study's training took
# 90 s that way, 30 s with one thread each).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.tn"))


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite golden files from the current output instead of comparing")


@pytest.fixture
def golden(request):
    """`golden(path, text)`: compare text with the file, or rewrite it when updating."""
    update = request.config.getoption("--update-golden")

    def compare(path: Path, text: str) -> None:
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing golden file {path}; run pytest --update-golden"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"output differs from {path.relative_to(ROOT)}"

    return compare


@pytest.fixture
def fresh_dynamo():
    """torch.compile as in a new process: dynamo remembers, per code object, which sizes
    earlier compiles saw vary (automatic dynamic shapes), so a graph count depends on
    what other tests ran before in the same pytest-xdist worker unless it is reset."""
    import torch
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def loaded(program, values, dtype=None, **options):
    """`program`'s compiled module (compile options in `options`) with `values` copied
    into its params, in float64 unless `dtype` says otherwise."""
    import torch
    module = program.module(**options).to(dtype or torch.float64)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(values[name])
    return module


def small_gpt2(dims):
    """(program, values, tokens): examples/gpt2_small.tn at `dims`, seeded random params
    and a 2 x 8 batch of token ids below 11."""
    import torch
    import tndsl
    from tndsl.verify.numeric import random_tensors
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims=dims)
    values = random_tensors(program, torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    return program, values, tokens
