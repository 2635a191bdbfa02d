"""The trainer's failure vocabulary and the one table of process exit codes.

The exit codes are a contract. ``EXIT_CODES`` below is their single source of truth: the
trainer's CLI takes its error-line prefixes from it (``configuration error: ...``), the launcher
renders the Job's ``podFailurePolicy`` from its ``job_action`` column (``jobs/render.py``), and
``python -m jobs status/wait`` explain a pod's exit code with its ``meaning`` and ``job_note``
(``jobs/follow.py``). A new code is one new row (and a line in the README's exit-code table):
``FailJob`` for a failure retrying cannot fix, ``Ignore`` for one a new pod resumes from
without spending the retry budget (like preemption), ``Count`` for everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

# podFailurePolicy actions (Kubernetes' own names) for the exit codes of the trainer container.
FAIL_JOB = "FailJob"  # the Job fails at once: retrying cannot help
IGNORE = "Ignore"  # a new pod is started and the Job's backoffLimit is not spent
COUNT = "Count"  # retried up to backoffLimit (what Kubernetes does with any unlisted code)

EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug or an unforeseen failure: retried up to the Job's backoffLimit
EXIT_CONFIG = 2  # bad configuration or usage: never retried
EXIT_DATA = 3  # bad or missing data: never retried
EXIT_DIVERGED = 4  # the loss became NaN/inf: deterministic for the same config, never retried
EXIT_PEER_LOST = 75  # multi-worker: another worker is gone (EX_TEMPFAIL); all restart, not counted
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C on a local run
EXIT_KILLED = 137  # 128 + SIGKILL: not the trainer's choice (out of memory, grace period over)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: checkpoint saved, a restart resumes; not counted as a failure


@dataclass(frozen=True)
class ExitCode:
    """One row of the exit-code table."""

    code: int
    label: str  # the prefix of the one error line on stderr; "" for a code the trainer never returns
    meaning: str  # what happened, for people
    job_action: str  # what the Job does with a pod that exited so (FAIL_JOB, IGNORE or COUNT)
    job_note: str = ""  # what that means for the user: retried or not, what to fix

    def explain(self) -> str:
        """``meaning: job_note``, as ``jobs status`` and ``jobs wait`` print it."""
        return f"{self.meaning}: {self.job_note}" if self.job_note else self.meaning


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EXIT_OK, "ok", "success", COUNT),
    ExitCode(EXIT_UNEXPECTED, "error", "unexpected error", COUNT, "retried up to backoffLimit"),
    ExitCode(EXIT_CONFIG, "configuration error", "bad configuration", FAIL_JOB,
             "not retried, fix the spec's train: section"),
    ExitCode(EXIT_DATA, "data error", "bad or missing data", FAIL_JOB, "not retried, fix the dataset"),
    ExitCode(EXIT_DIVERGED, "training diverged", "the loss became NaN or infinite", FAIL_JOB,
             "not retried (a retry diverges again), lower learning_rate"),
    ExitCode(EXIT_PEER_LOST, "peer lost", "multi-worker: another worker died or hangs", IGNORE,
             "all workers restart from worker 0's last checkpoint, not counted"),
    ExitCode(EXIT_INTERRUPTED, "interrupted", "interrupted (SIGINT, Ctrl-C)", COUNT,
             "retried up to backoffLimit"),
    ExitCode(EXIT_KILLED, "", "killed (SIGKILL)", COUNT, "out of memory or the grace period ran out"),
    ExitCode(EXIT_PREEMPTED, "preempted", "stopped by SIGTERM after saving a checkpoint", IGNORE,
             "retried, not counted"),
)
_BY_CODE = {row.code: row for row in EXIT_CODES}


def exit_code(code: int) -> ExitCode:
    """The table's row for ``code``; a code not in the table is an unexpected error."""
    return _BY_CODE.get(code, _BY_CODE[EXIT_UNEXPECTED])


def codes_with_action(action: str) -> list[int]:
    """The exit codes whose ``job_action`` is ``action``, ascending (for ``podFailurePolicy``)."""
    return sorted(row.code for row in EXIT_CODES if row.job_action == action and row.code != EXIT_OK)


class TrainerError(Exception):
    """An expected failure with a one-line message for the user and a documented exit code."""

    exit_code = EXIT_UNEXPECTED


class ConfigError(TrainerError):
    """The configuration or the command line is wrong; retrying cannot help."""

    exit_code = EXIT_CONFIG


class DataError(TrainerError):
    """The dataset is missing, empty, unreadable or malformed; retrying cannot help."""

    exit_code = EXIT_DATA


class Diverged(TrainerError):
    """The training loss became NaN or infinite: the same config and data diverge again."""

    exit_code = EXIT_DIVERGED


class StorageError(TrainerError):
    """Object storage failed in a way retries did not fix (outage, quota): may be transient."""

    exit_code = EXIT_UNEXPECTED


class Preempted(TrainerError):
    """SIGTERM arrived; a checkpoint was written and the run can be resumed."""

    exit_code = EXIT_PREEMPTED


class PeerLost(TrainerError):
    """Multi-worker: a collective failed because another worker died or hangs.

    Only raised for TensorFlow's Unavailable/DeadlineExceeded/Aborted errors inside a collective
    of a multi-worker run (``trainer.runtime.multiworker``), never for a bug, so ignoring it in the
    Job's ``podFailurePolicy`` cannot hide one. Nothing was saved by this worker; worker 0's
    last checkpoint is where the restarted workers resume.
    """

    exit_code = EXIT_PEER_LOST
