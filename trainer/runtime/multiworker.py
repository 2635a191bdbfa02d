"""Multi-worker training: who the workers are, the rendezvous, and what a lost peer means.

N processes (pods) train one model in sync with ``MultiWorkerMirroredStrategy`` (MWMS). Each
worker learns the cluster from the standard ``TF_CONFIG``
(``{"cluster": {"worker": [host:port, ...]}, "task": {"type": "worker", "index": i}}``) or, on
Kubernetes, from ``KUBETRAIN_WORKERS`` (the address list the launcher renders) plus the
``JOB_COMPLETION_INDEX`` the Indexed Job gives each pod. One worker (or none) is the
single-process path: no MWMS, nothing changes.

What was measured on this TF build (2.21, CPU, two processes on loopback), and the design:

* MWMS starts TensorFlow's coordination service on worker 0. When a peer is SIGKILLed, the
  survivors' next (or current) collective fails with ``tf.errors.UnavailableError``: at once
  when worker 0 died ("connection refused"), after the heartbeat timeout (~9 s of 10 s) when
  another worker died. That *is* the peer-failure detector; we translate it into ``PeerLost``
  (exit 75, ``EX_TEMPFAIL``), which the rendered ``podFailurePolicy`` ignores, so the Job
  controller recreates the pods without spending ``backoffLimit``.
* ``CommunicationOptions(timeout_seconds=T)`` is *not* used: every collective then starts a
  thread that sleeps T seconds (712 threads after 300 steps with T=20 s, against 106 without).
  A hung but alive peer is caught instead by ``GraphWatchdog``: one thread that ends the
  process with exit 75 when one call into the graph (where the collectives run) takes longer
  than ``collective_timeout_seconds``.
* A process that failed must leave *at once* (``os._exit``): a normal interpreter exit waits
  for the coordination service's shutdown barrier, and for those ~25 s the old worker 0 still
  accepted a restarted worker 1, which then ran collectives against a dying cluster. For the
  same reason a restarted worker waits ``heartbeat timeout + margin`` before it rendezvouses
  (``settle``), so every survivor of the previous attempt has noticed the loss and exited.
* The coordination service replaces the process's SIGTERM handler with its own (TensorFlow's
  preemption notifier): a SIGTERMed worker trained on as if nothing happened. The trainer's
  handler is installed again once the cluster is up.
* Rendezvous is bounded: worker 0 waited forever for a peer that never came, so
  ``rendezvous_timeout_seconds`` is enforced by a timer that ends the process with exit 1
  (counted against ``backoffLimit``: a worker that never comes is a real failure); that
  timer needs no GIL (``_Timer``): TensorFlow's rendezvous can block in C++ holding it.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.core.errors import EXIT_PEER_LOST, EXIT_UNEXPECTED, ConfigError, PeerLost
from trainer.core.quoting import brief
from trainer.storage import RunDir, is_remote, open_run_dir

log = logging.getLogger(__name__)

TF_CONFIG = "TF_CONFIG"
WORKERS_ENV = "KUBETRAIN_WORKERS"  # "host:port,host:port,..." rendered by the launcher
INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by the Job controller in every pod of an Indexed Job
HEARTBEAT_TIMEOUT_SECONDS = 10  # TensorFlow's default; a dead peer is detected within this
SETTLE_MARGIN_SECONDS = 5


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
    import socket

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


# ---------------------------------------------------------------------------------------------
# Leaving at once


_active: Cluster | None = None  # set once this process joined a multi-worker cluster


def active() -> Cluster | None:
    """The cluster this process joined, or None (single-worker)."""
    return _active


def hard_exit(code: int) -> None:
    """End the process now: no interpreter shutdown, no coordination-service shutdown barrier."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def _die(message: str, code: int) -> None:
    log.error("%s", message)
    print(f"{'peer lost' if code == EXIT_PEER_LOST else 'rendezvous error'}: {message}",
          file=sys.stderr)
    hard_exit(code)


