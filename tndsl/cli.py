"""The `tndsl` command.

Exit codes: 0 success, 1 errors in the input (printed compiler-style on stderr),
2 a usage mistake, 3 an internal failure (one line asking for a report, never a
traceback), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tndsl.lang.errors import TnError, TnErrors
from tndsl.passes.fusion import OPT_IN, PASSES, resolve
from tndsl.program import load

REPORT_URL = "https://github.com/tndsl/tndsl/issues"


def _dim_assignment(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE, got {text!r}")
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size of {name.strip()} must be an integer, "
                                         f"got {value!r}") from None
    return name.strip(), size


def _report(error: TnError, path: str) -> None:
    """Print an error on stderr. One without a place in the file (it concerns the whole
    file, or a command-line argument such as NAME or --dim) is prefixed with the file,
    so every error line starts with where it comes from."""
    for e in (error.errors if isinstance(error, TnErrors) else [error]):
        text = e.render()
        print(text if e.span is not None else f"{path}: {text}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tndsl", description="Tensor-network diagrams as source files: check, "
                                  "compile, render and verify .tn programs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="parse and type-check .tn files, print a summary",
                                description="Parse and type-check each file and print a "
                                            "summary: dims, params, inputs, outputs, checks.")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                       metavar="NAME=SIZE", help="give or override a dim's size (repeatable)")
    check.add_argument("--dump", action="store_true",
                       help="print the elaborated IR instead of the summary")
    check.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    compile_ = commands.add_parser(
        "compile", help="write a standalone PyTorch module for a .tn file",
        description="Generate a readable Python module (imports torch only) with an "
                    "nn.Module computing the requested outputs. Its matrix products pick "
                    "F.linear or oneDNN's kernel by timing both on the first float32 CPU "
                    "inference call of each shape; TNDSL_AUTOTUNE=0 in the environment "
                    "keeps F.linear (reproducible to the bit; docs/compiling.md).")
    compile_.add_argument("file", metavar="FILE")
    compile_.add_argument("-o", "--out", metavar="MODEL.py",
                          help="where to write the module (default: standard output)")
    compile_.add_argument("--output", action="append", metavar="NAME", dest="outputs",
                          help="an equation to return (repeatable; default: the final one)")
    compile_.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                          metavar="NAME=SIZE", help="give or override a dim's size")
    compile_.add_argument("--optimizer", default="auto",
                          help="contraction-path optimiser: auto, optimal, dp, greedy, "
                               "random-greedy (default: auto)")
    compile_.add_argument("--no-fuse", action="append", default=[], metavar="NAME",
                          help="leave out an optional pass (repeatable): "
                               f"{', '.join(p for p in PASSES if p not in OPT_IN)}; "
                               "`all` leaves out every one")
    compile_.add_argument("--fuse", action="append", default=[], metavar="NAME",
                          help="add an opt-in pass to the defaults (repeatable): "
                               f"{', '.join(sorted(OPT_IN))}")
    compile_.add_argument("--vary", action="append", metavar="DIM",
                          help="a sized dim the inputs may have shorter, params sliced to "
                               "it (repeatable; default: token positions)")
    compile_.add_argument("--no-decode", action="store_true",
                          help="leave out incremental decoding (the forward's cache= "
                               "argument and new_cache(), derived from the causal masks)")
    compile_.add_argument("--shard", metavar="DIM,...",
                          help="add a parallelize(mesh) method applying the tensor-parallel "
                               "plan for sharding these dims (tndsl cost --shard prints it)")
    compile_.add_argument("--ranks", type=int, default=2, metavar="N",
                          help="mesh size --shard's plan is checked for (default 2)")

    render = commands.add_parser(
        "render", help="draw an equation's network in graphical tensor notation",
        description="Draw the network of equation NAME (default: the file's final "
                    "equation), or check NAME with --check, as a typeset equation: every "
                    "term on one baseline, rows wrapped at --width. The output format "
                    "follows -o's suffix: .svg (text outlined; --no-outline keeps it as "
                    "text), .pdf (fonts embedded), .png (--dpi), .dot (pinned positions, "
                    "for neato -n2), .tex (a standalone LaTeX document) or .tikz (a "
                    "tikzpicture to \\input into a paper after \\usepackage{tikz}). "
                    "Without -o, DOT goes to standard output.")
    render.add_argument("file", metavar="FILE")
    render.add_argument("name", nargs="?", metavar="NAME")
    render.add_argument("-o", "--out", metavar="FIGURE", help="where to write the figure")
    depth = render.add_mutually_exclusive_group()
    depth.add_argument("--expand", action="store_true",
                       help="inline every definition down to params and inputs")
    depth.add_argument("--depth", type=int, default=0, metavar="N",
                       help="inline N levels of definitions (default 0)")
    render.add_argument("--indices", action="store_true", help="label wires with index names")
    render.add_argument("--dpi", type=int, default=300, help="PNG resolution (default 300)")
    render.add_argument("--no-outline", action="store_true",
                        help="keep SVG text as text (needs the fonts where it is shown)")
    render.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                        metavar="NAME=SIZE", help="give or override a dim's size")
    render.add_argument("--check", action="store_true",
                        help="NAME is a check: draw it as lhs = rhs")
    render.add_argument("--width", metavar="LENGTH",
                        help="lay the figure out this wide (3.25in, 6.75in, 17cm, 480pt), "
                             "wrapping sums into rows; without --font-size, type is set "
                             "smaller (down to 7 pt) where that is needed to fit")
    render.add_argument("--font-size", type=float, metavar="PT",
                        help="label size in pt at the final size (default 10; wire "
                             "labels 0.9 of it)")
    render.add_argument("--font", metavar="FACE",
                        help="the face (default Times: Nimbus Roman or TeX Gyre Termes), "
                             "e.g. 'Latin Modern Roman'; it must be installed")
    render.add_argument("--legs", metavar="LEFT/RIGHT",
                        help="which side each open leg leaves on, e.g. p/m or p,h/s "
                             "(default: the first left, the last right)")
    render.add_argument("--hooks", action="store_true",
                        help="label each intermediate with its hook-point name "
                             "(blocks.0.attn.pattern): the map of what a compiled model "
                             "lets you read and patch")

    cost = commands.add_parser(
        "cost", help="contraction orders, FLOPs and intermediate sizes, symbolically",
        description="For each equation (or NAME: one equation, or every equation under an "
                    "instance path such as blocks.3), the planned contraction order, FLOPs "
                    "and the largest intermediate as polynomials in the dim names, their "
                    "values at the file's sizes, the naive left-to-right cost, per-instance "
                    "totals and the dominant term.")
    cost.add_argument("file", metavar="FILE")
    cost.add_argument("name", nargs="?", metavar="NAME")
    cost.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                      metavar="NAME=SIZE", help="give or override a dim's size")
    cost.add_argument("--json", action="store_true", help="machine-readable output")
    cost.add_argument("--shard", metavar="DIM,...",
                      help="instead, the tensor-parallel plan for sharding these dims: "
                           "sharded params and the collectives per forward, in bytes "
                           "(NAME, if given, is the output)")
    cost.add_argument("--ranks", type=int, default=2, metavar="N",
                      help="mesh size for --shard (default 2)")

    study = commands.add_parser(
        "study", help="run a built-in study (induction: induction heads, end to end)",
        description="induction: train the two-layer attention-only transformer of "
                    "examples/attn_only_2l.tn on repeated random tokens (or load saved "
                    "weights), measure previous-token, induction and copying scores, "
                    "K-composition, the token-match condition, the generated QK-expansion "
                    "terms on data, ablate each layer-0 head, prove the expansion, and write "
                    "a report with plots, the weights and the config.")
    study.add_argument("name", choices=["induction"])
    study.add_argument("-o", "--out", default="examples/induction/report",
                       help="report folder (default: examples/induction/report)")
    study.add_argument("--steps", type=int, default=2500, help="training steps (default 2500)")
    study.add_argument("--seed", type=int, default=0)
    study.add_argument("--weights", metavar="FILE",
                       help="re-run the analysis on saved weights (a study's "
                            "weights.safetensors, its config beside it) without training")

    _paths_parser(commands)

    verify = commands.add_parser(
        "verify", help="prove the file's checks; optionally check the compiled module",
        description="Prove every `check A == B` of the file and report each as proven, "
                    "refuted (with the residual and a counterexample) or unknown; exit 1 "
                    "if any is refuted. With --compiled, also run the compiled module and "
                    "the independent reference evaluator on the same random data at small "
                    "sizes in float64 (fails above 1e-9).")
    verify.add_argument("file", metavar="FILE")
    verify.add_argument("--compiled", action="store_true",
                        help="also compare the compiled module with the reference evaluator")
    verify.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                        metavar="NAME=SIZE", help="sizes to verify at (default: small ones "
                                                  "chosen automatically)")
    verify.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def _check(args: argparse.Namespace) -> int:
    failed = False
    dims = dict(args.dim)
    for path in args.files:
        try:
            program = load(path, dims)
        except TnError as e:
            _report(e, path)
            failed = True
            continue
        for warning in program.warnings:
            print(warning.render(), file=sys.stderr)
        if args.dump:
            print(program.dump(), end="")
        elif not args.quiet:
            print(f"{path}: ok")
            print(program.summary())
    return 1 if failed else 0


def _compile(args: argparse.Namespace) -> int:
    try:
        program = load(args.file, dict(args.dim))
        no_fuse = [n for n in args.no_fuse if n != "all"]
        fuse = resolve("all" not in args.no_fuse) | resolve(args.fuse)
        generated = program.compile(args.outputs, optimizer=args.optimizer,
                                    fuse=sorted(fuse), no_fuse=no_fuse,
                                    vary=args.vary, shard=args.shard, ranks=args.ranks,
                                    decode=not args.no_decode)
    except TnError as e:
        _report(e, args.file)
        return 1
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(generated.source)
        print(f"{args.out}: class {generated.class_name}({', '.join(generated.arguments)}) "
              f"-> {', '.join(generated.outputs)}")
    else:
        sys.stdout.write(generated.source)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from tndsl.verify import prove_all
    try:
        program = load(args.file)
        results = prove_all(program, dims=dict(args.dim) or None)
        report = (program.verify_compiled(dims=dict(args.dim) or None, seed=args.seed)
                  if args.compiled else None)
    except TnError as e:
        _report(e, args.file)
        return 1
    for result in results:
        print(result.render())
    counts = {status: sum(r.status == status for r in results)
              for status in ("proven", "refuted", "unknown")}
    print(f"{args.file}: {len(results)} check{'s' if len(results) != 1 else ''}: "
          + ", ".join(f"{n} {status}" for status, n in counts.items()))
    if report is not None:
        print(f"{args.file}: {report.render()}")
    failed = counts["refuted"] > 0 or (report is not None and not report.ok)
    return 1 if failed else 0


def _render(args: argparse.Namespace) -> int:
    try:
        program = load(args.file, dict(args.dim))
        if args.check and not args.name:
            raise TnError("--check needs the check's NAME",
                          hint="checks: " + ", ".join(c.label for c in program.network.checks)
                          if program.network.checks else "the file has no checks")
        options = dict(expand=args.expand, depth=args.depth, indices=args.indices,
                       width=args.width, font_size=args.font_size, font=args.font,
                       legs=args.legs)
        if args.check:
            figure = program.render(check=args.name, **options)
        else:
            figure = program.render(args.name, hooks=args.hooks, **options)
        if args.out:
            figure.save(args.out, dpi=args.dpi, outline=not args.no_outline)
            print(f"{args.out}: written")
        else:
            sys.stdout.write(figure.source)
    except TnError as e:
        _report(e, args.file)
        return 1
    return 0


def _study(args: argparse.Namespace) -> int:
    from tndsl.interp.induction import Config, run
    try:
        report = run(args.out, Config(steps=args.steps, seed=args.seed),
                     weights=args.weights)
    except TnError as e:
        print(e.render(), file=sys.stderr)
        return 1
    i_layer, i_head = report["induction_head"]
    p_layer, p_head = report["previous_token_head"]
    heads = report["heads"]
    print(f"{args.out}/report.md: previous-token head {p_layer}.{p_head} "
          f"({heads['layer0']['previous_token'][p_head]:.2f}), induction head {i_layer}.{i_head} "
          f"({heads['layer1']['induction'][i_head]:.2f}, copying "
          f"{heads['layer1']['copying'][i_head]:.2f}); {report['total_seconds']:.0f} s")
    ablation = report["ablation"]
    ablated = ablation["heads"][p_head]
    conditions = report["conditions"]
    print("  conditions: " + ", ".join(f"{key} {'holds' if c['holds'] else 'does not hold'}"
                                        for key, c in conditions.items()))
    print(f"  ablating head {p_layer}.{p_head}: best induction score "
          f"{ablation['baseline']['best_induction']:.2f} -> {ablated['best_induction']:.2f}, "
          f"loss on the repeated half {ablation['baseline']['repeated_loss']:.2f} -> "
          f"{ablated['repeated_loss']:.2f}")
    return 0


def _paths_parser(commands) -> None:
    paths = commands.add_parser(
        "paths", help="expand an equation into a sum over paths through the blocks",
        description="Write the path expansion of equation NAME as a .tn file: the input "
                    "file followed by one named equation per path through the chosen block "
                    "instances (default: every instance added to a residual sum), with "
                    "attention patterns and the embedding kept whole and a head leg kept "
                    "open where a block sums over heads, and a `check` that NAME equals the "
                    "sum of the paths (prove it with `tndsl verify`).")
    paths.add_argument("file", metavar="FILE")
    paths.add_argument("name", metavar="NAME")
    paths.add_argument("--through", metavar="PATH,...",
                       help="the block instances paths may pass, comma-separated")
    paths.add_argument("-o", "--out", metavar="OUT.tn",
                       help="where to write the expansion (default: standard output)")
    paths.add_argument("--render", metavar="FIGURE",
                       help="also draw NAME = term + term + ..., each term labelled by "
                            "its path (.svg/.pdf/.png/.dot/.tex/.tikz)")
    paths.add_argument("--prefix", help="name the terms PREFIX.direct, ... (default: the "
                                        "last segment of NAME)")
    paths.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                       metavar="NAME=SIZE", help="give or override a dim's size")


def _paths(args: argparse.Namespace) -> int:
    from tndsl.interp.paths import expand_paths, parse_through
    try:
        program = load(args.file, dict(args.dim))
        expansion = expand_paths(program, args.name, parse_through(args.through),
                                 prefix=args.prefix)
        expansion.program()  # the written file must check
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(expansion.source)
            print(f"{args.out}: {len(expansion.terms)} paths of {args.name}, "
                  f"check {expansion.check}")
            for term in expansion.terms:
                print(f"  {term.name}  ({term.label})")
        else:
            sys.stdout.write(expansion.source)
        if args.render:
            expansion.figure().save(args.render)
            print(f"{args.render}: written", file=sys.stderr if not args.out else sys.stdout)
    except TnError as e:
        _report(e, args.file)
        return 1
    return 0


def _cost(args: argparse.Namespace) -> int:
    from tndsl.passes.cost import costs
    from tndsl.passes.shard import shard_plan
    try:
        program = load(args.file, dict(args.dim))
        if args.shard is not None:
            report = shard_plan(program, args.shard, args.ranks,
                                outputs=[args.name] if args.name else None)
        else:
            report = costs(program, args.name)
    except TnError as e:
        _report(e, args.file)
        return 1
    print(report.to_json() if args.json else report.render())
    return 0


COMMANDS = {"check": _check, "compile": _compile, "verify": _verify, "cost": _cost,
            "render": _render, "study": _study, "paths": _paths}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # the promise: no traceback, ever
        print(f"tndsl: internal error ({type(e).__name__}: {e}); please report it at "
              f"{REPORT_URL} with the input that caused it", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
