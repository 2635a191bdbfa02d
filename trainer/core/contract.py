"""The contract between the launcher (``jobs/``) and the trainer in its pod: the environment
variables ``jobs.render`` puts into every trainer container and the trainer reads, and the
paths they name. Both sides import these names from here, so neither can drift."""

from __future__ import annotations

ENV_PREFIX = "KUBETRAIN_"  # reserved for this contract: a job spec's own env may not use it

SCRATCH_ENV = "KUBETRAIN_SCRATCH"  # writable local space: datasets, staging, caches
SCRATCH_DIR = "/scratch"  # where the launcher mounts it (an emptyDir)
GRACE_ENV = "KUBETRAIN_TERMINATION_GRACE_SECONDS"  # the pod's terminationGracePeriodSeconds
JOB_NAME_ENV = "KUBETRAIN_JOB_NAME"  # scheduled runs: the Job's name, from its job-name label
JOB_NAME_VAR = f"$({JOB_NAME_ENV})"  # in the container's args; the kubelet expands it
WORKERS_ENV = "KUBETRAIN_WORKERS"  # multi-worker Jobs: "host:port,host:port,...", index order
INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by the Job controller in every pod of an Indexed Job
SUBMITTED_ENV = "KUBETRAIN_SUBMITTED_AT"  # set by jobs submit/run-now on a new Job; the ledger's origin
