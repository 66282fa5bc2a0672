"""Text in, text out: tokenizing, and generation with the key/value cache tndsl derived
from the diagram, with hooks active at every step.

    model = tndsl.from_pretrained("path/to/checkpoint")      # loads tokenizer.json too
    out = tndsl.generate(model, "The Golden Gate", max_new_tokens=20)
    out.text[0]                                               # prompt and continuation
    with tndsl.hooks.intervene(model, {"blocks.3.out": steering}):
        steered = model.generate("The Golden Gate", 20, return_cache=["blocks.3.out"])
    steered.cache["blocks.3.out"]                             # [1, positions, Model]

Decoding feeds the prompt once, then one token a step, through `model.new_cache()`
(`tndsl.codegen.decode`): each step computes only the new position, reading the cached
keys and values of the earlier ones; `use_cache=False` recomputes the whole sequence
each step instead (the same tokens; slower); `compile=True` runs the forward through
`torch.compile` with a static cache (`max_length`), one graph for the prompt and one
every later step reuses. Sampling follows Hugging Face's `generate`: greedy by
default; with `do_sample=True`, temperature, then top-k, then top-p (nucleus)
filtering, from a `torch.Generator` seeded by `seed`. Batched prompts
of different lengths are padded on the left; a row that reaches a stop token (the
checkpoint's end-of-sequence token, or `stop=`) is finished and continues with padding.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from tndsl.interp.hooks import hook_points, intervene
from tndsl.lang import ir
from tndsl.lang.errors import TnError
from tndsl.models.tokenizer import Tokenizer, TokenizerError, require
from tndsl.passes.decode import NEW, derive


class GenerateError(TnError):
    """A generation request that cannot run (bad arguments, a model that cannot decode)."""


@dataclass
class Generation:
    """What `generate` returns.

    `tokens`: [batch, padding + prompt + new] ids, prompts left-padded, finished rows
    continued with `pad_id`; `new_tokens`: the generated part; `pad`: each row's number
    of left-padding positions; `text` / `new_text`: decoded (without padding) when the
    model has a tokenizer; `cache`: activations by hook name over every position
    (`return_cache`), batch first, positions where the hook point has them; `logits`:
    the last position's logits at each step, [batch, new, vocab] (`return_logits`)."""

    tokens: torch.Tensor
    new_tokens: torch.Tensor
    pad: torch.Tensor
    text: list[str] | None = None
    new_text: list[str] | None = None
    cache: dict[str, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    finished: torch.Tensor | None = field(default=None, repr=False)


# ---- tokens ---------------------------------------------------------------------------

def to_tokens(model: nn.Module, text: str | Sequence[str], prepend_bos: bool | None = None,
              padding_side: str = "left") -> torch.Tensor:
    """Token ids [batch, positions] for a text or a list of texts (padded to the longest
    with the pad token, on the left by default, as generation needs). BOS first as the
    checkpoint's tokenizer says, unless `prepend_bos` says otherwise."""
    rows = _encode(require(model), text, prepend_bos)
    tokens, _ = _pad(rows, _pad_id(model), padding_side)
    return tokens


def to_str_tokens(model: nn.Module, text, prepend_bos: bool | None = None):
    """Each token as text: a list for one text or one row of ids, a list of lists for a
    batch."""
    tokenizer = require(model)
    if isinstance(text, str):
        return tokenizer.token_strings(_encode(tokenizer, text, prepend_bos)[0])
    if isinstance(text, torch.Tensor):
        if text.dim() == 1:
            return tokenizer.token_strings(text.tolist())
        return [tokenizer.token_strings(row) for row in text.tolist()]
    if isinstance(text, Sequence) and text and all(isinstance(t, str) for t in text):
        return [tokenizer.token_strings(row) for row in _encode(tokenizer, text, prepend_bos)]
    if isinstance(text, Sequence) and all(isinstance(t, int) for t in text):
        return tokenizer.token_strings(list(text))
    raise TokenizerError(f"to_str_tokens takes text, a list of texts or token ids, not "
                         f"{type(text).__name__}")


def to_string(model: nn.Module, tokens) -> str | list[str]:
    """The text of one row of ids, or a list for a batch."""
    tokenizer = require(model)
    if isinstance(tokens, torch.Tensor) and tokens.dim() > 1:
        return [tokenizer.decode(row) for row in tokens.tolist()]
    return tokenizer.decode(tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens)


def _encode(tokenizer: Tokenizer, text, prepend_bos) -> list[list[int]]:
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, Sequence) or not texts or \
            not all(isinstance(t, str) for t in texts):
        raise TokenizerError("expected a text or a non-empty list of texts")
    return [tokenizer.encode(t, prepend_bos) for t in texts]


