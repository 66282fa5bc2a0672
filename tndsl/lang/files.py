"""Reading files a user names, bounded: sources, configs, weights.

A path may name something that is not a file: a FIFO (opening it waits for a writer
forever), a device (`/dev/zero` never ends), a directory. And a real file may be far
larger than anything tndsl reads. So every file tndsl reads is first opened without
blocking and checked to be a regular file, then read up to its limit plus one byte: a
file past the limit is refused having read no more than that.

    data = read_limited(path, 16 * 2**20, what="config")     # bytes
    config = read_json(path, what="config")      # parsed, at most JSON_LIMIT bytes
    require_regular(path, what="weights")      # for a file a library opens itself

Both raise `TnError` (or the `error` class given, a subclass) naming the path (made
safe for a terminal) and what was wrong.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tndsl.lang.errors import TnError
from tndsl.lang.text import terminal

# The largest JSON file read (config.json, a sharded checkpoint's index): Hugging Face
# configs are kilobytes, the index of a 400-billion-parameter model about a megabyte.
JSON_LIMIT = 64 * 2**20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refuse(path, mode: int, what: str, error: type[TnError]) -> TnError:
    return error(f"cannot read {terminal(path)}: it is {_kind(mode)}, not a regular file",
                 hint=f"give the {what} as a regular file")


def require_regular(path: str | Path, *, what: str = "file",
                    error: type[TnError] = TnError) -> None:
    """Raise unless `path` is a regular file (symbolic links followed); never opens it,
    so a FIFO cannot block."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise error(f"cannot read {terminal(path)}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise _refuse(path, mode, what, error)


def read_limited(path: str | Path, limit: int, *, what: str = "file",
                 error: type[TnError] = TnError) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them: a larger file
    is refused after reading `limit + 1` bytes. Opened non-blocking, so a FIFO is
    refused at once rather than waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"cannot read {terminal(path)}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse(path, mode, what, error)
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise error(f"cannot read {terminal(path)}: {e.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise error(f"cannot read {terminal(path)}: the {what} is larger than the limit of "
                    f"{limit:,} bytes")
    return data


def read_json(path: str | Path, *, what: str = "JSON file", limit: int = JSON_LIMIT,
              error: type[TnError] = TnError):
    """The JSON value in the file at `path` (read by `read_limited`): not UTF-8, not
    JSON, or nested deeper than Python's parser goes (`[[[[...` 100,000 deep) is an
    `error` naming the path."""
    data = read_limited(path, limit, what=what, error=error)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"cannot read {terminal(path)}: not UTF-8 ({e.reason} at byte "
                    f"{e.start})") from None
    except ValueError as e:
        raise error(f"cannot read {terminal(path)}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"cannot read {terminal(path)}: the JSON is nested too deeply") from None
