"""``-o json|yaml|name|wide``: one place that turns objects and tables into kubectl's shapes.

``json``/``yaml`` print plain data (several objects as a ``kind: List``, as kubectl does),
``name`` prints ``kind.group/name`` lines, ``wide`` is the human table or text with more
columns, and the default is the human form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import yaml

FORMATS = ("json", "yaml", "name", "wide")
# kubectl's resource.group names for ``-o name``.
_RESOURCE = {"Job": "job.batch", "CronJob": "cronjob.batch", "ConfigMap": "configmap",
             "Pod": "pod"}


def resource_name(obj: dict) -> str:
    """``job.batch/digits`` for a Job named digits."""
    kind = obj.get("kind", "")
    return f"{_RESOURCE.get(kind, kind.lower())}/{obj['metadata']['name']}"


def as_list(objects: Sequence[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}


def dump(data: object, fmt: str) -> str:
    """``data`` as JSON or YAML text (ending in a newline)."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def names(objects: Sequence[dict]) -> str:
    return "".join(resource_name(o) + "\n" for o in objects)


def table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, kubectl-style."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
