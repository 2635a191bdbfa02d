"""Who the workers of a multi-worker run are and which one this process is, from the
environment: the standard ``TF_CONFIG`` or, on Kubernetes, ``KUBETRAIN_WORKERS`` (the address
list the launcher renders) plus the ``JOB_COMPLETION_INDEX`` the Indexed Job gives each pod. Pure:
no TensorFlow, no connection (joining the cluster is ``multiworker.make_strategy``)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from trainer.core.contract import INDEX_ENV, WORKERS_ENV
from trainer.core.errors import ConfigError
from trainer.core.quoting import brief

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class Cluster:
    """The workers of one multi-worker run and which one this process is."""

    workers: tuple[str, ...]  # host:port of every worker, index order
    index: int

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def tf_config(self) -> str:
        return json.dumps({"cluster": {"worker": list(self.workers)},
                           "task": {"type": "worker", "index": self.index}})


def on_this_machine(num_workers: int) -> list[Cluster]:
    """``num_workers`` workers on free ports of 127.0.0.1, one Cluster per worker (index order):
    a multi-worker run on one machine, for tests, benchmarks and a laptop trial. Each worker
    process gets its ``tf_config()`` as ``TF_CONFIG``. The ports are free when chosen; a process
    that takes one in between makes the rendezvous fail with a clear error."""
    socks = [socket.socket() for _ in range(num_workers)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        workers = tuple(f"127.0.0.1:{sock.getsockname()[1]}" for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    return [Cluster(workers, i) for i in range(num_workers)]


def from_environment(env: dict[str, str] | None = None) -> Cluster | None:
    """The cluster from ``TF_CONFIG`` or ``KUBETRAIN_WORKERS`` + ``JOB_COMPLETION_INDEX``.

    None when neither is set or there is only one worker. Malformed values are a ConfigError.
    """
    env = os.environ if env is None else env
    if env.get(TF_CONFIG):
        return _from_tf_config(env[TF_CONFIG])
    if env.get(WORKERS_ENV):
        workers = tuple(w.strip() for w in env[WORKERS_ENV].split(",") if w.strip())
        raw_index = env.get(INDEX_ENV, "")
        if not raw_index.isdigit():
            raise ConfigError(f"{WORKERS_ENV} is set but {INDEX_ENV} is {raw_index!r}; "
                              "multi-worker pods must come from an Indexed Job")
        return _checked(workers, int(raw_index), WORKERS_ENV)
    return None


MAX_TF_CONFIG_BYTES = 1 << 16  # 256 workers' addresses fit many times over


def _from_tf_config(raw: str) -> Cluster | None:
    expected = ('expected {"cluster": {"worker": ["host:port", ...]}, '
                '"task": {"type": "worker", "index": N}}')
    if len(raw) > MAX_TF_CONFIG_BYTES:
        raise ConfigError(f"{TF_CONFIG} is longer than {MAX_TF_CONFIG_BYTES >> 10} KiB; {expected}")
    try:
        tf_config = json.loads(raw)
        workers = tuple(tf_config["cluster"]["worker"])
        task = tf_config.get("task")
        if task is None and len(workers) > 1:
            raise ConfigError(f"{TF_CONFIG} has no 'task': with {len(workers)} workers each process "
                              'must say which one it is ("task": {"type": "worker", "index": N})')
        task = task or {"type": "worker", "index": 0}
        task_type, index = task.get("type", "worker"), task.get("index", 0)
        if not all(isinstance(w, str) for w in workers) or not isinstance(tf_config["cluster"], dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ConfigError(f"{TF_CONFIG} is not valid: {expected}") from None
    other = sorted(set(tf_config["cluster"]) - {"worker"})
    if other or task_type != "worker":
        raise ConfigError(f"{TF_CONFIG}: only 'worker' tasks are supported (found {other or task_type!r}); "
                          "worker 0 is the chief")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ConfigError(f"{TF_CONFIG}: task index must be a whole number, got {index!r}")
    return _checked(workers, index, TF_CONFIG)


def _checked(workers: tuple[str, ...], index: int, source: str) -> Cluster | None:
    for w in workers:
        host, _, port = str(w).rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{source}: worker address {brief(str(w))} is not host:port "
                              "(a port from 1 to 65535)")
    if not 0 <= index < max(1, len(workers)):
        raise ConfigError(f"{source}: task index {index} is outside the {len(workers)} workers")
    if len(set(workers)) != len(workers):
        raise ConfigError(f"{source}: worker addresses repeat: {', '.join(workers)}")
    return Cluster(tuple(workers), index) if len(workers) > 1 else None
