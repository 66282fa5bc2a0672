"""The long fuzz run: 10,000 cases through the whole pipeline, counting unexpected
exceptions and hangs instead of stopping at the first (docs/robustness.md).

    python bench/fuzz_long.py [--cases 10000] [--valid-share 0.1] [--grammar-share 0.2]
                              [--seed 0] [--coverage] [--mutants N]

A share of the cases are random valid programs, checked differentially (compiled =
reference evaluator in float64, relative tolerance 1e-9); a share are sentences derived
from the grammar alone; the rest are damaged examples. Grammar sentences and damaged
examples must succeed or fail with a located TnError. Exits 1 if anything else happened.
`--coverage` prints how often each grammar production and IR node kind was generated;
`--mutants N` compiles N valid programs with each deliberately broken lowering
(tests/fuzzing.py `mutant`) and prints the share each one gets wrong.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fuzzing import (FUZZ_DIMS, MUTANTS, Coverage, bounded, compiled_mismatches,  # noqa: E402
                     grammar_sentences, mutant, mutations, run_pipeline, valid_programs)

import tndsl  # noqa: E402

HANG_SECONDS = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--valid-share", type=float, default=0.1)
    parser.add_argument("--grammar-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coverage", action="store_true",
                        help="print the count of every grammar production and IR node kind")
    parser.add_argument("--mutants", type=int, default=0, metavar="N",
                        help="also run N valid programs against each mutant")
    args = parser.parse_args()
    valid_cases = int(args.cases * args.valid_share)
    grammar_cases = int(args.cases * args.grammar_share)
    tally = {"cases": 0, "ok": 0, "located_errors": 0, "unexpected": 0, "hangs": 0,
             "mismatches": 0, "overflowed": 0}
    failures: list[str] = []
    coverage = Coverage()

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
                program = tndsl.parse(text, "random.tn", FUZZ_DIMS)
                if args.coverage:
                    coverage.record("valid", text, program)
                mismatches, overflowed = compiled_mismatches(text, program)
            tally["overflowed"] += overflowed
            if mismatches:
                record("mismatches", text, mismatches[0])
            else:
                tally["ok"] += 1
        except TimeoutError:
            record("hangs", text, f"over {HANG_SECONDS} s")
        except Exception:
            record("unexpected", text, traceback.format_exc(limit=3))

    def must_not_crash(generator: str):
        def run(text):
            tally["cases"] += 1
            if args.coverage and generator == "grammar":
                coverage.record(generator, text)
            try:
                with bounded(HANG_SECONDS):
                    program = run_pipeline(text)
                tally["ok" if program is not None else "located_errors"] += 1
            except TimeoutError:
                record("hangs", text, f"over {HANG_SECONDS} s")
            except Exception:
                record("unexpected", text, traceback.format_exc(limit=3))
        return run

    grammar = seed(args.seed)(settings(max_examples=grammar_cases, **options)(
        given(grammar_sentences())(must_not_crash("grammar"))))
    damaged = seed(args.seed)(settings(
        max_examples=args.cases - valid_cases - grammar_cases, **options)(
        given(mutations())(must_not_crash("damaged"))))

    start = time.perf_counter()
    valid()
    grammar()
    damaged()
    seconds = time.perf_counter() - start
    for failure in failures:
        print(failure)
    if args.coverage:
        print(coverage.report())
    print(f"{tally['cases']} cases in {seconds:.0f} s ({valid_cases} valid programs, "
          f"{grammar_cases} grammar sentences, {args.cases - valid_cases - grammar_cases} "
          f"damaged examples): {tally['ok']} ran through, "
          f"{tally['located_errors']} refused with a located TnError, "
          f"{tally['unexpected']} unexpected exceptions, {tally['hangs']} hangs, "
          f"{tally['mismatches']} compiled/reference mismatches "
          f"({tally['overflowed']} outputs not compared: the reference overflowed)")
    if args.mutants:
        print(mutant_table(args.mutants, args.seed, options))
    return 1 if tally["unexpected"] or tally["hangs"] or tally["mismatches"] else 0


def mutant_table(cases: int, seed_value: int, options) -> str:
    """For each mutant: of `cases` valid programs, how many it compiles wrong."""
    lines = [f"{'mutant':<12} {'wrong':>6} {'crashed':>8} {'of':>5}"]
    for name in MUTANTS:
        counts = {"wrong": 0, "crashed": 0, "all": 0}

        @seed(seed_value)
        @settings(max_examples=cases, **options)
        @given(valid_programs())
        def run(text):
            counts["all"] += 1
            with bounded(HANG_SECONDS), mutant(name):
                try:
                    mismatches, _ = compiled_mismatches(text)
                except tndsl.TnError:
                    return
                except Exception:
                    counts["crashed"] += 1
                    return
            counts["wrong"] += bool(mismatches)

        run()
        lines.append(f"{name:<12} {counts['wrong']:>6} {counts['crashed']:>8} "
                     f"{counts['all']:>5}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