def _pad(rows: list[list[int]], pad_id: int, side: str = "left"):
    if side not in ("left", "right"):
        raise GenerateError(f"padding_side must be 'left' or 'right', not {side!r}")
    if any(len(r) == 0 for r in rows):
        raise GenerateError("a prompt has no tokens (give prepend_bos=True, or some text)")
    longest = max(len(r) for r in rows)
    pads = [longest - len(r) for r in rows]
    padded = [[pad_id] * p + r if side == "left" else r + [pad_id] * p
              for r, p in zip(rows, pads)]
    return torch.tensor(padded, dtype=torch.long), torch.tensor(pads, dtype=torch.long)


def _special(model: nn.Module, kind: str) -> int | None:
    tokenizer = getattr(model, "tokenizer", None)
    value = getattr(tokenizer, f"{kind}_id", None) if tokenizer is not None else None
    if value is None:
        value = (getattr(model, "special_tokens", None) or {}).get(kind)
    return value


def _pad_id(model: nn.Module) -> int:
    for kind in ("pad", "eos"):
        value = _special(model, kind)
        if value is not None:
            return value
    return 0


# ---- generation -----------------------------------------------------------------------

def generate(model: nn.Module, prompt, max_new_tokens: int = 20, *,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None,
             stop: int | str | Iterable[int | str] | None = None, stop_at_eos: bool = True,
             prepend_bos: bool | None = None, pad_id: int | None = None,
             hooks: Mapping[str, Callable] | None = None,
             return_cache: bool | Iterable[str] = False, return_logits: bool = False,
             use_cache: bool = True, max_length: int | None = None,
             compile: bool | Mapping[str, object] = False,
             progress: bool | None = None) -> Generation:
    """Continue `prompt` (a text, a list of texts, or ids: [positions] or [batch,
    positions], or a list of id lists) by up to `max_new_tokens` tokens.

    Greedy unless `do_sample`; then `temperature`, `top_k`, `top_p` as in Hugging Face,
    drawn with `seed`. A row stops at a `stop` token (ids, or texts of one token) or at
    the checkpoint's end-of-sequence token (`stop_at_eos`); generation ends when every
    row has. `hooks`: {hook name: fn(activation) -> replacement or None} active during
    the whole generation (as `tndsl.hooks.intervene`; hooks registered around the call
    work too). `return_cache`: True for every hook point, or the names to keep; each is
    captured at every step and put together over all positions (prompt and generated;
    entries at keys after their query are 0). `use_cache=False` recomputes the whole
    sequence at every step. `max_length`: a static key/value cache of that many
    positions (buffers allocated once; at least the prompt's positions plus
    `max_new_tokens`). `compile`: run the forward through `torch.compile` (True, or a
    dict of its arguments: `{"mode": "max-autotune"}`), with a static cache (of the
    prompt's positions plus `max_new_tokens` unless `max_length` says more): the
    prompt compiles one graph and every decoding step reuses a second. The compiled
    model is kept on `model`, so later calls with the same prompt length and
    `max_length` compile nothing. A model compiled already (`torch.compile(model)`) is
    run as it is, with the same static cache, and its hook points keep their names.
    `progress`: a progress bar (default: when stderr is a terminal)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 0:
        raise GenerateError(f"max_new_tokens must be a whole number >= 0, not {max_new_tokens!r}")
    _check_sampling(do_sample, temperature, top_k, top_p)
    run = None
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # loaded if anything compiled
    if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        if compile is not False:
            raise GenerateError("the model is compiled already: pass compile=False, or "
                                "the model itself with compile=")
        run, model = model, model._orig_mod
    device = _device(model)
    pad_id = _pad_id(model) if pad_id is None else pad_id
    tokens, pad = _prompt_tokens(model, prompt, prepend_bos, pad_id)
    tokens, pad = tokens.to(device), pad.to(device)
    stops = _stop_ids(model, stop, stop_at_eos)
    compiling = run is not None or compile is not False
    if compiling and not use_cache:
        raise GenerateError("compile needs the cache: without it each step's sequence is "
                            "one longer, and torch.compile would trace each step again",
                            hint="leave use_cache=True (a static cache) to compile")
    max_length = _max_length(max_length, tokens.size(1) + max_new_tokens, compiling)
    if run is None:
        run = _compiled(model, compile) if compiling else model
    generator = None
    if do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else torch.seed())
    padded = bool(pad.any())
    cache = _new_cache(model, pad if padded else None, max_length) if use_cache else None

    names = _cache_names(model, return_cache)
    plan = _plan(model) if names else None
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    # Each forward call's activations, moved to `captured` after it: a list that is
    # empty whenever a call starts, so torch.compile traces the same list every step.
    latest: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    capture = {name: _store(latest[name]) for name in names}
    all_hooks: dict[str, list] = {}
    for table in (hooks or {}, capture):
        for name, fn in table.items():
            all_hooks.setdefault(name, []).append(fn)

    batch = tokens.size(0)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    padding = pad if padded else None
    sequence, step_logits = tokens, []
    bar = _progress(max_new_tokens, progress)
    with intervene(model, all_hooks), torch.no_grad():
        # The prompt's logits are needed at its last position only (Hugging Face's
        # logits_to_keep): where the output is a per-position function of other values,
        # those are cut to that position first, so the unembedding runs once, not per
        # prompt position. Not while caching activations (they must be whole).
        last_only = {} if names or cache is None else _last_position_hooks(model)
        points = hook_points(model) if last_only else {}
        # Plain forward hooks: a cut changes the shape, which intervene() refuses.
        handles = [points[name].register_forward_hook(lambda module, args, x, cut=cut: cut(x))
                   for name, cut in last_only.items()]
        try:
            logits = _forward(run, model, sequence, cache, padding)
        finally:
            for handle in handles:
                handle.remove()
        _collect(latest, captured)
        for step in range(max_new_tokens):
            last = logits[..., -1, :]
            if return_logits:
                step_logits.append(last)
            chosen = _choose(last, do_sample, temperature, top_k, top_p, generator)
            chosen = torch.where(finished, torch.full_like(chosen, pad_id), chosen)
            sequence = torch.cat((sequence, chosen[:, None]), dim=1)
            finished |= torch.isin(chosen, stop_ids)
            if bar is not None:
                bar.update(1)
            final = step == max_new_tokens - 1 or bool(finished.all())
            if final and not names:
                break
            # The next logits; after the final token only for its activations, so the
            # returned cache covers every position.
            logits = _forward(run, model, sequence[:, -1:], cache, padding) \
                if cache is not None else _forward(run, model, sequence, None, padding)
            _collect(latest, captured)
            if final:
                break
    if bar is not None:
        bar.close()
    new_tokens = sequence[:, tokens.size(1):]
    result = Generation(sequence, new_tokens, pad, finished=finished)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        result.text = [tokenizer.decode(row[p:]) for row, p in
                       zip(_until_stop(sequence, tokens.size(1), stops), pad.tolist())]
        result.new_text = [tokenizer.decode(row) for row in _until_stop(new_tokens, 0, stops)]
    if names:
        counts = [tokens.size(1)] + [1] * (len(next(iter(captured.values()))) - 1)
        result.cache = {name: _assemble(values, plan, name, counts)
                        for name, values in captured.items()}
    if return_logits:
        result.logits = torch.stack(step_logits, dim=1) if step_logits else None
    return result


def _last_position_hooks(model) -> dict:
    """{hook name: cut to the last position} for the values the output equation reads
    per position, if it is one output computed position by position from equations
    (`logits[p, v] = final[p, m] * W_U[m, v] + ...`); else {}."""
    program = getattr(model, "tndsl_program", None)
    outputs = getattr(model, "tndsl_outputs", ())
    if program is None or len(outputs) != 1:
        return {}
    final = program.equation(outputs[0])
    plan = _plan(model)
    roles = plan.index_roles.get(final.name, {})
    positions = [i for i, r in roles.items() if r is not None]
    if len(positions) != 1 or positions[0] not in final.indices or \
            roles[positions[0]] != NEW or _has_box_or_mask(final.rhs):
        return {}
    p = positions[0]
    equations = {eq.name for eq in program.equations}
    cuts = {}
    for term in final.rhs.terms:
        for factor in term.factors:
            if not isinstance(factor, ir.Ref) or p not in factor.indices \
                    or factor.name == ir.ONES:  # broadcasting: takes its length from the rest
                continue
            if factor.name not in equations or factor.indices.count(p) != 1:
                return {}  # a param or input indexed by position: not cut here
            axis = factor.indices.index(p) - len(factor.indices)
            cuts[factor.name] = lambda x, axis=axis: x.narrow(axis, x.size(axis) - 1, 1)
    points = hook_points(model)
    return cuts if cuts and all(name in points for name in cuts) else {}


def _has_box_or_mask(node) -> bool:
    return any(not isinstance(f, (ir.Ref,)) for t in node.terms for f in t.factors)


def _forward(run, model, tokens, cache, pad):
    """`run` (the model, or its compiled form) on `tokens`."""
    if run is not model:
        # torch.compile assumes by default that module hooks never change, and a frame
        # compiled for one block (after a graph break) then runs for another block
        # with other hooks: it would drop a steering hook. Guarding them is correct.
        with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
            return _call(run, model, tokens, cache, pad)
    return _call(run, model, tokens, cache, pad)


def _call(run, model, tokens, cache, pad):
    if cache is not None:
        return run(tokens, cache=cache)
    if pad is not None:  # uncached and padded: a fresh cache carries the padding
        return run(tokens, cache=_new_cache(model, pad, None))
    return run(tokens)


def _max_length(max_length, needed: int, static: bool) -> int | None:
    """The static cache's length: `max_length` checked to hold every position, or
    (`static`: compiling) the positions needed."""
    if max_length is None:
        return needed if static else None
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise GenerateError(f"max_length must be a whole number, not {max_length!r}")
    if max_length < needed:
        raise GenerateError(f"max_length {max_length} cannot hold the prompt's positions and "
                            f"max_new_tokens: {needed} are needed",
                            hint=f"pass max_length={needed} or more, or fewer max_new_tokens")
    return max_length


def _compiled(model, options):
    """`torch.compile(model, **options)`, made once per options and kept on the model:
    a new compiled wrapper would trace everything again."""
    if options is True:
        options = {}
    if not isinstance(options, Mapping):
        raise GenerateError(f"compile must be True, False or a dict of torch.compile's "
                            f"arguments, not {options!r}")
    import inspect
    valid = [name for name in inspect.signature(torch.compile).parameters if name != "model"]
    for name in options:
        if name not in valid:
            raise GenerateError(f"compile: torch.compile has no argument {name!r}",
                                hint=f"its arguments: {', '.join(valid)}")
    key = tuple(sorted((name, repr(value)) for name, value in options.items()))
    kept = model.__dict__.setdefault("_tndsl_compiled", _Compiled())
    if key not in kept:
        kept[key] = torch.compile(model, **options)
    return kept[key]


class _Compiled(dict):
    """A model's compiled forms by options: left out of a copy or pickle of the model
    (each refers to the model it was made for)."""

    def __deepcopy__(self, memo):
        return _Compiled()

    def __reduce__(self):
        return _Compiled, ()


def _new_cache(model, pad, max_length):
    if not hasattr(model, "new_cache"):
        program = getattr(model, "tndsl_program", None)
        if program is not None:
            derive(program.network, program.sizes)  # raises the located reason
        raise GenerateError("this model cannot decode incrementally: it was compiled "
                            "without a cache (decode=False), or is not a sequence model",
                            hint="pass use_cache=False to recompute every step")
    try:
        return model.new_cache(pad=pad, max_length=max_length)
    except ValueError:
        program = getattr(model, "tndsl_program", None)
        if program is not None:
            derive(program.network, program.sizes)  # the located DecodeError
        raise


def _device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _prompt_tokens(model, prompt, prepend_bos, pad_id):
    if isinstance(prompt, torch.Tensor):
        if prompt.dtype.is_floating_point or prompt.dtype.is_complex:
            raise GenerateError("a prompt of ids must be an integer tensor")
        if prompt.dim() == 1:
            prompt = prompt[None]
        if prompt.dim() != 2 or prompt.size(1) == 0:
            raise GenerateError(f"a prompt of ids must be [positions] or [batch, positions], "
                                f"non-empty; got shape {tuple(prompt.shape)}")
        return prompt.long(), torch.zeros(prompt.size(0), dtype=torch.long)
    if isinstance(prompt, str) or (isinstance(prompt, Sequence) and prompt
                                   and all(isinstance(p, str) for p in prompt)):
        return _pad(_encode(require(model), prompt, prepend_bos), pad_id)
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, int) for p in prompt):
        return _pad([list(prompt)], pad_id)
    if isinstance(prompt, Sequence) and prompt and all(
            isinstance(p, Sequence) and all(isinstance(i, int) for i in p) for p in prompt):
        return _pad([list(p) for p in prompt], pad_id)
    raise GenerateError("the prompt must be a text, a list of texts, a tensor of ids or "
                        f"lists of ids, not {type(prompt).__name__}")


def _stop_ids(model, stop, stop_at_eos) -> set[int]:
    ids: set[int] = set()
    if stop_at_eos:
        eos = _special(model, "eos")
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    items = [] if stop is None else [stop] if isinstance(stop, (int, str)) else list(stop)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise GenerateError(f"a stop token is an id or a text, not {item!r}")
        if isinstance(item, int):
            ids.add(item)
            continue
        encoded = require(model).encode(item, prepend_bos=False)
        if len(encoded) != 1:
            raise GenerateError(f"stop text {item!r} is {len(encoded)} tokens; give one "
                                "token's text or its id")
        ids.add(encoded[0])
    return ids


def _check_sampling(do_sample, temperature, top_k, top_p) -> None:
    if not do_sample:
        return
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise GenerateError(f"temperature must be > 0, not {temperature!r}",
                            hint="for greedy decoding leave do_sample=False")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise GenerateError(f"top_k must be a whole number >= 1, not {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise GenerateError(f"top_p must be in (0, 1], not {top_p!r}")


def _choose(logits, do_sample, temperature, top_k, top_p, generator) -> torch.Tensor:
    """The next token per row: argmax, or a draw after Hugging Face's warpers (temperature,
    top-k, top-p, in that order)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.size(-1):
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= 1 - top_p
        remove[..., -1:] = False  # keep at least one
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _until_stop(tokens: torch.Tensor, start: int, stops: set[int]) -> list[list[int]]:
    """Each row up to its first stop token at or after `start`, included (the padding
    that follows a finished row is not text)."""
    rows = []
    for row in tokens.tolist():
        end = next((k + 1 for k in range(start, len(row)) if row[k] in stops), len(row))
        rows.append(row[:end])
    return rows


