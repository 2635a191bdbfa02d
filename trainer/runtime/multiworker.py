"""Multi-worker training: the rendezvous, and what a lost peer means.

N processes (pods) train one model in sync with ``MultiWorkerMirroredStrategy`` (MWMS). Who the
workers are and which one this process is comes from ``trainer.runtime.workers`` (the standard
``TF_CONFIG``, or on Kubernetes ``KUBETRAIN_WORKERS`` plus ``JOB_COMPLETION_INDEX``). One worker
(or none) is the single-process path: no MWMS, nothing changes.

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
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.core.errors import EXIT_PEER_LOST, EXIT_UNEXPECTED, PeerLost
from trainer.runtime.workers import TF_CONFIG, Cluster

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_SECONDS = 10  # TensorFlow's default; a dead peer is detected within this
SETTLE_MARGIN_SECONDS = 5


# ---------------------------------------------------------------------------------------------
# Leaving at once


@dataclass(frozen=True)
class _Joined:
    cluster: Cluster
    watchdog: GraphWatchdog | None = None  # once the rendezvous is done


# Process state, on purpose: TensorFlow's coordination service is one per process, so is the
# cluster a process joined (``make_strategy`` sets it, once).
_joined: _Joined | None = None


def active() -> Cluster | None:
    """The cluster this process joined, or None (single-worker)."""
    return _joined.cluster if _joined else None


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

    def begin(self, what: str) -> None:
        """A call into the graph starts now."""
        with self._lock:
            self._started, self._what = time.monotonic(), what

    def end(self) -> None:
        with self._lock:
            self._started = None


class _Guard:
    def __init__(self, watchdog: GraphWatchdog | None, what: str):
        self.watchdog, self.what = watchdog, what

    def __enter__(self):
        if self.watchdog:
            self.watchdog.begin(self.what)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.watchdog:
            self.watchdog.end()
        if exc is not None and _is_peer_failure(exc):
            first = (str(exc).strip().splitlines() or [""])[-1][:300]
            raise PeerLost(f"{self.what}: another worker is gone ({type(exc).__name__}: {first}); "
                           "the Job restarts all workers from the last checkpoint") from None
        return False


def _is_peer_failure(exc: BaseException) -> bool:
    """Only the errors a lost or hung peer produces in a collective (never a bug's)."""
    if _joined is None:
        return False
    import tensorflow as tf

    return isinstance(exc, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                            tf.errors.AbortedError))


def graph_call(what: str) -> _Guard:
    """Context manager for one call into the graph: collective timeout and peer-loss translation.

    A no-op in single-worker runs.
    """
    return _Guard(_joined.watchdog if _joined else None, what)


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
    global _joined
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
    _joined = _Joined(cluster)
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
    _joined = _Joined(cluster, GraphWatchdog(collective_timeout_seconds))
    log.info("all %d workers joined in %.1f s: %d replicas in sync", cluster.num_workers,
             time.monotonic() - start, strategy.num_replicas_in_sync)
    return strategy
