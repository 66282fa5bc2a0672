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
MODULE_NAMES = {"math", "torch", "F", "nn", "self", "inputs"}


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