# ---- activations at every step ----------------------------------------------------------

def _cache_names(model, return_cache) -> list[str]:
    if return_cache is False or return_cache is None:
        return []
    points = hook_points(model)
    if return_cache is True:
        return list(points)
    names = [return_cache] if isinstance(return_cache, str) else list(return_cache)
    for name in names:  # intervene() checks them too, with suggestions
        if name not in points:
            from tndsl.lang.errors import UnknownNameError, did_you_mean
            raise UnknownNameError(f"no hook point `{name}` in this model",
                                   hint=did_you_mean(name, points) or "")
    return names


def _plan(model):
    """The model's decoding plan (derived once per model and kept on it)."""
    program = getattr(model, "tndsl_program", None)
    if program is None:
        return None
    kept = model.__dict__.get("_tndsl_decode_plan")
    if kept is None or kept[0] is not program:
        kept = model.__dict__["_tndsl_decode_plan"] = (program, derive(program.network,
                                                                       program.sizes))
    return kept[1]


def _store(values: list):
    def hook(activation):
        values.append(activation.detach().clone())
    return hook


def _collect(latest: dict[str, list], captured: dict[str, list]) -> None:
    """Move one forward call's activations to those of every step."""
    for name, values in latest.items():
        captured[name].extend(values)
        values.clear()


