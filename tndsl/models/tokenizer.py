"""A checkpoint folder's tokenizer, read offline: text ↔ token ids.

`tokenizer.json` is read with the `tokenizers` library (what Hugging Face's fast
tokenizers are built on; transformers installs it); nothing is downloaded. Special
tokens come from `config.json` (`bos_token_id`, `eos_token_id`, `pad_token_id`) and,
where present, `tokenizer_config.json` / `special_tokens_map.json` (token strings).

Whether a beginning-of-sequence token is put first follows the checkpoint: the
tokenizer's own post-processor adds it (Llama, Gemma), or `tokenizer_config.json` says
`add_bos_token`; otherwise none is added (GPT-2, Pythia, Qwen2 as Hugging Face encode
them). `prepend_bos=True/False` overrides that per call.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from tndsl.lang.errors import TnError

TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(TnError):
    """No tokenizer, or one that cannot be read or cannot do what was asked."""


@dataclass
class Tokenizer:
    """`encode` / `decode` for one checkpoint, with its special token ids."""

    inner: object                  # a tokenizers.Tokenizer
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False          # the checkpoint's default for prepend_bos
    adds_bos_itself: bool = False  # the post-processor already puts BOS first
    source: str = ""

    @classmethod
    def from_folder(cls, folder: str | Path, config: Mapping | None = None
                    ) -> "Tokenizer | None":
        """The folder's tokenizer, or None where it has no `tokenizer.json`."""
        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            return None
        try:
            from tokenizers import Tokenizer as Inner
        except ImportError:  # pragma: no cover - installed with transformers
            raise TokenizerError("reading tokenizer.json needs the `tokenizers` package "
                                 "(pip install tokenizers)") from None
        try:
            inner = Inner.from_file(str(path))
        except Exception as e:  # the library raises plain Exceptions on bad files
            raise TokenizerError(f"cannot read {path}: {e}") from None
        config = dict(config or {})
        extra = _json(folder / "tokenizer_config.json")
        special = _json(folder / "special_tokens_map.json")

        def token_id(kind: str) -> int | None:
            value = config.get(f"{kind}_token_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            for table in (extra, special):
                token = table.get(f"{kind}_token")
                if isinstance(token, dict):
                    token = token.get("content")
                if isinstance(token, str) and inner.token_to_id(token) is not None:
                    return inner.token_to_id(token)
            return None

        bos, eos, pad = token_id("bos"), token_id("eos"), token_id("pad")
        probe = inner.encode("", add_special_tokens=True).ids
        adds_itself = bos is not None and bool(probe) and probe[0] == bos
        add_bos = adds_itself or bool(extra.get("add_bos_token", False))
        return cls(inner, bos, eos, pad, add_bos, adds_itself, str(path))

    # ---- text → ids ----------------------------------------------------------------------
    def encode(self, text: str, prepend_bos: bool | None = None) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"expected text (a str), got {type(text).__name__}")
        want = self.add_bos if prepend_bos is None else bool(prepend_bos)
        ids = list(self.inner.encode(text, add_special_tokens=self.adds_bos_itself).ids)
        has = self.bos_id is not None and bool(ids) and ids[0] == self.bos_id \
            and self.adds_bos_itself
        if has and not want:
            ids = ids[1:]
        elif want and not has:
            if self.bos_id is None:
                raise TokenizerError("prepend_bos: this checkpoint names no BOS token "
                                     "(config.json has no bos_token_id)")
            ids = [self.bos_id] + ids
        return ids

    # ---- ids → text ----------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.inner.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each id as its own text (as decoded alone, so byte-level tokens read as text)."""
        return [self.inner.decode([int(i)], skip_special_tokens=False) for i in ids]

    @property
    def pad(self) -> int:
        """The id left padding uses: the pad token, else EOS, else 0 (never attended)."""
        for value in (self.pad_id, self.eos_id):
            if value is not None:
                return value
        return 0


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def require(model) -> Tokenizer:
    """The tokenizer attached to `model`, or a clear error saying how to get one."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise TokenizerError(
            "this model has no tokenizer: its checkpoint folder has no tokenizer.json",
            hint="pass token ids instead of text, or give one: "
                 "model.tokenizer = tndsl.models.Tokenizer.from_folder(folder)")
    return tokenizer
