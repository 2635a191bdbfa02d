"""The trainer's own log, kept with the run: ``<output>/logs/<attempt>.log``.

A pod's log goes when the pod goes; a preempted or failed attempt is exactly the one whose log
is wanted later. Each attempt (a UTC start time plus the pod's host name) writes its own file
next to the run's other outputs, pushed to the destination at each checkpoint and at the end,
failed or not (the failure's one-line error included). ``report.html`` links the file.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from trainer.storage import RunDir, outage

log = logging.getLogger(__name__)

LOG_DIR = "logs"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLog:
    def __init__(self, run_dir: RunDir):
        host = os.environ.get("HOSTNAME") or socket.gethostname() or str(os.getpid())
        self.rel = f"{LOG_DIR}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{host}.log"
        self.run_dir = run_dir
        path = run_dir.local / self.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%dT%H:%M:%S"))
        self.handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)

    def push(self) -> None:
        """Upload the log as it stands (never fails the run: the log is secondary)."""
        self.handler.flush()
        outage.push(self.run_dir, self.rel, f"the log {self.run_dir.uri_of(self.rel)}")

    def finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            line = " ".join(str(error).split())[:2000] or type(error).__name__
            self.handler.stream.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} ERROR run ended: "
                                      f"{type(error).__name__}: {line}\n")
        logging.getLogger().removeHandler(self.handler)
        self.push()
        self.handler.close()


_current: RunLog | None = None


def start(run_dir: RunDir) -> RunLog:
    """Start this attempt's log file in ``run_dir`` (once per process)."""
    global _current
    if _current is None:
        _current = RunLog(run_dir)
    return _current


def current() -> RunLog | None:
    return _current


def finish(error: BaseException | None = None) -> None:
    """Close and upload this attempt's log, recording ``error`` if the run failed."""
    global _current
    if _current is not None:
        _current.finish(error)
        _current = None
