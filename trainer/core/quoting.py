"""Quoting user-supplied values in error messages without echoing them whole.

A bad value can be huge: a 400-byte YAML alias bomb expands to a nested list whose ``repr`` is
tens of megabytes (or a MemoryError), and a pasted file can land in a string key. Error lines
quote at most a short prefix of any value, built with ``reprlib`` so that even the nested
structure is never walked in full.
"""

from __future__ import annotations

import reprlib

MAX_QUOTE_CHARS = 60

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxstring = _repr.maxother = _repr.maxlong = MAX_QUOTE_CHARS


def brief(value: object, limit: int = MAX_QUOTE_CHARS) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (``...`` marks a cut), on one line."""
    text = _repr.repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
