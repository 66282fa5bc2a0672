"""`ActivationCache`: the cached intermediates of one run, and what they decompose into.

`run_with_cache` (tndsl.interp.hooks) returns one. It is a read-only mapping from hook
name to tensor (so `cache["blocks.0.attn.pattern"]` and `for name in cache` work as with
a dict), and, for a model compiled from a `.tn` program (`Program.module()`,
`tndsl.from_pretrained`), it reads the residual stream off the program's IR
(`tndsl.interp.residual`), for any model with no per-family code:

    logits, cache = run_with_cache(model, tokens)          # every hook point
    stack, labels = cache.decompose_resid(return_labels=True)   # embed, blocks.0.attn, ...
    stack.sum(0)                                 # == cache["resid@2"] (float64 round-off)
    normed = cache.apply_ln_to_stack(stack)      # through ln_final's frozen scale
    cache.logit_attrs(normed, tokens[..., 1:])   # direct logit attribution

Stacks put the component first, then the run's batch dims, then the legs of the stream
(`[component, batch, p, m]`). Every decomposition is computed in float64 and sums exactly
(to round-off) to what it decomposes: the states of the stream, an instance's output, or
the logits (with `logit_bias`, the terms that read no component).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Iterator, Sequence

import torch

from tndsl.lang import ir
from tndsl.lang.errors import TnError
from tndsl.interp import residual as resid
from tndsl.interp.terms import Terms, legs_of


class ActivationCache(Mapping):
    """Hook name → cached tensor, with the residual-stream analyses (module docstring).
    `grads` maps hook names to d(metric)/d(activation) when the run asked for them."""

    def __init__(self, values: Mapping[str, torch.Tensor], *, model=None, program=None,
                 inputs: Mapping[str, torch.Tensor] | None = None,
                 grads: Mapping[str, torch.Tensor] | None = None):
        self._values = dict(values)
        self.model = model
        self.program = program if program is not None else getattr(model, "tndsl_program", None)
        self.inputs = dict(inputs or {})
        self.grads = dict(grads or {})

    # ---- the mapping -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hook points: {', '.join(list(self)[:4])}" + \
            (", ...)" if len(self) > 4 else ")")

    # ---- the stream --------------------------------------------------------------------
    @property
    def stream(self) -> resid.ResidualStream:
        return resid.residual_stream(self._program())

    def _program(self):
        if self.program is None:
            raise TnError("this cache has no program to read the residual stream from",
                          hint="build the model with Program.module() or tndsl.from_pretrained, "
                               "or pass program= to run_with_cache")
        return self.program

    def _get(self, names: Sequence[str], what: str) -> torch.Tensor:
        for name in names:
            if name in self._values:
                return self._values[name]
        raise TnError(f"{what} is not in the cache",
                      hint=f"cache one of {', '.join(names)} (or run_with_cache with names=None)")

    def _batch_shape(self) -> tuple[int, ...]:
        value = self._stream_value()
        return tuple(value.shape[:value.dim() - len(self.stream.legs)])

    def _stream_value(self) -> torch.Tensor:
        """Any cached value with the stream's legs: it gives the batch and sequence."""
        stream = self.stream
        for state in stream.states:
            for name in state.names:
                if name in self._values:
                    return self._values[name]
        for component in stream.components:
            if component.term is None and component.source in self._values:
                return self._values[component.source]
        raise TnError("the cache holds no value of the residual stream",
                      hint="run_with_cache(model, ...) with names=None, or including "
                           + stream.states[0].name)

    def _terms(self, override=None, batch_shape=None) -> Terms:
        weights = dict(self.model.named_parameters()) if self.model is not None else {}
        return Terms(self._program(), self._values, weights, self.inputs,
                     batch_shape=self._batch_shape() if batch_shape is None else batch_shape,
                     override=override, lengths=self._lengths())

    def _lengths(self) -> dict[str, int]:
        """The run's sizes of the stream's dims (the sequence may be shorter than declared)."""
        stream = self.stream
        value = self._stream_value()
        return {leg.dim: size for leg, size in zip(stream.legs, value.shape[-len(stream.legs):])}

    def _component(self, component: resid.Component, terms: Terms) -> torch.Tensor:
        if component.term is None:
            return self._get([component.source], f"`{component.source}` (the output of "
                             f"{component.name})").double()
        return terms.term(component.term, component.indices, dict(component.dims))

    def decompose_resid(self, layer: int | None = None, mode: str = "all",
                        incl_embeds: bool = True, apply_ln: bool = False,
                        return_labels: bool = False):
        """The components of the residual stream before layer `layer` (None: all of
        them), each named by its path (`embed`, `pos_embed`, `blocks.3.attn`,
        `blocks.3.mlp`): `[component, batch..., p, m]`, summing to the stream's state
        there. `mode`: "all", or a glob on the names ("*.attn", "attn" for "*.attn").
        `apply_ln`: through the norm that reads that state (`apply_ln_to_stack`)."""
        stream = self.stream
        chosen = stream.components[:stream.count_before(layer)]
        if not incl_embeds:
            chosen = tuple(c for c in chosen if c.layer is not None)
        if mode != "all":
            pattern = mode if any(ch in mode for ch in "*?[") or "." in mode else f"*.{mode}"
            chosen = tuple(c for c in chosen if fnmatch.fnmatchcase(c.name, pattern))
        terms = self._terms()
        stack = torch.stack([self._component(c, terms) for c in chosen]) if chosen else \
            torch.zeros((0,) + self._batch_shape(), dtype=torch.float64)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer)
        labels = [c.name for c in chosen]
        return (stack, labels) if return_labels else stack

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False,
                          apply_ln: bool = False, return_labels: bool = False):
        """The residual stream at the start of each layer up to `layer` (None: and after
        the last), `[state, batch..., p, m]`, labelled by the equation holding each
        (`resid`, `blocks.1.resid_pre`'s synonym `blocks.0.out`, ...). `incl_mid`: every
        state (after each instance), not only those between layers."""
        stream = self.stream
        limit = stream.count_before(layer)
        if incl_mid:
            states = [s for s in stream.states if s.count <= limit]
        else:
            counts = {stream.count_before(l) for l in stream.layers} | {limit}
            states = [s for s in stream.states if s.count <= limit and s.count in counts]
        values = []
        for state in states:
            present = [n for n in state.names if n in self._values]
            if present:
                values.append(self._values[present[0]].double())
            else:  # the exact sum of its components
                values.append(self.decompose_resid_to(state.count))
        stack = torch.stack(values)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer)
        labels = [s.name for s in states]
        return (stack, labels) if return_labels else stack

    def decompose_resid_to(self, count: int) -> torch.Tensor:
        stream = self.stream
        terms = self._terms()
        return sum(self._component(c, terms) for c in stream.components[:count])

    def stack_head_results(self, layer: int | None = None, apply_ln: bool = False,
                           return_labels: bool = False):
        """Each head's output of the attention layers before `layer` (None: all), the
        per-head result `z[p, h, e] * W_O[h, e, m]` derived from each instance's output
        equation: `[layer × head, batch..., p, m]`, labelled `blocks.0.attn.h3`. With
        `head_bias`, they sum to the instances' outputs."""
        stream = self.stream
        limit = stream.count_before(layer)
        before = {c.name for c in stream.components[:limit]}
        heads = [h for h in stream.heads if h.instance in before]
        terms = self._terms()
        stacks, labels = [], []
        for head in heads:
            value = self.head_result(head.instance, terms)  # [batch..., p, h, m]
            axis = value.dim() - 2
            stacks.extend(value.unbind(axis))
            labels.extend(f"{head.instance}.{head.index}{k}" for k in range(value.shape[axis]))
        if not stacks:
            raise TnError("no attention instance before " +
                          ("the end" if layer is None else f"layer {layer}") + " sums over heads")
        stack = torch.stack(stacks)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer)
        return (stack, labels) if return_labels else stack

    def head_result(self, instance: str, terms: Terms | None = None) -> torch.Tensor:
        """The per-head output of `instance`: `[batch..., p, h, m]` in float64 (the cached
        `INSTANCE.result` where the run cached it)."""
        head = self._head(instance)
        if head.name in self._values:
            return self._values[head.name].double()
        eq = self._program().equation(head.equation)
        terms = terms or self._terms()
        parts = [terms.term(eq.rhs.terms[k], head.indices, legs_of(eq)) for k in head.terms]
        return sum(parts)

    def head_bias(self, instance: str) -> torch.Tensor:
        """The terms of `instance`'s output that no head carries (`b_O`): its output is
        the per-head results summed over heads plus this."""
        head = self._head(instance)
        eq = self._program().equation(head.equation)
        terms = self._terms()
        rest = [terms.term(t, eq.indices, legs_of(eq)) for k, t in enumerate(eq.rhs.terms)
                if k not in head.terms]
        return sum(rest) if rest else torch.zeros((), dtype=torch.float64)  # broadcasts

    def _head(self, instance: str) -> resid.HeadResult:
        for head in self.stream.heads:
            if head.instance == instance:
                return head
        raise TnError(f"`{instance}` is not an attention instance added to the residual "
                      "stream", hint="attention instances: " +
                      ", ".join(h.instance for h in self.stream.heads))

    # ---- norms and logits --------------------------------------------------------------
    def norm_scale(self, layer: int | None = None, norm: str | None = None) -> torch.Tensor:
        """The frozen scale 1/sqrt(var + eps) (layernorm) or 1/sqrt(mean(x²) + eps)
        (rmsnorm) of the norm reading the stream before `layer` (or the norm named
        `norm`), per position: the argument's shape with the normalised axes kept as 1."""
        stream = self.stream
        chosen = stream.norm(norm) if norm is not None else stream.norm_reading(layer)
        names = (chosen.argument,) + tuple(n for n in stream.states[chosen.state].names
                                           if n != chosen.argument)
        x = self._get(names, f"the input of {chosen.name}").double()
        axes = tuple(a - len(stream.legs) for a in chosen.axes)
        if chosen.function == "layernorm":
            spread = x.var(dim=axes, keepdim=True, unbiased=False)
        else:
            spread = x.pow(2).mean(dim=axes, keepdim=True)
        return torch.rsqrt(spread + chosen.eps)

    def apply_ln_to_stack(self, stack: torch.Tensor, layer: int | None = None, *,
                          norm: str | None = None) -> torch.Tensor:
        """Each entry of `stack` ([n, batch..., p, m]) through the norm reading the stream
        before `layer` (None: the final norm), with its scale frozen at this run's value:
        centred (layernorm) and multiplied by `norm_scale`. Summed over the stack, a
        decomposition of that state gives the norm's box value exactly; its weight and
        bias are the readout's (`logit_attrs`). A model with no final norm (the
        attention-only one) takes stacks as they are: `layer=None` returns the stack."""
        stream = self.stream
        if norm is None and layer is None and self._final_norm() is None:
            return stack.double()
        chosen = stream.norm(norm) if norm is not None else stream.norm_reading(layer)
        stack = stack.double()
        if chosen.function == "layernorm":
            axes = tuple(a - len(stream.legs) for a in chosen.axes)
            stack = stack - stack.mean(dim=axes, keepdim=True)
        return stack * self.norm_scale(norm=chosen.name)

    def _final_norm(self) -> resid.Norm | None:
        stream = self.stream
        return next((n for n in stream.norms if n.state == len(stream.states) - 1), None)

    def _readout(self, target: str | None):
        stream = self.stream
        program = self._program()
        norm = self._final_norm()
        if norm is None:  # no norm: the readout is linear in the final state itself
            norm = stream.states[-1]
        if target is None:  # the last top-level equation that reads the stream: the logits
            for eq in reversed(program.equations):
                if eq.instance:
                    continue
                try:
                    holding, rest = resid.readout(program, norm, eq.name)
                except TnError:
                    continue
                target = eq.name
                break
            else:
                raise TnError("no equation reads the residual stream linearly after its end")
        else:
            holding, rest = resid.readout(program, norm, target)
        eq = program.equation(target)
        dims = resid.index_dims(program, holding + rest)
        dims.update(legs_of(eq))
        argument = program.equation(norm.argument if isinstance(norm, resid.Norm) else norm.name)
        for term in holding:
            for f in term.factors:
                if f.name == resid.PLACEHOLDER:
                    dims.update({i: leg.dim for i, leg in zip(f.indices, argument.legs)})
        return norm, eq, holding, rest, dims

    def logits_of(self, stack: torch.Tensor, target: str | None = None) -> torch.Tensor:
        """The readout (`logits`, default the program's final equation) of each entry of
        a normalised stack ([n, batch..., p, m] → [n, batch..., p, v]), without the terms
        that read no component (`logit_bias`)."""
        _, eq, holding, _, dims = self._readout(target)
        batch = (stack.shape[0],) + self._batch_shape()
        terms = self._terms(override={resid.PLACEHOLDER: stack.double()}, batch_shape=batch)
        return sum(terms.term(t, eq.indices, dims) for t in holding)

    def logit_bias(self, target: str | None = None) -> torch.Tensor:
        """The readout's terms that read no component (the norm's bias through W_U, b_U)."""
        _, eq, _, rest, dims = self._readout(target)
        terms = self._terms()
        if not rest:
            return torch.zeros((), dtype=torch.float64)  # broadcasts
        return sum(terms.term(t, eq.indices, dims) for t in rest)

    def logit_attrs(self, stack: torch.Tensor, tokens: torch.Tensor | int,
                    incorrect_tokens: torch.Tensor | int | None = None) -> torch.Tensor:
        """Direct logit attribution: each normalised component's contribution to the logit
        of `tokens` (ids per position, `[batch..., p]`, or one id for all), minus that of
        `incorrect_tokens` if given: `[n, batch..., p]`. With `apply_ln_to_stack` of a full
        decomposition, they sum with `logit_bias` to the model's logits exactly."""
        logits = self.logits_of(stack)
        picked = _pick(logits, tokens)
        if incorrect_tokens is not None:
            picked = picked - _pick(logits, incorrect_tokens)
        return picked

    def logit_lens(self, layer: int | None = None, incl_mid: bool = False) -> torch.Tensor:
        """The logits each state of the stream would give if the model stopped there:
        the final norm applied to it (its own scale, not frozen) and the readout, biases
        included: `[state, batch..., p, v]`. The last equals the model's logits."""
        stream = self.stream
        states = self.accumulated_resid(layer, incl_mid=incl_mid)
        norm = self._final_norm()
        if norm is None:
            return self.logits_of(states) + self.logit_bias()
        axes = tuple(a - len(stream.legs) for a in norm.axes)
        if norm.function == "layernorm":
            centred = states - states.mean(dim=axes, keepdim=True)
            spread = states.var(dim=axes, keepdim=True, unbiased=False)
        else:
            centred, spread = states, states.pow(2).mean(dim=axes, keepdim=True)
        return self.logits_of(centred * torch.rsqrt(spread + norm.eps)) + self.logit_bias()


def _pick(logits: torch.Tensor, tokens) -> torch.Tensor:
    """logits [n, batch..., p, v] at ids `tokens` ([batch..., p], or one int)."""
    if isinstance(tokens, int):
        return logits[..., tokens]
    tokens = torch.as_tensor(tokens, device=logits.device).long()
    index = tokens.expand(logits.shape[1:-1])[None, ..., None].expand(
        logits.shape[:-1] + (1,))
    return logits.gather(-1, index).squeeze(-1)


__all__ = ["ActivationCache"]
