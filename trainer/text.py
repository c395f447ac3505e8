"""Text for one-line error messages, shared by the trainer and the launcher (no heavy imports)."""

from __future__ import annotations

import re
import reprlib

_REPR = reprlib.Repr()
_REPR.maxstring = 100
_REPR.maxother = 100
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4


def shown(value: object, limit: int = 120) -> str:
    """``repr(value)`` for an error line: bounded in size however large or deep (or
    alias-shared) the value is, and free of control characters."""
    text = _REPR.repr(value)
    text = escape(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def first_line(err: object, limit: int = 200) -> str:
    """The first line of an exception's message (or any text), cut at ``limit``; empty if none.
    Library errors often carry pages of context; an error line needs its first sentence."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else ""


_TF_INTERNALS = re.compile(r"\{\{[^}]*\}\}\s*|\s*\[Op:[^\]]*\](\s*name:\s*\S*\s*$)?")


def tf_message(err: object, limit: int = 200) -> str:
    """A TensorFlow error's own words: without its ``{{function_node ...}}`` prefix and
    ``[Op:...] name: ...`` suffix, on one line, cut at a word boundary."""
    text = _TF_INTERNALS.sub("", getattr(err, "message", None) or str(err)).strip()
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " ..."


def escape(text: str) -> str:
    """Control and format characters (ANSI/OSC escapes, newlines, bidi overrides) as
    ``\\xNN``/``\\uNNNN`` so that a message cannot act on the terminal or span lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else (
        f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
