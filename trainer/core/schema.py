"""Typed frozen dataclasses as configuration schemas: shared by the trainer's config and the
launcher's job spec.

A schema field carries its help text, its valid choices and (for the job spec) its validator in
the dataclass field's metadata, so the default, the docs and the check of a key are stated
once, on the field. Unknown keys are rejected with a did-you-mean and the list of valid keys.
No heavy import here: ``jobs/`` reads it without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trainer.core.errors import ConfigError
from trainer.core.quoting import brief

_NO_DEFAULT = dataclasses.MISSING


def doc_field(default: Any = _NO_DEFAULT, help: str = "", choices: tuple[str, ...] | None = None,
              check: Callable[..., Any] | None = None) -> Any:
    """A dataclass field carrying its help text, valid choices and validator in its metadata.

    A class or function as ``default`` is a default factory (a nested schema, a ``dict``).
    """
    meta = {"help": help, "choices": choices, "check": check}
    if default is _NO_DEFAULT:
        return dataclasses.field(metadata=meta)
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def has_default(f: dataclasses.Field) -> bool:
    return f.default is not _NO_DEFAULT or f.default_factory is not _NO_DEFAULT


def default_of(f: dataclasses.Field) -> Any:
    """The field's default value (a fresh one from its factory); None when it has none."""
    if f.default is not _NO_DEFAULT:
        return f.default
    if f.default_factory is not _NO_DEFAULT:
        return f.default_factory()
    return None


def did_you_mean(key: str, valid: list[str]) -> str:
    """``did you mean 'epochs'? valid keys: ...`` for an unknown ``key``."""
    close = difflib.get_close_matches(key[:100], valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid keys: {', '.join(valid)}"


def check_keys(values: Mapping[str, Any], valid: Iterable[str], where: str = "",
               what: str = "key", error: type[Exception] = ConfigError) -> None:
    """Raise ``error("unknown <what> '<where><key>'; did you mean ...")`` for the first key of
    ``values`` that is not in ``valid``."""
    valid = list(valid)
    for key in values:
        if key not in valid:
            raise error(f"unknown {what} {brief(where + str(key))}; {did_you_mean(str(key), valid)}")
