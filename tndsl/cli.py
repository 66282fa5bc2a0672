"""The `tndsl` command.

Exit codes: 0 success, 1 errors in the input (printed compiler-style on stderr),
2 a usage mistake, 3 an internal failure (one line asking for a report, never a
traceback), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from tndsl.lang.errors import TnError, TnErrors
from tndsl.lang.text import terminal, terminal_output
from tndsl.passes.fusion import OPT_IN, PASSES, resolve
from tndsl.program import load
from tndsl.render.output import FORMATS

REPORT_URL = "https://github.com/tndsl/tndsl/issues"
MAX_SEED = 2**63 - 1   # the largest int64, which torch.manual_seed takes
MAX_RANKS = 1 << 20    # a mesh larger than any machine, well within every size


def _dim_assignment(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE, got {terminal(repr(text))}")
    _name(name)
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size of {name.strip()} must be an integer, "
                                         f"got {value!r}") from None
    return name.strip(), size


def _bounded_int(low: int, high: int | None = None):
    """An argparse type: a whole number from `low` to `high` (None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got "
                                             f"{terminal(repr(text))}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:20]}... " \
                f"({len(str(value))} digits)"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {shown}")
        return value
    return parse


def _name(text: str) -> str:
    """An argparse type for a name, list of names or option word (NAME, --output,
    --vary, --shard, --through, ...): no .tn name holds a control character, so one
    here is refused before it can reach a message (where a line break would forge a
    line of output). (`paths --prefix` is checked as a .tn path by `paths` itself.)"""
    if not text.isprintable():
        raise argparse.ArgumentTypeError(f"`{terminal(text)}` holds a control character "
                                         "(a line break, ESC, ...); names are printable")
    return text


def _output_problem(text: str, suffixes: Sequence[str] = (), folder: bool = False
                    ) -> str | None:
    """Why an output path cannot be written, found before any work (None if it can be
    tried): a figure's format unknown, a file that is a directory, a FIFO or in a
    folder that does not exist, a report folder that is a file. Writing can still fail (a full
    disk, /dev/full): that is `error: cannot write ...` too, exit 1."""
    path = Path(text)
    if folder:
        for ancestor in (path, *path.parents):
            if ancestor.exists() and not ancestor.is_dir():
                return f"cannot write into {terminal(text)}: {terminal(ancestor)} is not a folder"
        return None
    if suffixes and path.suffix not in suffixes:
        return (f"cannot write {terminal(text)}: unknown figure format "
                f"`{terminal(path.suffix or '(none)')}`; valid: {', '.join(suffixes)}")
    if path.is_dir():
        return f"cannot write {terminal(text)}: it is a directory"
    if path.is_fifo() or path.is_socket():  # opening one to write waits for a reader
        return f"cannot write {terminal(text)}: it is a {'FIFO' if path.is_fifo() else 'socket'}"
    if not path.parent.is_dir():
        return f"cannot write {terminal(text)}: there is no folder {terminal(path.parent)}"
    return None


# The output paths of each command: (argument, figure formats or (), whether a folder).
OUTPUTS = {"compile": [("out", (), False)], "render": [("out", FORMATS, False)],
           "paths": [("out", (), False), ("render", FORMATS, False)],
           "study": [("out", (), True)]}


def _write_text(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise TnError(f"cannot write {terminal(path)}: {e.strerror}") from None


class _Terminal:
    """sys.stdout or sys.stderr with everything written through the one sanitiser for
    terminals (tndsl.lang.text.terminal_output): only the line breaks and tabs tndsl
    writes itself survive; ESC, `\\r` and the like from anywhere are shown escaped."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(terminal_output(text))

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _report(error: TnError, path: str) -> None:
    """Print an error on stderr. One without a place in the file (it concerns the whole
    file, or a command-line argument such as NAME or --dim) is prefixed with the file,
    so every error line starts with where it comes from."""
    for e in (error.errors if isinstance(error, TnErrors) else [error]):
        text = e.render()
        print(text if e.span is not None else f"{terminal(path)}: {text}", file=sys.stderr)


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
    compile_.add_argument("--output", type=_name, action="append", metavar="NAME", dest="outputs",
                          help="an equation to return (repeatable; default: the final one)")
    compile_.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                          metavar="NAME=SIZE", help="give or override a dim's size")
    compile_.add_argument("--optimizer", type=_name, default="auto",
                          help="contraction-path optimiser: auto, optimal, dp, greedy, "
                               "random-greedy (default: auto)")
    compile_.add_argument("--no-fuse", type=_name, action="append", default=[], metavar="NAME",
                          help="leave out an optional pass (repeatable): "
                               f"{', '.join(p for p in PASSES if p not in OPT_IN)}; "
                               "`all` leaves out every one")
    compile_.add_argument("--fuse", type=_name, action="append", default=[], metavar="NAME",
                          help="add an opt-in pass to the defaults (repeatable): "
                               f"{', '.join(sorted(OPT_IN))}")
    compile_.add_argument("--vary", type=_name, action="append", metavar="DIM",
                          help="a sized dim the inputs may have shorter, params sliced to "
                               "it (repeatable; default: token positions)")
    compile_.add_argument("--no-decode", action="store_true",
                          help="leave out incremental decoding (the forward's cache= "
                               "argument and new_cache(), derived from the causal masks)")
    compile_.add_argument("--shard", type=_name, metavar="DIM,...",
                          help="add a parallelize(mesh) method applying the tensor-parallel "
                               "plan for sharding these dims (tndsl cost --shard prints it)")
    compile_.add_argument("--ranks", type=_bounded_int(1, MAX_RANKS), default=2,
                          metavar="N",
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
    render.add_argument("name", type=_name, nargs="?", metavar="NAME")
    render.add_argument("-o", "--out", metavar="FIGURE",
                        help="where to write the figure (" + ", ".join(FORMATS) + ")")
    depth = render.add_mutually_exclusive_group()
    depth.add_argument("--expand", action="store_true",
                       help="inline every definition down to params and inputs")
    depth.add_argument("--depth", type=_bounded_int(0), default=0,
                       metavar="N",
                       help="inline N levels of definitions (default 0)")
    render.add_argument("--indices", action="store_true", help="label wires with index names")
    render.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                        metavar="NAME=SIZE", help="give or override a dim's size")
    render.add_argument("--check", action="store_true",
                        help="NAME is a check: draw it as lhs = rhs")
    _figure_options(render)
    render.add_argument("--hooks", action="store_true",
                        help="draw the hook map: NAME = ..., with every hook point of a "
                             "model compiled for NAME named where it is "
                             "(blocks.0.attn.pattern): a drawn intermediate's name above "
                             "it, an inlined equation's on a dotted region around it, "
                             "those hidden inside an intermediate listed above it")

    cost = commands.add_parser(
        "cost", help="contraction orders, FLOPs and intermediate sizes, symbolically",
        description="For each equation (or NAME: one equation, or every equation under an "
                    "instance path such as blocks.3), the planned contraction order, FLOPs "
                    "and the largest intermediate as polynomials in the dim names, their "
                    "values at the file's sizes, the naive left-to-right cost, per-instance "
                    "totals and the dominant term: the leading term as the dims without a "
                    "size grow (highest total degree in them), ties broken by the value at "
                    "the file's sizes with each unsized dim at 128; with every dim sized, "
                    "the largest term.")
    cost.add_argument("file", metavar="FILE")
    cost.add_argument("name", type=_name, nargs="?", metavar="NAME")
    cost.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                      metavar="NAME=SIZE", help="give or override a dim's size")
    cost.add_argument("--json", action="store_true", help="machine-readable output")
    cost.add_argument("--shard", type=_name, metavar="DIM,...",
                      help="instead, the tensor-parallel plan for sharding these dims: "
                           "sharded params and the collectives per forward, in bytes "
                           "(NAME, if given, is the output)")
    cost.add_argument("--ranks", type=_bounded_int(1, MAX_RANKS), default=2,
                      metavar="N",
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
    study.add_argument("--steps", type=_bounded_int(1), default=2500,
                       help="training steps, at least 1 (default 2500)")
    study.add_argument("--seed", type=_bounded_int(0, MAX_SEED), default=0,
                       help="random seed, 0 to 2**63 - 1 (default 0)")
    study.add_argument("--weights", metavar="FILE",
                       help="re-run the analysis on saved weights (a study's "
                            "weights.safetensors, its config beside it) without training")

    _paths_parser(commands)
    _families_parser(commands)

    verify = commands.add_parser(
        "verify", help="prove the files' checks; optionally check the compiled module",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prove every `check A == B` of each file and report each as proven (by "
                    "the symbolic tier, for every size and value), refuted (with the "
                    "residual and a counterexample: a real instance of the file, fixed "
                    "tensors at their built-in values), supported (it held on every "
                    "evaluation tried: evidence, not proof) or unknown. With --compiled, "
                    "also run the compiled module and the independent reference evaluator "
                    "on the same random data at small sizes in float64 (fails above 1e-9 "
                    "relative); --compiled-only runs only that comparison.",
        epilog="exit codes:\n"
               "  0  every check proven (and, with --compiled, the compiled module matches)\n"
               "  1  a check refuted, the compiled module does not match, or an input error\n"
               "  2  with --strict: no refutation, but a check is supported or unknown,\n"
               "     or the compiled comparison was incomplete (overflow, unreachable mask)\n"
               "     (2 is also argparse's code for a usage mistake)\n"
               "  3  an internal error (please report it)\n"
               "Without --strict, supported and unknown checks exit 0.")
    verify.add_argument("files", nargs="+", metavar="FILE")
    compiled = verify.add_mutually_exclusive_group()
    compiled.add_argument("--compiled", action="store_true",
                          help="also compare the compiled module with the reference evaluator")
    compiled.add_argument("--compiled-only", action="store_true",
                          help="only compare the compiled module with the reference evaluator "
                               "(the exit code says only whether they match)")
    verify.add_argument("--strict", action="store_true",
                        help="exit 2 if any check is only supported or unknown")
    verify.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                        metavar="NAME=SIZE", help="sizes to verify at (default: small ones "
                                                  "chosen automatically)")
    verify.add_argument("--seed", type=_bounded_int(0, MAX_SEED), default=0,
                        help="random seed of --compiled's data, 0 to 2**63 - 1 (default 0)")
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
            print(f"{terminal(path)}: ok")
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
        if args.out:
            _write_text(args.out, generated.source)
    except TnError as e:
        _report(e, args.file)
        return 1
    if args.out:
        print(f"{terminal(args.out)}: class {generated.class_name}"
              f"({', '.join(generated.arguments)}) -> {', '.join(generated.outputs)}")
    else:
        sys.stdout.write(generated.source)
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Exit codes: see the `verify` parser's epilog (and docs/verification.md)."""
    from tndsl.verify import prove_all
    from tndsl.verify.prove import STATUSES
    failed = doubtful = False
    dims = dict(args.dim) or None
    totals = dict.fromkeys(STATUSES, 0)
    for path in args.files:
        shown = terminal(path)
        try:
            program = load(path)
            results = [] if args.compiled_only else prove_all(program, dims=dims)
            report = (program.verify_compiled(dims=dims, seed=args.seed)
                      if args.compiled or args.compiled_only else None)
        except TnError as e:
            _report(e, path)
            failed = True
            continue
        for result in results:
            print(result.render())
        counts = {status: sum(r.status == status for r in results) for status in STATUSES}
        for status, n in counts.items():
            totals[status] += n
        if not args.compiled_only:
            print(f"{shown}: {len(results)} check{'s' if len(results) != 1 else ''}: "
                  + ", ".join(f"{n} {status}" for status, n in counts.items()))
        if report is not None:
            print(f"{shown}: {report.render()}")
        failed |= counts["refuted"] > 0 or (report is not None and not report.ok)
        doubtful |= counts["supported"] + counts["unknown"] > 0 or \
            (report is not None and not report.complete)
    if len(args.files) > 1 and not args.compiled_only:
        print(f"{len(args.files)} files: {sum(totals.values())} checks: "
              + ", ".join(f"{n} {status}" for status, n in totals.items()))
    if failed:
        return 1
    return 2 if args.strict and doubtful else 0


def _legs(text: str) -> str:
    """An argparse type for `--legs LEFT/RIGHT`: its syntax checked at once (whether each
    index is an open leg, once the equation is known)."""
    from tndsl.render.layout import LayoutError, parse_legs
    _name(text)
    try:
        parse_legs(text)
    except LayoutError as e:
        raise argparse.ArgumentTypeError(e.message) from None
    return text


def _width(text: str) -> str:
    """An argparse type for `--width`: a length with a unit, checked at once."""
    from tndsl.render import LayoutError, parse_length
    _name(text)
    try:
        parse_length(text)
    except LayoutError as e:
        raise argparse.ArgumentTypeError(e.message) from None
    return text


def _font_size(text: str) -> float:
    """An argparse type for `--font-size`: pt, from 4 to 72 (the layout's bounds)."""
    from tndsl.render.layout import MAX_FONT_SIZE, MIN_SET_FONT_SIZE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a size in pt, got "
                                         f"{terminal(repr(text))}") from None
    if not MIN_SET_FONT_SIZE <= value <= MAX_FONT_SIZE:
        raise argparse.ArgumentTypeError(f"must be from {MIN_SET_FONT_SIZE:g} to "
                                         f"{MAX_FONT_SIZE:g} pt, got {terminal(text)}")
    return value


def _figure_options(parser) -> None:
    """The options of every command that draws a figure (`render`, `paths --render`):
    size, type, legs and the raster and SVG settings, defined once."""
    parser.add_argument("--width", type=_width, metavar="LENGTH",
                        help="lay the figure out this wide (3.25in, 6.75in, 17cm, 480pt), "
                             "wrapping sums into rows; without --font-size, type is set "
                             "smaller (down to 7 pt) where that is needed to fit")
    parser.add_argument("--font-size", type=_font_size, metavar="PT",
                        help="label size in pt at the final size, 4 to 72 (default 10; "
                             "wire labels 0.9 of it)")
    parser.add_argument("--font", metavar="FACE",
                        help="the face (default Times: Nimbus Roman or TeX Gyre Termes), "
                             "e.g. 'Latin Modern Roman'; it must be installed")
    parser.add_argument("--legs", type=_legs, metavar="LEFT/RIGHT",
                        help="which side each open leg leaves on: comma-separated indices "
                             "left of the slash leave left, right of it right, e.g. p/m, "
                             "h,p/s, /p,m (default: the first output index left, the last "
                             "right); every open leg once, on one side")
    parser.add_argument("--dpi", type=_bounded_int(1), default=300,
                        help="PNG resolution, at least 1 (default 300; a PNG wider than "
                             "cairo's 32,767 px is refused, naming the dpi that fits)")
    parser.add_argument("--no-outline", action="store_true",
                        help="keep SVG text as text (needs the fonts where it is shown)")


def _figure_layout(args: argparse.Namespace) -> dict:
    """The layout options `_figure_options` defines, as Program.render takes them."""
    return dict(width=args.width, font_size=args.font_size, font=args.font, legs=args.legs)


def _render(args: argparse.Namespace) -> int:
    if args.check and args.hooks:
        print("tndsl render: error: --hooks draws an equation's hook map, not a check: "
              "give an equation NAME without --check", file=sys.stderr)
        return 2
    try:
        program = load(args.file, dict(args.dim))
        if args.check and not args.name:
            raise TnError("--check needs the check's NAME",
                          hint="checks: " + ", ".join(c.label for c in program.network.checks)
                          if program.network.checks else "the file has no checks")
        options = dict(expand=args.expand, depth=args.depth, indices=args.indices,
                       **_figure_layout(args))
        if args.check:
            figure = program.render(check=args.name, **options)
        else:
            figure = program.render(args.name, hooks=args.hooks, **options)
        if args.out:
            figure.save(args.out, dpi=args.dpi, outline=not args.no_outline)
            print(f"{terminal(args.out)}: written")
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
    print(f"{terminal(args.out)}/report.md: previous-token head {p_layer}.{p_head} "
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
    from tndsl.interp.paths import FREEZABLE
    paths = commands.add_parser(
        "paths", help="expand an equation into a sum over paths through the blocks",
        description="Write the path expansion of equation NAME as a .tn file: the input "
                    "file followed by one named equation per path through the chosen block "
                    "instances (default: every instance added to a residual sum), with "
                    "attention patterns and the embedding kept whole and a head leg kept "
                    "open where a block sums over heads, and a `check` that NAME equals the "
                    "sum of the paths (prove it with `tndsl verify`). A name a loop rebinds "
                    "is expanded as text after the loop names it (`resid@2` of a 2-layer "
                    "loop is `resid`); an earlier version is refused.")
    paths.add_argument("file", metavar="FILE")
    paths.add_argument("name", type=_name, metavar="NAME")
    paths.add_argument("--through", type=_name, metavar="PATH,...",
                       help="the block instances paths may pass, comma-separated")
    paths.add_argument("-o", "--out", metavar="OUT.tn",
                       help="where to write the expansion (default: standard output)")
    paths.add_argument("--render", metavar="FIGURE",
                       help="also draw NAME = term + term + ..., each term labelled by "
                            "its path (.svg/.pdf/.png/.dot/.tex/.tikz)")
    paths.add_argument("--prefix", help="name the terms PREFIX.direct, ... (default: the "
                                        "last segment of NAME)")
    paths.add_argument("--freeze", action="append", default=[], metavar="WHAT",
                       choices=FREEZABLE,
                       help="`norms`: make each layernorm / rmsnorm its input times a frozen "
                            "per-position scale (a param `frozen_scale` per instance, filled "
                            "from a run by tndsl.interp.attribution), so paths run through "
                            "the norms")
    paths.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                       metavar="NAME=SIZE", help="give or override a dim's size")
    _figure_options(paths.add_argument_group("the figure (with --render)"))


def _paths(args: argparse.Namespace) -> int:
    from tndsl.interp.paths import expand_paths, parse_through
    given = [flag for flag, value in (("--width", args.width), ("--font-size", args.font_size),
                                      ("--font", args.font), ("--legs", args.legs),
                                      ("--dpi", args.dpi != 300 or None),
                                      ("--no-outline", args.no_outline or None))
             if value is not None]
    if given and not args.render:
        print(f"tndsl paths: error: {given[0]} sets the figure: give --render FIGURE too",
              file=sys.stderr)
        return 2
    try:
        program = load(args.file, dict(args.dim))
        expansion = expand_paths(program, args.name, parse_through(args.through),
                                 prefix=args.prefix, freeze=args.freeze)
        expansion.program()  # the written file must check
        if args.out:
            _write_text(args.out, expansion.source)
            print(f"{terminal(args.out)}: {len(expansion.terms)} paths of "
                  f"{terminal(expansion.name)}, check {expansion.check}"
                  + (f", {len(expansion.frozen)} norms frozen" if expansion.frozen else ""))
            for term in expansion.terms:
                print(f"  {term.name}  ({term.label})")
        else:
            sys.stdout.write(expansion.source)
        if args.render:
            expansion.figure(**_figure_layout(args)).save(
                args.render, dpi=args.dpi, outline=not args.no_outline)
            print(f"{terminal(args.render)}: written",
                  file=sys.stderr if not args.out else sys.stdout)
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


def _families_parser(commands) -> None:
    families = commands.add_parser(
        "families", help="list the model families from_pretrained loads",
        description="List each model family: its .tn file, the Hugging Face model_type and "
                    "transformers classes it loads, and the float64 tolerance against "
                    "transformers asserted in CI. With NAME (a family or a model_type), "
                    "that family's config keys: the sizes and consts it reads, each key "
                    "that changes the computation with the values it implements, and the "
                    "keys that do not.")
    families.add_argument("name", nargs="?", metavar="NAME")
    families.add_argument("--markdown", action="store_true",
                          help="print the generated tables of docs/families.md")


def _families(args: argparse.Namespace) -> int:
    from tndsl.models import listing
    if args.markdown:
        print(listing.markdown())
    elif args.name is not None:
        try:
            family = listing.find(args.name)
        except KeyError as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 1
        print(listing.settings_text(family))
    else:
        print(listing.text())
    return 0


COMMANDS = {"check": _check, "compile": _compile, "verify": _verify, "cost": _cost,
            "render": _render, "study": _study, "paths": _paths, "families": _families}


def main(argv: Sequence[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Terminal(stdout), _Terminal(stderr)
    try:
        args = _parser().parse_args(argv)
        for name, suffixes, folder in OUTPUTS.get(args.command, ()):
            value = getattr(args, name, None)
            problem = value is not None and _output_problem(value, suffixes, folder)
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                return 1
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # the promise: no traceback, ever
        print(f"tndsl: internal error ({type(e).__name__}: {e}); please report it at "
              f"{REPORT_URL} with the input that caused it", file=sys.stderr)
        return 3
    finally:
        sys.stdout, sys.stderr = stdout, stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