def _assemble(values: list[torch.Tensor], plan, name: str, counts: list[int]
              ) -> torch.Tensor:
    """One hook point's values from every step as one tensor over all positions:
    joined along its new-position legs, each step's key legs padded with zeros to the
    final length (or, from a static cache's buffers, cut to it). The legs' roles come
    from the decoding plan; for a hook point the program does not know (an attached
    SAE's), the new-position leg is the one whose size was each step's number of new
    positions (`counts`)."""
    roles = plan.roles.get(name) if plan is not None else None
    if roles is None:
        roles = _roles_from_shapes(values, counts)
    if not any(r is not None for r in roles):
        return values[-1]  # not position-dependent: the same every step
    n = len(roles)
    new_axes = [k - n for k, r in enumerate(roles) if r == NEW]
    key_axes = [k - n for k, r in enumerate(roles) if r is not None and r != NEW]
    total = sum(v.size(new_axes[0]) for v in values) if new_axes else None
    parts = []
    for value in values:
        for axis in key_axes:
            if total is not None and value.size(axis) < total:
                shape = list(value.shape)
                shape[axis] = total - value.size(axis)
                value = torch.cat((value, value.new_zeros(shape)), dim=axis)
            elif total is not None and value.size(axis) > total:  # a static cache's width
                value = value.narrow(axis, 0, total)
        parts.append(value)
    if not new_axes:
        return parts[-1]
    return torch.cat(parts, dim=new_axes[0])


