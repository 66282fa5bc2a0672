"""Python identifiers for `.tn` names.

Text from a `.tn` file reaches generated code only through here (identifiers) or
through `repr()` (string literals), so a file cannot inject code: every identifier is
ASCII letters, digits and underscores, never a keyword, a builtin, a dunder or a name
the generated module itself uses, and two names never map to the same identifier.
"""
from __future__ import annotations

import builtins
import keyword
import re

# Names the generated module defines or imports at its top level.
MODULE_NAMES = {"math", "torch", "F", "nn", "self", "inputs", "HookPoint"}

# Attributes of a `torch.nn.Module` instance (torch 2.x), written out so that compiling
# does not import torch; tests/test_compile.py checks it against the installed torch.
# A param or submodule may not take one of these names, nor the generated classes' own.
NN_MODULE_ATTRS = frozenset({
    'T_destination', '__annotations__', '__call__', '__class__', '__delattr__',
    '__dict__', '__dir__', '__doc__', '__eq__', '__format__', '__ge__', '__getattr__',
    '__getattribute__', '__getstate__', '__gt__', '__hash__', '__init__',
    '__init_subclass__', '__le__', '__lt__', '__module__', '__ne__', '__new__',
    '__reduce__', '__reduce_ex__', '__repr__', '__setattr__', '__setstate__',
    '__sizeof__', '__str__', '__subclasshook__', '__weakref__', '_apply',
    '_backward_hooks', '_backward_pre_hooks', '_buffers', '_call_impl',
    '_compiled_call_impl', '_forward_hooks', '_forward_hooks_always_called',
    '_forward_hooks_with_kwargs', '_forward_pre_hooks',
    '_forward_pre_hooks_with_kwargs', '_get_backward_hooks', '_get_backward_pre_hooks',
    '_get_name', '_is_full_backward_hook', '_load_from_state_dict',
    '_load_state_dict_post_hooks', '_load_state_dict_pre_hooks',
    '_maybe_warn_non_full_backward_hook', '_modules', '_named_members',
    '_non_persistent_buffers_set', '_parameters', '_register_load_state_dict_pre_hook',
    '_register_state_dict_hook', '_replicate_for_data_parallel', '_save_to_state_dict',
    '_slow_forward', '_state_dict_hooks', '_state_dict_pre_hooks', '_version',
    '_wrapped_call_impl', 'add_module', 'apply', 'bfloat16', 'buffers',
    'call_super_init', 'children', 'compile', 'cpu', 'cuda', 'double', 'dump_patches',
    'eval', 'extra_repr', 'float', 'forward', 'get_buffer', 'get_extra_state',
    'get_parameter', 'get_submodule', 'half', 'ipu', 'load_state_dict', 'modules',
    'mtia', 'named_buffers', 'named_children', 'named_modules', 'named_parameters',
    'parameters', 'register_backward_hook', 'register_buffer', 'register_forward_hook',
    'register_forward_pre_hook', 'register_full_backward_hook',
    'register_full_backward_pre_hook', 'register_load_state_dict_post_hook',
    'register_load_state_dict_pre_hook', 'register_module', 'register_parameter',
    'register_state_dict_post_hook', 'register_state_dict_pre_hook', 'requires_grad_',
    'set_extra_state', 'set_submodule', 'share_memory', 'state_dict', 'to', 'to_empty',
    'train', 'training', 'type', 'xpu', 'zero_grad',
    # Set on nn.Module by torch.compile (dynamo) once a module has been compiled.
    '___needs_generation_tag_patch',
})
GENERATED_ATTRS = frozenset({"HOOK_ORDER", "tndsl_source", "tn_name", "hooked", "_tndsl_packed"})


class Namespace:
    def __init__(self, reserved: set[str] = frozenset()):
        self._taken = (set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins))
                       | MODULE_NAMES | set(reserved))
        self._by_key: dict[str, str] = {}

    def __call__(self, key: str, hint: str | None = None) -> str:
        """The identifier for `key` (the same every time), made from `hint` or the key."""
        if key in self._by_key:
            return self._by_key[key]
        base = sanitize(hint if hint is not None else key)
        name, n = base, 1
        while name in self._taken:
            n += 1
            name = f"{base}_{n}"
        self._taken.add(name)
        self._by_key[key] = name
        return name

    def fresh(self, hint: str) -> str:
        """A new identifier that no key owns (for temporaries)."""
        n = 1
        base = sanitize(hint)
        name = f"{base}_{n}"
        while name in self._taken:
            n += 1
            name = f"{base}_{n}"
        self._taken.add(name)
        return name


def sanitize(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text.replace("@", "_v"))
    name = re.sub(r"_+", "_", name).strip("_") or "t"
    if name[0].isdigit():
        name = "t_" + name
    return name


def class_name(stem: str) -> str:
    """`gpt2_small` -> `Gpt2Small`."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", stem) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts)
    if not name or name[0].isdigit() or keyword.iskeyword(name) or name in MODULE_NAMES:
        name = "Model" + name
    return name