class _Timer:
    """Ends the process with ``code`` unless disarmed within ``seconds`` (0 = never).

    A Python timer thread needs the GIL, and TensorFlow's rendezvous can block in C++ holding
    it (a peer address nobody listens on: seen waiting for ever, deaf to SIGTERM too). So two
    backstops that need no GIL here: a watchdog process that prints the error line at
    ``seconds`` + 1 unless this process disarmed it (or is gone: its stdin closes), and
    faulthandler's C watchdog thread, which ends the process with exit 1 at ``seconds`` +
    ``BACKSTOP_SECONDS`` (its thread dump goes to a file, not to stderr)."""

    def __init__(self, seconds: float, message: str, code: int, dump_path: Path | None = None):
        self._timer = threading.Timer(seconds, _die, (message, code)) if seconds > 0 else None
        self._watchdog: subprocess.Popen | None = None
        self._dump = None
        if not self._timer:
            return
        self._timer.daemon = True
        self._timer.start()
        line = f"rendezvous error: {message}\n"
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(seconds + 1), line],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True)
        self._dump = open(dump_path or os.devnull, "w")  # noqa: SIM115 - open until cancel()
        faulthandler.dump_traceback_later(seconds + BACKSTOP_SECONDS, exit=True, file=self._dump)

    def cancel(self) -> None:
        if self._timer:
            self._timer.cancel()
        if self._watchdog is not None:
            faulthandler.cancel_dump_traceback_later()
            self._watchdog.stdin.close()  # EOF: the watchdog leaves without a word
            self._watchdog.wait()
            self._dump.close()
            self._watchdog = None


BACKSTOP_SECONDS = 3  # the rendezvous ends at most this long after its timeout (docs/reliability.md)
# The watchdog process: waits on stdin (EOF = disarmed or the trainer is gone) for at most
# argv[1] seconds, else writes argv[2] to the shared stderr.
_WATCHDOG = ("import os, select, sys\n"
             "ready, _, _ = select.select([sys.stdin], [], [], float(sys.argv[1]))\n"
             "if not ready:\n"
             "    os.write(2, sys.argv[2].encode())\n")


class GraphWatchdog:
    """The collective timeout: a call into the graph that takes too long means a peer hangs.

    ``with watchdog.call("what"):`` around every call that runs collectives. One thread; a call
    costs two ``threading.Event`` operations, not a thread per collective.
    """

    def __init__(self, timeout_seconds: float):
        self.timeout = timeout_seconds
        self._lock = threading.Lock()
        self._started: float | None = None
        self._what = ""
        self._wake = threading.Event()
        if timeout_seconds > 0:
            threading.Thread(target=self._watch, daemon=True, name="graph-watchdog").start()

    def _watch(self) -> None:
        while True:
            self._wake.wait(timeout=max(1.0, self.timeout / 10))
            self._wake.clear()
            with self._lock:
                started, what = self._started, self._what
            if started is not None and time.monotonic() - started > self.timeout:
                _die(f"{what} waited more than collective_timeout_seconds={self.timeout:g} s for the "
                     "other workers (one hangs or the network is partitioned); restarting all workers",
                     EXIT_PEER_LOST)

    def call(self, what: str):
        return _Guard(self, what)


class _Guard:
    def __init__(self, watchdog: GraphWatchdog | None, what: str):
        self.watchdog, self.what = watchdog, what

    def __enter__(self):
        if self.watchdog:
            with self.watchdog._lock:
                self.watchdog._started, self.watchdog._what = time.monotonic(), self.what
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.watchdog:
            with self.watchdog._lock:
                self.watchdog._started = None
        if exc is not None and _is_peer_failure(exc):
            first = (str(exc).strip().splitlines() or [""])[-1][:300]
            raise PeerLost(f"{self.what}: another worker is gone ({type(exc).__name__}: {first}); "
                           "the Job restarts all workers from the last checkpoint") from None
        return False


def _is_peer_failure(exc: BaseException) -> bool:
    """Only the errors a lost or hung peer produces in a collective (never a bug's)."""
    if _active is None:
        return False
    import tensorflow as tf

    return isinstance(exc, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                            tf.errors.AbortedError))


_watchdog: GraphWatchdog | None = None


def graph_call(what: str) -> _Guard:
    """Context manager for one call into the graph: collective timeout and peer-loss translation.

    A no-op in single-worker runs.
    """
    return _Guard(_watchdog, what)