def _roles_from_shapes(values: list[torch.Tensor], counts: list[int]) -> tuple:
    """`new` for the first axis (batch excluded) sized as each step's new positions."""
    rank = values[0].dim()
    for axis in range(1, rank) if rank > 1 else range(rank):
        if all(v.dim() == rank and v.size(axis) == c for v, c in zip(values, counts)):
            return tuple(NEW if k == axis else None for k in range(rank))
    return (None,) * rank


def _progress(total: int, wanted: bool | None):
    if wanted is False or total == 0:
        return None
    if wanted is None and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return None
    return tqdm(total=total, desc="generating", unit="token", leave=False)


# ---- methods on a loaded model -------------------------------------------------------------

def add_text_methods(model: nn.Module, tokenizer: Tokenizer | None = None) -> nn.Module:
    """Give `model` `generate`, `to_tokens`, `to_str_tokens` and `to_string` methods
    (and `tokenizer`, if given): what `tndsl.from_pretrained` returns has them."""
    import types
    if tokenizer is not None:
        model.tokenizer = tokenizer
    elif not hasattr(model, "tokenizer"):
        model.tokenizer = None
    for fn in (generate, to_tokens, to_str_tokens, to_string):
        setattr(model, fn.__name__, types.MethodType(fn, model))
    return model
