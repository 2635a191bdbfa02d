"""Checks of single job-spec values, and the cron schedule's rules.

Each check takes the raw YAML value and its dotted key (for the message) and returns the
checked value, or None for "left empty: take the field's default" (``jobs/spec.py`` names the
check of every key on its dataclass field). A bad value raises ``SpecError``: one line naming
the key, the bad value and what is valid.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from trainer.core.quoting import brief
from trainer.core.schema import check_keys, default_of, has_default

Check = Callable[[Any, str], Any]

# The macros Kubernetes' CronJob accepts besides the 5-field syntax (@reboot is not one).
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z")
_QUANTITY = re.compile(r"([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?\Z")
INT32_MAX = 2**31 - 1  # the widest integer many Job and Pod fields hold (backoffLimit, ...)
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


class SpecError(Exception):
    """The job spec is wrong; the message is one line naming the key and what is valid."""


def string(raw: Any, key: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise SpecError(f"key {brief(key)}: expected a string, got {brief(raw)}")
    return raw


def required_string(raw: Any, key: str) -> str | None:
    """A string; empty counts as missing (the caller reports a missing required key)."""
    return string(raw, key) or None


def scalar_string(raw: Any, key: str) -> str:
    """Any YAML scalar, as a string (a toleration's value may be a number)."""
    return "" if raw is None else str(raw)


def choice(choices: tuple[str, ...], allow_empty: bool = False) -> Check:
    def check(raw: Any, key: str) -> str | None:
        value = string(raw, key)
        if (value and value not in choices) or (value == "" and not allow_empty):
            raise SpecError(f"key {brief(key)}: {brief(value)} is not one of: {', '.join(choices)}")
        return value

    return check


def whole_number(raw: Any, key: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise SpecError(f"key {brief(key)}: expected a whole number, got {brief(raw)}")
    if raw < 0:
        raise SpecError(f"key {brief(key)}: must be >= 0, got {raw}")
    if raw > INT32_MAX:
        raise SpecError(f"key {brief(key)}: must be at most {INT32_MAX} (the Kubernetes API's "
                        f"integer range), got {brief(raw)}")
    return raw


def optional_whole_number(raw: Any, key: str) -> int | None:
    return None if raw is None else whole_number(raw, key)


def parse_quantity(value: Any, key: str) -> float:
    """A Kubernetes resource quantity ("500m", "16Gi", 4) as a number of units."""
    text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    match = _QUANTITY.match(text) if isinstance(text, str) else None
    if match is None:
        raise SpecError(f"key {brief(key)}: {brief(value)} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    number = float(text[: match.start(3)] if match.group(3) else text)
    return number * _SUFFIX[match.group(3) or ""]


def quantity(raw: Any, key: str) -> str:
    """A positive Kubernetes quantity, kept as written."""
    if parse_quantity(raw, key) <= 0:
        raise SpecError(f"key {brief(key)}: must be > 0, got {brief(raw)}")
    return str(raw)


def dns_label(value: str, key: str, max_len: int = 63) -> str:
    if not _DNS_LABEL.match(value) or len(value) > max_len:
        raise SpecError(f"key {brief(key)}: {brief(value)} must be at most {max_len} lowercase letters, "
                        "digits or '-', starting and ending with a letter or digit")
    return value


def dns_name(max_len: int, allow_empty: bool = True) -> Check:
    """A DNS label of at most ``max_len`` characters (or empty, when ``allow_empty``)."""
    def check(raw: Any, key: str) -> str | None:
        value = string(raw, key)
        return value if value is None or (value == "" and allow_empty) else dns_label(value, key, max_len)

    return check


def mapping(raw: Any, key: str) -> dict | None:
    if raw is not None and not isinstance(raw, Mapping):
        raise SpecError(f"key {brief(key)}: expected a mapping, got {brief(raw)}")
    return None if raw is None else dict(raw)


def labels(raw: Any, key: str) -> dict[str, str]:
    """Kubernetes labels (a node selector): valid keys, scalar values as strings."""
    out = {}
    for k, v in (mapping(raw, key) or {}).items():
        if not isinstance(k, str) or not _LABEL_KEY.match(k):
            raise SpecError(f"key {brief(key)}: {brief(k)} is not a valid label key")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not _LABEL_VALUE.match(str(v)):
            raise SpecError(f"key {brief(key + '.' + k)}: {brief(v)} is not a valid label value (quote it)")
        out[k] = str(v)
    return out


# ----------------------------------------------------------------------------- schedule


def schedule(raw: Any, key: str) -> str | None:
    value = string(raw, key)
    return validate_schedule(value) if value else value


def time_zone(raw: Any, key: str) -> str | None:
    value = string(raw, key)
    return None if value is None else validate_time_zone(value)


def validate_schedule(schedule: str) -> str:
    """The cron expression, if Kubernetes' CronJob accepts it; SpecError otherwise."""
    text = " ".join(schedule.split())
    if text.startswith("@"):
        if text not in CRON_MACROS:
            raise SpecError(f"key 'schedule': {brief(schedule)} is not a cron macro Kubernetes accepts; "
                            f"use 5 fields or one of: {', '.join(CRON_MACROS)}")
        return text
    if re.match(r"^(CRON_)?TZ=", text):
        raise SpecError("key 'schedule': put the time zone in 'time_zone', not in the schedule")
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise SpecError(f"key 'schedule': {brief(schedule)} is not a valid cron expression "
                        "(5 fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *')")
    return text


def validate_time_zone(name: str) -> str:
    if not name or name == "Local" or name.startswith(("/", ".")) or " " in name:
        raise SpecError(f"key 'time_zone': {brief(name)} is not an IANA time zone (e.g. Europe/Berlin, Etc/UTC)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError(f"key 'time_zone': unknown time zone {brief(name)} "
                        "(use an IANA name such as Europe/Berlin or Etc/UTC)") from None
    return name


def schedule_period_seconds(schedule: str, time_zone: str) -> int:
    """The shortest gap between two runs of ``schedule`` over about two years (deterministic).

    Computed in the schedule's time zone, so a daylight-saving night (23 h) is the period.
    """
    macro = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
             "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
             "@hourly": "0 * * * *"}
    expr = macro.get(schedule, schedule)
    start = dt.datetime(2025, 1, 1, tzinfo=ZoneInfo(time_zone))
    end = start + dt.timedelta(days=2 * 366)
    it = croniter(expr, start)
    prev = it.get_next(dt.datetime)
    shortest = None
    for _ in range(2000):
        nxt = it.get_next(dt.datetime)
        gap = int((nxt - prev).total_seconds())
        if gap > 0 and (shortest is None or gap < shortest):
            shortest = gap
        prev = nxt
        if nxt > end:
            break
    return shortest or 60


def build(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """``cls`` from ``values``: unknown keys rejected, each given key checked by its field's
    check, every other key (or one left empty) at its field's default."""
    check_keys(values, [f.name for f in fields(cls)], where, error=SpecError)
    kwargs = {}
    for f in fields(cls):
        key = where + f.name
        value = f.metadata["check"](values[f.name], key) if f.name in values else None
        if value is None and not has_default(f):
            raise SpecError(f"missing required key {brief(key)} ({f.metadata['help']})")
        kwargs[f.name] = default_of(f) if value is None else value
    return cls(**kwargs)
