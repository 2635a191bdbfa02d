"""The report, drawn in a second process while the main one exports the model.

Building ``report/`` (scikit-learn metrics, four matplotlib figures, the HTML page) cost ~2 s
of a digits run, most of it importing matplotlib and scikit-learn and, in a pod whose home is
read-only, building matplotlib's font cache in a fresh ``MPLCONFIGDIR``. None of it needs
TensorFlow. So ``ReportWorker.start()`` starts ``python -m trainer.report.worker`` when a run
begins: while the trainer imports TensorFlow (one busy core) it imports those libraries and
draws a throw-away report on the other core, then waits for its job on stdin. At the end it
builds the metrics and writes the report into the run's staging directory while the main
process exports the model; both are still built aside and published whole by ``trainer.run``.

A plain subprocess rather than ``multiprocessing``: no fork of a process running TensorFlow's
thread pools, no re-import of the caller's ``__main__`` (a script calling ``run`` without a
``__main__`` guard would train twice), no ``/dev/shm``. The job and the result travel as pickle
files in the run's scratch space; only a path crosses the pipe. When the worker cannot start or
fails, the report is drawn in this process instead: slower, same files.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainer.report import build_metrics, write_report

log = logging.getLogger(__name__)


def draw(directory: Path, job: dict) -> tuple[dict, float]:
    """Build the metrics and write the report into ``directory``; (metrics, seconds taken).

    ``job`` holds ``build_metrics``'s keyword arguments under ``metrics`` and
    ``write_report``'s (but ``metrics``) under ``report``.
    """

    t0 = time.monotonic()
    metrics = build_metrics(**job["metrics"])
    write_report(Path(directory), metrics=metrics, **job["report"])
    return metrics, time.monotonic() - t0


def tiny_job() -> dict:
    """A two-class report: the warm-up draws it, tests use it."""
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    history = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.75], "val_loss": [1.0, 0.6],
               "val_accuracy": [0.5, 0.7]}
    return {
        "metrics": {"class_names": ["a", "b"], "y_true": labels, "y_pred": probs.argmax(-1),
                    "test_loss": 0.5, "history": history, "epochs_completed": 2, "extra": {}},
        "report": {"images": np.zeros((4, 8, 8, 3), np.uint8), "probs": probs, "y_true": labels,
                   "config": {}},
    }


class _InProcess:
    def __init__(self, directory: Path, job: dict):
        self.directory, self.job = directory, job

    def result(self) -> tuple[dict, float]:
        return draw(self.directory, self.job)


class _InWorker:
    """A job handed to the worker; ``result`` waits for it, or draws here if the worker failed."""

    def __init__(self, proc: subprocess.Popen, job_file: Path, directory: Path, job: dict):
        self.proc, self.job_file, self.directory, self.job = proc, job_file, directory, job

    def result(self) -> tuple[dict, float]:
        err = self.proc.stderr.read()
        self.proc.wait()
        self.proc.stderr.close()
        out = self.job_file.with_suffix(".result")
        try:
            if self.proc.returncode == 0:
                return pickle.loads(out.read_bytes())
            tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
            log.warning("report: worker process failed (exit %s: %s); drawing here",
                        self.proc.returncode, tail)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            log.warning("report: worker result unreadable (%s); drawing here", exc)
        finally:
            for path in (self.job_file, out):
                path.unlink(missing_ok=True)
        return draw(self.directory, self.job)


class ReportWorker:
    """One warm process that draws a run's report: ``start`` it early, ``close`` it always."""

    def __init__(self, proc: subprocess.Popen | None, scratch: Path | None = None):
        self._proc = proc
        self._scratch = scratch

    @classmethod
    def start(cls, scratch: Path) -> ReportWorker:
        root = str(Path(__file__).resolve().parents[2])  # where ``trainer`` is importable from
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        try:
            proc = subprocess.Popen([sys.executable, "-m", "trainer.report.worker"], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        except OSError as exc:
            log.info("report: drawn in this process (no worker process: %s)", exc)
            proc = None
        return cls(proc, scratch)

    def submit(self, directory: Path, job: dict) -> _InWorker | _InProcess:
        """Start drawing ``job`` into ``directory``; ``.result()`` gives (metrics, seconds)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                self._scratch.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix="report-job-", suffix=".pickle", dir=self._scratch)
                with os.fdopen(fd, "wb") as f:
                    pickle.dump({"directory": str(directory), "job": job}, f, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.write(name.encode() + b"\n")
                proc.stdin.close()
                return _InWorker(proc, Path(name), directory, job)
            except OSError as exc:
                log.warning("report: could not hand the report to the worker (%s); drawing here", exc)
                _stop(proc)
        elif proc is not None:
            log.warning("report: worker process exited early (exit %s); drawing here", proc.returncode)
        return _InProcess(directory, job)

    def close(self) -> None:
        """Stop the worker if no job was handed to it (a failed or preempted run)."""
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("report: worker process %d did not stop", proc.pid)
    for pipe in (proc.stdin, proc.stderr):
        try:
            pipe.close()
        except OSError:
            pass


def _serve() -> int:
    """The worker: warm up, then draw the one job whose pickle path arrives on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the trainer's to handle
    try:
        with tempfile.TemporaryDirectory(prefix="kubetrain-report-warmup-") as tmp:
            draw(Path(tmp), tiny_job())
    except Exception as exc:  # noqa: BLE001 (the real job raises it again, with a traceback)
        print(f"report warm-up failed: {exc}", file=sys.stderr)
    line = sys.stdin.buffer.readline().strip()
    if not line:  # the trainer closed the pipe: no report wanted
        return 0
    job_file = Path(line.decode())
    task = pickle.loads(job_file.read_bytes())
    result = draw(Path(task["directory"]), task["job"])
    tmp = job_file.with_suffix(".partial")
    tmp.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    tmp.replace(job_file.with_suffix(".result"))
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
