"""The trainer's failure vocabulary and the process exit codes it maps to.

The exit codes are a contract: the launcher renders them into the Job's ``podFailurePolicy``
(see ``jobs/render.py``), so a bad configuration or bad data fails the Job at once while a
preempted pod is retried without spending the retry budget.
"""

EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug or an unforeseen failure: retried up to the Job's backoffLimit
EXIT_CONFIG = 2  # bad configuration or usage: never retried
EXIT_DATA = 3  # bad or missing data: never retried
EXIT_PREEMPTED = 143  # 128 + SIGTERM: checkpoint saved, a restart resumes; not counted as a failure


class TrainerError(Exception):
    """An expected failure with a one-line message for the user and a documented exit code."""

    exit_code = EXIT_UNEXPECTED


class ConfigError(TrainerError):
    """The configuration or the command line is wrong; retrying cannot help."""

    exit_code = EXIT_CONFIG


class DataError(TrainerError):
    """The dataset is missing, empty, unreadable or malformed; retrying cannot help."""

    exit_code = EXIT_DATA


class StorageError(TrainerError):
    """Object storage failed in a way retries did not fix (outage, quota): may be transient."""

    exit_code = EXIT_UNEXPECTED


class Preempted(TrainerError):
    """SIGTERM arrived; a checkpoint was written and the run can be resumed."""

    exit_code = EXIT_PREEMPTED