def shard_by_data(batches):
    """Every worker takes its part of every global batch (``AutoShardPolicy.DATA``).

    ``make_batches`` already asks for this, except for a packed stream, which shards by shard
    (a worker reads only its shards); those per-worker streams have unequal lengths, which MWMS
    cannot step through in sync, so for now every worker reads the whole stream and keeps its
    part (more reading, same training).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)


def barrier(strategy) -> None:
    """Return once every worker got here (a one-number all-reduce)."""
    import tensorflow as tf

    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None).numpy()


# ---------------------------------------------------------------------------------------------
# Rendezvous


def settle() -> None:
    """On a restart, wait until every survivor of the previous attempt has left (see docstring)."""
    seconds = HEARTBEAT_TIMEOUT_SECONDS + SETTLE_MARGIN_SECONDS
    log.info("restart of a multi-worker run: waiting %d s so the previous attempt's workers "
             "have all exited", seconds)
    time.sleep(seconds)


def make_strategy(cluster: Cluster, rendezvous_timeout_seconds: float, collective_timeout_seconds: float):
    """Join the cluster and return the MWMS. Must run before any other TensorFlow op."""
    global _active, _watchdog
    import tensorflow as tf
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    os.environ[TF_CONFIG] = cluster.tf_config()
    timeout_ms = int(rendezvous_timeout_seconds * 1000)
    # Configured here (MWMS would use defaults) to bound how long a worker waits to register.
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader="/job:worker/replica:0/task:0",
        cluster_register_timeout_in_ms=timeout_ms,
        heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_SECONDS * 1000,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=cluster.num_workers)],
    )
    log.info("worker %d of %d (%s): waiting up to %g s for all workers",
             cluster.index, cluster.num_workers, cluster.workers[cluster.index], rendezvous_timeout_seconds)
    start = time.monotonic()
    timer = _Timer(rendezvous_timeout_seconds,
                   f"not all {cluster.num_workers} workers joined within rendezvous_timeout_seconds="
                   f"{rendezvous_timeout_seconds:g} (this is worker {cluster.index}, "
                   f"{cluster.workers[cluster.index]}); check that every worker pod runs and resolves "
                   f"{', '.join(cluster.workers)}", EXIT_UNEXPECTED)
    _active = cluster
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        barrier(strategy)  # returns once every worker is up (MWMS itself does not wait)
    except (RuntimeError, ValueError, tf.errors.OpError) as exc:
        timer.cancel()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        _die(f"joining the {cluster.num_workers} workers failed after {time.monotonic() - start:.0f} s "
             f"(this is worker {cluster.index}): {type(exc).__name__}: {first}", EXIT_UNEXPECTED)
    timer.cancel()
    # The coordination service installs its own SIGTERM handler (TensorFlow's preemption
    # notifier), which swallowed the signal: the trainer's handler (checkpoint, stop together)
    # is put back.
    if callable(sigterm):
        signal.signal(signal.SIGTERM, sigterm)
    _watchdog = GraphWatchdog(collective_timeout_seconds)
    log.info("all %d workers joined in %.1f s: %d replicas in sync", cluster.num_workers,
             time.monotonic() - start, strategy.num_replicas_in_sync)
    return strategy


# ---------------------------------------------------------------------------------------------
# The run directory, seen by a worker that must not write it


class ReadOnlyRunDir(RunDir):
    """A local run directory as a non-chief worker sees it: read, never written."""

    def __init__(self, uri: str):  # no mkdir, no write probe
        self.uri = uri
        self.local = Path(uri).expanduser()

    def push(self, rel: str) -> None:
        raise AssertionError(f"worker wrote {rel}: only worker 0 writes the run directory")

    remove = publish = push  # type: ignore[assignment]


def open_run_dir_for(cluster: Cluster | None, uri: str, scratch: Path) -> RunDir:
    """The run directory: writable for worker 0 (and single-worker runs), read-only otherwise.

    A bucket output is staged in this worker's own scratch space, so reading it writes nothing
    shared; a local output is read in place.
    """

    if cluster is None or cluster.is_chief or is_remote(uri):
        return open_run_dir(uri, scratch)
    return ReadOnlyRunDir(uri)
