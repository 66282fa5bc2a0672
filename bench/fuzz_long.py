"""The long fuzz run: 10,000 cases through the whole pipeline, counting unexpected
exceptions and hangs instead of stopping at the first (docs/robustness.md).

    python bench/fuzz_long.py [--cases 10000] [--valid-share 0.2] [--seed 0]

A share of the cases are random valid programs, checked differentially (compiled =
reference evaluator in float64, 1e-9); the rest are damaged examples, which must succeed
or fail with a located TnError. Exits 1 if anything else happened.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fuzzing import bounded, mutations, run_pipeline, valid_programs  # noqa: E402

import tndsl  # noqa: E402
from tndsl.verify.compiled import compare_compiled  # noqa: E402

HANG_SECONDS = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--valid-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    valid_cases = int(args.cases * args.valid_share)
    tally = {"cases": 0, "ok": 0, "located_errors": 0, "unexpected": 0, "hangs": 0,
             "mismatches": 0}
    failures: list[str] = []

    def record(kind: str, text: str, detail: str) -> None:
        tally[kind] += 1
        if len(failures) < 20:
            failures.append(f"--- {kind}: {detail}\n{text[:2000]}")

    options = dict(deadline=None, database=None, phases=[Phase.generate],
                   suppress_health_check=list(HealthCheck))

    @seed(args.seed)
    @settings(max_examples=valid_cases, **options)
    @given(valid_programs())
    def valid(text):
        tally["cases"] += 1
        try:
            with bounded(HANG_SECONDS):
                program = tndsl.parse(text, "random.tn")
                report = compare_compiled(program, dims={},
                                          outputs=[eq.name for eq in program.outputs])
            if report.ok:
                tally["ok"] += 1
            else:
                record("mismatches", text, report.render())
        except TimeoutError:
            record("hangs", text, f"over {HANG_SECONDS} s")
        except Exception:
            record("unexpected", text, traceback.format_exc(limit=3))

    @seed(args.seed)
    @settings(max_examples=args.cases - valid_cases, **options)
    @given(mutations())
    def damaged(text):
        tally["cases"] += 1
        try:
            with bounded(HANG_SECONDS):
                program = run_pipeline(text)
            tally["ok" if program is not None else "located_errors"] += 1
        except TimeoutError:
            record("hangs", text, f"over {HANG_SECONDS} s")
        except Exception:
            record("unexpected", text, traceback.format_exc(limit=3))

    start = time.perf_counter()
    valid()
    damaged()
    seconds = time.perf_counter() - start
    for failure in failures:
        print(failure)
    print(f"{tally['cases']} cases in {seconds:.0f} s: {tally['ok']} ran through, "
          f"{tally['located_errors']} refused with a located TnError, "
          f"{tally['unexpected']} unexpected exceptions, {tally['hangs']} hangs, "
          f"{tally['mismatches']} compiled/reference mismatches")
    return 1 if tally["unexpected"] or tally["hangs"] or tally["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
